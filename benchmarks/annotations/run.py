"""Which annotation pays: pixel masks, boxes or clicks, for 10 % or 100 % of the training
images, against an unguided classifier and GAIN, on the built-in scenes at the demo's scale.

Each row trains one classifier (``attnguide train`` in a process of its own) and scores it:
accuracy, mAP and worst-group accuracy on the unbiased test split, CAM mIoU, the *energy
inside the box* (the share of each present class's attention inside the tight box of its
true mask, on test), and the pseudo-label mIoU of the training split with and without dense
CRF (scored against the true masks; the classes of the pseudo labels are the images' true
labels, as in the WSSS papers). A row trained on boxes for every image makes its pseudo labels
within those boxes (``pseudo-label --boxes auto``: outside every box is background, the rule
of box-supervised WSSS), and also reports them without (``--boxes off``); the 10 % box row
uses no boxes there (the CSV has every image's boxes, the run saw a tenth of them). Every
row reports its optimizer steps and wall time.

The terms are the library's: masks feed GAIN_ext's L_e (``--guidance ext``), boxes the energy
loss of Rao, Böhle et al. (ICCV 2023) beside GAIN's L_am (``self+energy``), clicks the point
loss after Bearman et al. (ECCV 2016) beside L_am (``self+point``). The 10 % rows put the
labelled images in half of every batch (``--labelled-share 0.5``, so they take more steps
an epoch); the scenes' CSVs carry boxes and clicks derived from their true masks.

    python benchmarks/annotations/run.py --out runs/annotations-bench --write
    python benchmarks/annotations/run.py --rows boxes100 masks10 --seeds 0 1 2 --write
    python benchmarks/annotations/run.py --data runs/composite/data --out runs/annotations-composite --write

``--data`` takes any folder data set with masks and ``boxes`` / ``points`` columns, e.g. the
composite real-picture set of benchmarks/composite/make_data.py (emoji on wallpaper photos).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenes"))  # the lead's machinery
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results_page.py

from run import hold_folder, pseudo_metrics, summarise, test_metrics, train_command, write_json  # noqa: E402

from attnguide.tasks.annotation_masks import make_box_masks, make_point_masks  # noqa: E402
from attnguide.tasks.demo import CLASSIFIER as DEMO_CLASSIFIER  # noqa: E402
from attnguide.tasks.demo import SCENES as DEMO_SCENES  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"
SECTION = "Boxes, clicks or masks on the scenes"
REAL_SECTION = "Boxes, clicks or masks on real pictures"
TEN = {"pixel_labels": "10%", "labelled_share": 0.5}
ALL = {"pixel_labels": "100%"}
BOXES = {"guidance": "self+energy", "annotations": "boxes", **ALL}
BOX_SWAP = {**BOXES, "guidance": "self+energy+box_swap"}
ROWS = {
    "unguided": ("unguided (CAM baseline)", {"guidance": "none"}),
    "unguided_steps": ("unguided, the masks10 row's steps (equal compute)",
                       {"guidance": "none", "steps_of": "masks10"}),
    "gain": ("GAIN (no annotation)", {"guidance": "self"}),
    "masks10": ("masks, 10 % (GAIN_ext)", {"guidance": "ext", "annotations": "masks", **TEN}),
    "auto10": ("masks, 10 %, the defaults (--guidance auto: ext+swap)",
               {"guidance": "auto", "annotations": "masks", **TEN}),
    "masks100": ("masks, 100 % (GAIN_ext)", {"guidance": "ext", "annotations": "masks", **ALL}),
    "boxes10": ("boxes, 10 % (self+energy)", {"guidance": "self+energy", "annotations": "boxes", **TEN}),
    "boxes100": ("boxes, 100 % (self+energy)", BOXES),
    "boxes100swap": ("boxes, 100 %, + the box swap (self+energy+box_swap)", BOX_SWAP),
    "boxes100swap_steps": ("boxes, 100 %, + the box swap, the auto10 row's steps",
                           {**BOX_SWAP, "steps_of": "auto10"}),
    "boxes100_unbiased": ("boxes, 100 % (self+energy), trained without the shortcut",
                          {**BOXES, "train_split": "train_unbiased"}),
    "boxes100swap_unbiased": ("boxes, 100 %, + the box swap, trained without the shortcut",
                              {**BOX_SWAP, "train_split": "train_unbiased"}),
    "boxes100attswap": ("boxes, 100 %, + the box swap cut by attention inside the boxes",
                        {**BOX_SWAP, "swap_source": "attention"}),
    "boxes100attswap_steps": ("boxes, 100 %, + the box swap cut by attention, the auto10 row's steps",
                              {**BOX_SWAP, "swap_source": "attention", "steps_of": "auto10"}),
    # boxes filled by a dense CRF (`attnguide data box-masks`, "Simple Does It"), then the mask defaults
    "boxmasks100": ("boxes, 100 %, filled by the CRF (data box-masks), the mask defaults (auto: ext+swap)",
                    {"guidance": "auto", "annotations": "masks", **ALL, "box_masks": "train"}),
    "boxmasks100_steps": ("boxes, 100 %, filled by the CRF, the mask defaults, the auto10 row's steps",
                          {"guidance": "auto", "annotations": "masks", **ALL, "box_masks": "train",
                           "steps_of": "auto10"}),
    "boxmasks100_unbiased": ("boxes, 100 %, filled by the CRF, the mask defaults, trained without the shortcut",
                             {"guidance": "auto", "annotations": "masks", **ALL, "box_masks": "train_unbiased"}),
    # clicks grown into masks by a dense CRF (`attnguide data point-masks`), then the mask defaults
    "pointmasks100": ("clicks, 100 %, grown by the CRF (data point-masks), the mask defaults (auto: ext+swap)",
                      {"guidance": "auto", "annotations": "masks", **ALL, "point_masks": "train"}),
    "pointmasks100_steps": ("clicks, 100 %, grown by the CRF, the mask defaults, the auto10 row's steps",
                            {"guidance": "auto", "annotations": "masks", **ALL, "point_masks": "train",
                             "steps_of": "auto10"}),
    "pointmasks100_unbiased": ("clicks, 100 %, grown by the CRF, the mask defaults, trained without the shortcut",
                               {"guidance": "auto", "annotations": "masks", **ALL,
                                "point_masks": "train_unbiased"}),
    "points10": ("clicks, 10 % (self+point)", {"guidance": "self+point", "annotations": "points", **TEN}),
    "points100": ("clicks, 100 % (self+point)", {"guidance": "self+point", "annotations": "points", **ALL}),
}
COLUMNS = [("test_accuracy", "accuracy"), ("test_map", "mAP"),
           ("test_worst_group_accuracy", "worst group"), ("test_cam_miou", "CAM mIoU"),
           ("test_box_energy", "energy in box"), ("pseudo_miou", "pseudo mIoU"),
           ("pseudo_miou_crf", "with CRF"), ("pseudo_miou_crf_free", "with CRF, boxes unused")]
BOXED = {"boxes100", "boxes100swap", "boxes100swap_steps", "boxes100attswap", "boxes100attswap_steps",
         "boxmasks100", "boxmasks100_steps", "boxmasks100_unbiased"}
"""Rows with boxes on every training image: their pseudo labels are made within the boxes."""


def box_energy(run: Path, data: Path, device: str) -> float:
    """Mean share of each present class's attention (Grad-CAM at the run's layer, min-max
    normalised, at the input size) inside the tight box of its true mask, on test."""
    import torch

    from attnguide.core.annotations import Annotations, energy_loss
    from attnguide.data import open_dataset
    from attnguide.data.scenes import mask_boxes
    from attnguide.models.trained import load_model

    trained = load_model(run / "last.pt")
    dev = torch.device(device)
    trained.model.to(dev).eval()
    guide = trained.guide()
    ds = open_dataset(data, split="test", image_size=trained.image_size, train=False)
    total, count = 0.0, 0
    for start in range(0, len(ds), 32):
        items = [ds[i] for i in range(start, min(start + 32, len(ds)))]
        images = torch.stack([it["image"] for it in items]).to(dev)
        ann = Annotations([{"boxes": mask_boxes(it["mask"].numpy())} for it in items])
        inside, has = ann.box_targets(ds.num_classes, tuple(images.shape[-2:]))
        for b in range(len(items)):
            classes = has[b].nonzero().squeeze(1)
            if not len(classes):
                continue
            maps = guide.attention(images[b:b + 1], classes[None].to(dev), resize=True,
                                   normalize=True)[0].float().cpu()  # (K, S, S)
            for k, c in enumerate(classes.tolist()):
                total += 1 - float(energy_loss(maps[k:k + 1], inside[b, c][None]))
                count += 1
    return total / max(count, 1)


def _describe(data: Path) -> str:
    """Sizes of a folder data set, from composite.json when it is a composite one."""
    params = data / "composite.json"
    if params.is_file():
        p = json.loads(params.read_text())
        return (f"composite real pictures: {p['n_train']} train / {p['n_test']} test images of "
                f"{p['image_size']} px, a class's own background pool in {p['bias']:.0%} of train "
                f"images, {p['min_objects']}-{p['max_objects']} objects, held-out object files in test")
    return "a folder data set"


def _trained(run: Path, epochs: int) -> bool:
    """Whether the run in ``run`` finished its ``epochs`` (its last.pt is the final one)."""
    try:
        return (run / "last.pt").exists() and train_cost(run)["epochs"] >= int(epochs)
    except (OSError, ValueError, KeyError, IndexError):
        return False


def train_cost(run: Path) -> dict:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return {"steps": lines[-1]["step"], "epochs": lines[-1]["epoch"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/annotations-bench"))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], help="training option key=value, all rows")
    p.add_argument("--data", type=Path, default=None,
                   help="a folder data set with masks and boxes/points columns instead of the scenes")
    p.add_argument("--n-train", type=int, default=DEMO_SCENES["n_train"],
                   help="training images of the scenes (the demo's by default; fewer on a busy CPU)")
    p.add_argument("--write", action="store_true", help="put the table into benchmarks/RESULTS.md")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: the table of the (row, seed) runs already in OUT")
    args = p.parse_args(argv)
    lock = hold_folder(args.out)  # noqa: F841 - held until the process exits

    from attnguide.data import make_scenes

    scenes = {**{k: v for k, v in DEMO_SCENES.items() if k != "seed"}, "n_train": args.n_train}
    data = args.data or make_scenes(args.out / "scenes", **scenes)
    sets = dict(item.split("=", 1) for item in args.set)
    results: dict[str, list[dict]] = {row: [] for row in args.rows}
    for row in args.rows:
        for seed in args.seeds:
            run = args.out / f"{row}-s{seed}"
            done = run / "bench.json"
            if done.exists():
                results[row].append(json.loads(done.read_text()))
                continue
            if args.table_only:
                continue
            run.mkdir(parents=True, exist_ok=True)
            options = {**DEMO_CLASSIFIER, "val_split": "", **ROWS[row][1], **sets}  # no per-epoch val
            for kind, make in (("box_masks", make_box_masks), ("point_masks", make_point_masks)):
                if kind in options:  # the split's boxes / clicks filled by a CRF, scored against its masks
                    made = make(data, options.pop(kind), replace_masks=True, quiet=True)
                    options["train_split"] = made.split
                    print(f"{made.split}: {kind.replace('_', ' ')}' mIoU against the true masks {made.miou:.3f}",
                          flush=True)
            if "steps_of" in options:  # equal compute: the named row's optimizer steps, same seed
                ref = args.out / f"{options.pop('steps_of')}-s{seed}" / "bench.json"
                if not ref.exists():
                    raise SystemExit(f"row {row} takes the steps of {ref.parent.name}: run that first")
                options["steps"] = json.loads(ref.read_text())["steps"]
            t0 = time.time()
            if _trained(run, options["epochs"]):  # trained, not scored yet: the epochs' own seconds
                train_s = sum(json.loads(line)["time"] for line in
                              (run / "metrics.jsonl").read_text().splitlines() if line)
            else:
                with (run / "train.log").open("w") as log:
                    cmd = train_command(data, run, options, seed, args.device)
                    if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode:
                        raise SystemExit(f"training {row} seed {seed} failed; see {run}/train.log")
                train_s = time.time() - t0
            t0 = time.time()
            metrics = test_metrics(run, data, args.device)
            metrics["test_box_energy"] = box_energy(run, data, args.device)
            boxed = row in BOXED
            metrics.update(pseudo_metrics(run, data, args.device, crf=True, boxes="on" if boxed else "off"))
            if boxed:
                free = pseudo_metrics(run, data, args.device, crf=True, boxes="off", out="pseudo_free")
                metrics["pseudo_miou_crf_free"] = free["pseudo_miou_crf"]
            metrics.update(train_cost(run), train_s=train_s, score_s=time.time() - t0)
            write_json(done, metrics)
            results[row].append(metrics)
            print(f"{row} seed {seed}: " + ", ".join(
                f"{k} {metrics.get(k)}" for k, _ in COLUMNS) + f", {metrics['steps']} steps, "
                f"{train_s:.0f} s", flush=True)
    # the rows' own seconds (a rerun that only writes the table reads them back)
    wall = sum(m["train_s"] + m["score_s"] for ms in results.values() for m in ms)

    head = ("| row | seeds | " + " | ".join(n for _, n in COLUMNS)
            + " | steps | train s | score s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in args.rows:
        ms = results[row]
        cells = [summarise([m[k] for m in ms if m.get(k) is not None]) for k, _ in COLUMNS]
        if not ms:
            continue
        steps = "/".join(str(m["steps"]) for m in ms)
        tr = "/".join(f"{m['train_s']:.0f}" for m in ms)
        sc = "/".join(f"{m['score_s']:.0f}" for m in ms)
        lines.append(f"| {ROWS[row][0]} | {len(ms)} | " + " | ".join(cells) + f" | {steps} | {tr} | {sc} |")
    goal = []
    mean = {row: statistics.mean([m["pseudo_miou_crf"] for m in results[row]])
            for row in args.rows if results[row] and results[row][0].get("pseudo_miou_crf") is not None}
    if "masks10" in mean:
        for row, need in (("boxes100", 0.90), ("boxes100swap", 0.90), ("boxmasks100", 0.90), ("points100", 0.75),
                          ("pointmasks100", 0.75)):
            if row in mean:
                share = mean[row] / mean["masks10"]
                goal.append(f"- {row}: CRF pseudo-label mIoU {mean[row]:.3f} = **{share:.0%}** of "
                            f"masks10's {mean['masks10']:.3f} (goal {need:.0%}: "
                            f"{'met' if share >= need else 'not met'})")
        worst = {row: statistics.mean([m["test_worst_group_accuracy"] for m in results[row]])
                 for row in ("masks10", "auto10", "boxes100", "boxes100swap", "boxes100swap_steps",
                             "boxes100attswap", "boxes100attswap_steps", "boxmasks100", "boxmasks100_steps", "points100",
                             "pointmasks100", "pointmasks100_steps")
                 if results.get(row)}
        if len(worst) > 1:
            goal.append("- worst-group accuracy (the shortcut gap closed): " + ", ".join(
                f"{row} {value:.3f}" for row, value in worst.items()))
    table = "\n".join(lines)
    cmd = "python benchmarks/annotations/run.py " + " ".join(
        (["--rows", *args.rows] if args.rows != list(ROWS) else [])
        + (["--seeds", *map(str, args.seeds)] if args.seeds != [0] else [])
        + [f"--set {s}" for s in args.set] + ["--table-only"] * args.table_only
        + ([f"--n-train {args.n_train}"] if args.n_train != DEMO_SCENES["n_train"] and not args.data else [])
        + ([f"--data {args.data}"] if args.data else [])) + " --write"
    if args.data:
        section, where = REAL_SECTION, f"`{args.data}` ({_describe(args.data)})"
    else:
        section, where = SECTION, (f"the demo's scenes ({args.n_train} train images of "
                                   f"{DEMO_SCENES['image_size']} px, {DEMO_SCENES['n_test']} test)")
    text = (f"### {section}: {', '.join(args.rows)}, seeds {' '.join(map(str, args.seeds))}\n\n"
            f"`{cmd.replace('  ', ' ')}` ({platform.machine()}, {args.device}; {wall:.0f} s for the "
            f"table; rows may have run two at a time, one thread each). Data: {where}; the demo's classifier "
            f"({DEMO_CLASSIFIER['model']}, "
            f"{DEMO_CLASSIFIER['epochs']} epochs, {DEMO_CLASSIFIER['warmup_epochs']} of them "
            "unguided, batch 32, AdamW 1e-3); term weights at their defaults (energy 1, point 1, "
            "omega 10). Pseudo labels: the training split, true image labels, scales 1.0 and 1.5, "
            "scored against its true masks.\n\n" + table + "\n\n" + "\n".join(goal) + "\n")
    print(text)
    if args.write:
        from results_page import record

        key = f"annotations/run.py: {' '.join(args.rows)} seeds {' '.join(map(str, args.seeds))}"
        key += f" data {args.data.as_posix()}" if args.data else f" n_train {args.n_train}"  # --data: its own size
        record(key, text, section=section, history="annotations.md", results=RESULTS)


if __name__ == "__main__":
    main()
