"""Shortcut removal on real pictures at equal compute: emoji cut-outs on wallpaper photos.

The composite benchmark (``make_data.py``: 10 emoji classes, 10 background pools, the
class's pool in 95 % of train images, pools uniform in val/test) trains

- ``baseline``: unguided, the preset's epochs;
- ``auto10``: the defaults (``--guidance auto``) with 10 % of train images pixel-labelled;
- ``baseline_steps``: unguided, the optimizer steps ``auto10`` took (equal compute);
- ``oracle``: unguided on ``train_unbiased`` (no shortcut), the preset's epochs;
- ``oracle_auto10``: the defaults on ``train_unbiased`` (does guidance cost accuracy
  where there is no shortcut?);

and, as the research step, a post-training stage on a finished run (``--heads``):
``ROW+cf``, the run's last layer retrained on counterfactuals of its pixel-labelled images
(each object kept, pasted on the backgrounds of other labelled images: DFR, Kirichenko et
al. 2023, with masks making the balanced set). Rows report unbiased test accuracy,
worst-group and mean per-group accuracy over (class, background pool), CAM mIoU,
optimizer steps and wall time; the gap columns say how much of the gap between
``baseline_steps`` and ``oracle`` a row closes.

    python benchmarks/composite/make_data.py --out runs/composite/data --n-train 600 --n-test 300
    python benchmarks/composite/run.py --data runs/composite/data --out runs/composite --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "RESULTS.md"


def _scenes_runner():
    """benchmarks/scenes/run.py, imported by path (its train command, scoring and table helpers)."""
    spec = importlib.util.spec_from_file_location("scenes_run", HERE.parent / "scenes" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scenes = _scenes_runner()

COMMON = {"model": "resnet10t", "image_size": 64, "epochs": 4, "batch_size": 32, "optimizer": "adamw",
          "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine", "val_split": "", "snapshots": 0}
UNBIASED = {"train_split": "train_unbiased"}  # the "oracle" rows: trained without the shortcut
DEFAULTS10 = {"guidance": "auto", "pixel_labels": "10%"}


def _same_as_scenes(row: str) -> dict:
    """The training options of the scenes benchmark's row of that name (one definition)."""
    return scenes.ROWS[row][1]


ROWS = {
    "baseline": ("unguided, equal epochs", {"guidance": "none"}),
    "auto10": ("the defaults (--guidance auto), 10 % pixel labels", DEFAULTS10),
    "baseline_steps": ("unguided, the defaults' steps", {"guidance": "none", "steps_of": "auto10"}),
    "oracle": ("oracle: unguided on train_unbiased (no shortcut)", {"guidance": "none", **UNBIASED}),
    "oracle_auto10": ("the defaults, 10 %, on train_unbiased (no shortcut)", {**DEFAULTS10, **UNBIASED}),
    # candidates beside the defaults (ext+swap, half of every batch pixel-labelled)
    "swap10half": ("background swap alone, 10 %, half of every batch pixel-labelled",
                   _same_as_scenes("swap10half")),
    "extswapatt10half": ("GAIN_ext + background swap, unlabelled objects cut by attention, 10 %, half of "
                         "every batch pixel-labelled", _same_as_scenes("extswapatt10half")),
    "swap10half_unbiased": ("background swap alone, 10 %, half of every batch pixel-labelled, on train_unbiased "
                            "(no shortcut)", _same_as_scenes("swap10half_unbiased")),
    "auto10_null": ("the defaults + bg_null (the background alone names no class), 10 %",
                    {**DEFAULTS10, "guidance": "ext+swap+bg_null"}),
    "auto10_share0": ("the defaults, 10 %, no labelled share (the labelled images shown once an epoch)",
                      {**DEFAULTS10, "labelled_share": 0}),
    "swap100": ("background swap alone, every image pixel-labelled (what masks can do at all)",
                _same_as_scenes("swap100")),
    # the counterfactual forwards (swap, erased images) with BatchNorm in training mode, not frozen
    "auto10_bn": ("the defaults, 10 %, --freeze-bn none", {**DEFAULTS10, "freeze_bn": "none"}),
    "swap100_bn": ("background swap alone, every image pixel-labelled, --freeze-bn none",
                   {**_same_as_scenes("swap100"), "freeze_bn": "none"}),
    # frozen only for the erased images (out of distribution); the swapped pictures in training mode
    "auto10_bnerased": ("the defaults, 10 %, --freeze-bn erased", {**DEFAULTS10, "freeze_bn": "erased"}),
    "auto10_swap4": ("the defaults, 10 %, swap weight 4", _same_as_scenes("auto10_swap4")),
}
# the same candidates trained without the shortcut: does guidance cost accuracy where there is none?
ROWS.update({f"oracle_{row}": (f"{name}, on train_unbiased (no shortcut)", {**ROWS[row][1], **UNBIASED})
             for row, name in {"auto10_null": "the defaults + bg_null, 10 %",
                               "auto10_share0": ROWS["auto10_share0"][0],
                               "auto10_bn": ROWS["auto10_bn"][0],
                               "auto10_bnerased": ROWS["auto10_bnerased"][0]}.items()})
COLUMNS = [("test_accuracy", "accuracy"), ("test_worst_group_accuracy", "worst group"),
           ("test_mean_group_accuracy", "mean group"), ("test_cam_miou", "CAM mIoU")]
GAP_REFERENCE = ("baseline_steps", "oracle")
MIN_GAP = 0.05  # below this the gap columns say n/a


# --- the research stage: last layer retrained on counterfactuals ---------------------------


def counterfactual_head(run: Path, data: Path, out: Path, *, partners: int = 8, head_steps: int = 300,
                        lr: float = 1e-2, seed: int = 0) -> dict:
    """Retrain the classifier head of ``run`` (backbone frozen) on counterfactuals of its
    pixel-labelled training images; write OUT/last.pt (same format) and return the cost.

    Each labelled image i is pasted (its mask's pixels) on the backgrounds of ``partners``
    other labelled images j (j's own object painted over with j's background from elsewhere
    in its picture, as the swap term does); the head is fitted from scratch on the pooled
    features of the originals and the counterfactuals (full batch, AdamW, ``head_steps``
    steps, cross-entropy).
    """
    import torch
    import torch.nn.functional as F

    from attnguide.core.step import background_fill
    from attnguide.data import open_dataset
    from attnguide.io.checkpoints import read_checkpoint

    t0 = time.time()
    ckpt = read_checkpoint(run / "last.pt", "classifier")
    cfg = ckpt["config"]
    from attnguide.models.trained import load_model

    trained = load_model(run / "last.pt")
    model = trained.model.eval()
    ds = open_dataset(data, cfg.get("train_split", "train"), image_size=trained.image_size, train=False,
                      pixel_labels=cfg.get("pixel_labels") or "10%", seed=cfg.get("seed", 0),
                      mode="multi" if trained.multilabel else "single")
    index = sorted(ds.pixel_labelled)
    if len(index) < 2:
        raise SystemExit(f"{run}: fewer than two pixel-labelled images; nothing to pair")
    items = [ds[i] for i in index]
    images = torch.stack([it["image"] for it in items])  # (L, 3, S, S)
    objects = torch.stack([(it["mask"] != 0) & (it["mask"] != 255) for it in items]).unsqueeze(1).float()
    labels = torch.stack([it["labels"] for it in items]).argmax(1)
    g = torch.Generator().manual_seed(seed)
    views, targets = [images], [labels]
    n = len(index)
    for _ in range(partners):
        partner = (torch.arange(n) + torch.randint(1, n, (n,), generator=g)) % n
        background = background_fill(images[partner], objects[partner])
        views.append(objects * images + (1 - objects) * background)
        targets.append(labels)
    x, y = torch.cat(views), torch.cat(targets)
    with torch.no_grad():
        feats = torch.cat([model.forward_head(model.forward_features(chunk), pre_logits=True)
                           for chunk in x.split(64)])
    head = model.get_classifier()
    torch.manual_seed(seed)
    head.reset_parameters()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-3)
    for _ in range(head_steps):
        opt.zero_grad()
        F.cross_entropy(head(feats), y).backward()
        opt.step()
    out.mkdir(parents=True, exist_ok=True)
    ckpt["model"] = model.state_dict()
    torch.save(ckpt, out / "last.pt")
    return {"head_images": len(x), "head_steps": head_steps, "head_seconds": time.time() - t0}


# --- driver ----------------------------------------------------------------------------------


def _train(row: str, seed: int, data: Path, out: Path, common: dict, device: str) -> Path:
    run = out / f"{row}-s{seed}"
    if (run / "test_metrics.json").exists():
        return run
    options = {k: v for k, v in {**common, **ROWS[row][1]}.items() if k != "steps_of"}
    ref = ROWS[row][1].get("steps_of")
    if ref:
        options["steps"] = _steps_of(out / f"{ref}-s{seed}", int(options["epochs"]))
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with (run / "train.log").open("w") as log:
        cmd = scenes.train_command(data, run, options, seed, device)
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"training {row} seed {seed} failed; see {run}/train.log")
    wall = time.time() - t0
    metrics = {**scenes.test_metrics(run, data, device), **scenes.train_cost(run), "wall_seconds": wall}
    scenes.write_json(run / "test_metrics.json", metrics)
    return run


def _steps_of(run: Path, epochs: int) -> int:
    """The optimizer steps of ``run``: its last record's once it is finished, else its first
    epoch's steps times ``epochs`` (the sampler gives every epoch the same number), so that a
    row at equal steps can start while the run it copies is still training."""
    if (run / "test_metrics.json").exists():
        return scenes.run_steps(run)
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    if not lines:
        raise SystemExit(f"{run} has no finished epoch yet: train it first (its steps are copied)")
    return json.loads(lines[0])["step"] * epochs


def _head(row: str, seed: int, data: Path, out: Path, device: str) -> Path:
    run, head_run = out / f"{row}-s{seed}", out / f"{row}+cf-s{seed}"
    if (head_run / "test_metrics.json").exists():
        return head_run
    cost = counterfactual_head(run, data, head_run, seed=seed)
    base = json.loads((run / "test_metrics.json").read_text())
    metrics = {**scenes.test_metrics(head_run, data, device), "steps": base["steps"],
               "train_seconds": base["train_seconds"] + cost["head_seconds"],
               "wall_seconds": base["wall_seconds"] + cost["head_seconds"], **cost}
    scenes.write_json(head_run / "test_metrics.json", metrics)
    return head_run


def _gap(value, low, high) -> str:
    if value is None or low is None or high is None or high - low < MIN_GAP:
        return "n/a"  # no gap to close (the oracle not ahead by MIN_GAP): a share would be noise
    return f"{round(100 * (value - low) / (high - low)) + 0:d} %"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the composite folder (make_data.py)")
    p.add_argument("--out", type=Path, default=Path("runs/composite"))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--heads", nargs="*", default=["baseline_steps", "auto10", "oracle"],
                   help="rows that also get the counterfactual last-layer stage (ROW+cf)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", action="append", default=[], help="override a training option, key=value")
    p.add_argument("--device", default="cpu")
    p.add_argument("--write", action="store_true", help="put the table in benchmarks/RESULTS.md")
    p.add_argument("--note", default="", help="a sentence added under the table (what was left out and why)")
    args = p.parse_args(argv)
    common = {**COMMON, **scenes.parse_sets(args.set)}
    lock = scenes.hold_folder(args.out)  # noqa: F841 - held until the process exits
    order = sorted(args.rows, key=lambda r: "steps_of" in ROWS[r][1])  # a step-taking row after its source
    t_start, load = time.time(), os.getloadavg()[0]
    found: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for row in order:
            run = _train(row, seed, args.data, args.out, common, args.device)
            found.setdefault(row, []).append(json.loads((run / "test_metrics.json").read_text()))
            print(row, seed, {k: found[row][-1].get(k) for k, _ in COLUMNS}, flush=True)
        for row in args.heads:
            if row in args.rows:
                run = _head(row, seed, args.data, args.out, args.device)
                found.setdefault(f"{row}+cf", []).append(json.loads((run / "test_metrics.json").read_text()))
                print(f"{row}+cf", seed, {k: found[f"{row}+cf"][-1].get(k) for k, _ in COLUMNS}, flush=True)
    names = {**{r: ROWS[r][0] for r in ROWS},
             **{f"{r}+cf": ROWS[r][0] + " + last layer on counterfactuals" for r in ROWS}}
    mean = {r: {k: sum(m[k] for m in ms if m.get(k) is not None) / max(1, sum(m.get(k) is not None for m in ms))
                for k, _ in COLUMNS} for r, ms in found.items()}
    low, high = (mean.get(r) for r in GAP_REFERENCE)
    head = (["row", "seeds"] + [n for _, n in COLUMNS] + ["gap: accuracy", "gap: worst group",
                                                           "steps", "training s", "wall s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, ms in found.items():
        cells = [scenes.summarise([m[k] for m in ms if m.get(k) is not None]) for k, _ in COLUMNS]
        gaps = [_gap(mean[row][k], low and low[k], high and high[k])
                for k in ("test_accuracy", "test_worst_group_accuracy")]
        cost = [scenes.summarise([m[k] for m in ms], 0) for k in ("steps", "train_seconds", "wall_seconds")]
        lines.append(f"| {names[row]} | {len(ms)} | " + " | ".join(cells + gaps + cost) + " |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        cmd = "python benchmarks/composite/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        params = json.loads((args.data / "composite.json").read_text())
        scale = {k: params[k] for k in ("n_train", "n_val", "n_test", "image_size", "bias", "seed")}
        made = args.data / "make_data.json"  # written by make_data.py (absent: a user's own folder)
        glyphs = json.loads(made.read_text())["glyphs"] if made.exists() else None
        source = (f"`benchmarks/composite/make_data.py --glyphs {glyphs}`" if glyphs
                  else f"`attnguide data composite` folder `{args.data}`")
        classes = len((args.data / "classes.txt").read_text().split())
        pools = len(params["inputs"]["backgrounds"]["train"])
        settings = ", ".join(f"{k}={v}" for k, v in common.items())
        text = (f"### Composite: emoji on wallpaper photos, equal steps — {dt.date.today()} — "
                f"{platform.node() if args.device == 'cpu' else args.device}\n\n`{cmd}`\n\n"
                f"Data: {source} ({scale}); {classes} classes, {pools} pools, chance "
                f"{1 / classes:.2f}. Settings: {settings}; seeds {args.seeds}; unbiased test split; last checkpoint; "
                f"groups = (class, background pool), {classes * pools} groups. Gap columns: share of the gap "
                f"between `{GAP_REFERENCE[0]}` and `{GAP_REFERENCE[1]}` that a row closes. "
                f"'+ last layer on counterfactuals': the run's head refitted (backbone frozen) on its "
                f"pixel-labelled images and 8 background swaps of each (no backbone steps; its "
                f"seconds are added). Load average {load:.1f} at the start of this call (2 cores: above 2 "
                f"the wall times are inflated by other jobs); {time.time() - t_start:.0f} s for this call."
                f"\n\n{table}\n" + (f"\n{args.note}\n" if args.note else ""))
        sys.path.insert(0, str(HERE.parent))
        from results_page import record

        sets = "".join(f" --set {s}" for s in sorted(args.set))
        record(f"composite/run.py --glyphs {glyphs or args.data}: " + " ".join(args.rows) + sets, text, section="Composite: shortcut removal on real pictures", history="composite.md",
               results=RESULTS)


if __name__ == "__main__":
    main()
