"""The GAIN paper's VOC 2012 segmentation table, end to end, with the public CLI.

For each row: a VGG16 classifier (``attnguide train``), its pseudo labels and
CAMs on train_aug (``attnguide pseudo-label``), then DeepLab-LargeFOV trained two
ways (``attnguide segment``): on the CRF pseudo labels (``--mode pseudo``, the
simple route) and with SEC's losses on the CAMs (``--mode sec``, the paper's
route). The table, beside the paper's val mIoU, goes to benchmarks/RESULTS.md
(with the command, date and machine). Settings: configs/*.yaml.

Every step is one ``python -m attnguide ...`` process with its log in OUT/logs/.
A step whose output is complete (OUT/<row>/<step>.done) is skipped; one that was
interrupted continues with the command's own --resume.

    python benchmarks/voc2012/run.py --voc /data/VOCdevkit --weights vgg16_timm.pth --out runs/voc2012
    python benchmarks/voc2012/run.py --voc /data/VOCdevkit --weights vgg16_timm.pth --rows gain ext200 --routes sec
    python benchmarks/voc2012/run.py --voc /data/VOCdevkit --weights vgg16_timm.pth --rows box ext200+box
    python benchmarks/voc2012/run.py --smoke --out /tmp/voc-smoke     # every step on a tiny VOC folder, CPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
RESULTS = HERE.parent / "RESULTS.md"

# row -> (label in the table, the paper's val mIoU, `attnguide train` options of the row)
ROWS = {
    "sec-baseline": ("SEC baseline (unguided VGG16 Grad-CAM cues)", 50.7, {"guidance": "none"}),
    "gain": ("GAIN, batch 1 (paper)", 55.3, {"guidance": "self"}),
    "gain-batched": ("GAIN, batch 16 (lr x16)", 55.3, {"guidance": "self", "batch_size": 16, "lr": 1.6e-4}),
    "ext200": ("GAIN_ext, 200 pixel-labelled images", 58.3, {"guidance": "ext", "pixel_labels": 200}),
    "ext1464": ("GAIN_ext, 1464 pixel-labelled images", 60.5, {"guidance": "ext", "pixel_labels": 1464}),
    # boxes of Annotations/*.xml (issue 17): every train_aug image, no mask; then 200 masks
    # beside the boxes. Not in the GAIN paper (None); not run yet (no VOC, no GPU here).
    # Both use what --guidance auto picks for boxes (+ the box swap, RESULTS.md "Boxes, clicks
    # or masks on the scenes"); pseudo-label then keeps each class inside its XML boxes.
    "box": ("GAIN + energy loss + box swap, boxes of every image, no masks", None,
            {"guidance": "self+energy+box_swap", "annotations": "boxes"}),
    "ext200+box": ("GAIN_ext 200 masks + energy loss + box swap on every image's boxes", None,
                   {"guidance": "ext+energy+box_swap", "annotations": "masks,boxes", "pixel_labels": 200,
                    "annotated": "all"}),
}
PAPER_ROWS = ("sec-baseline", "gain", "gain-batched", "ext200", "ext1464")
"""The default --rows: the paper's table (box and ext200+box are asked for by name)."""
ROUTES = {"sec": "SEC route", "pseudo": "pseudo-label route"}

# --smoke: the same steps on make_tiny_voc's folder (12 train_aug, 4 val images), a tiny
# random-init classifier and segmenter, 1 epoch / 2 iterations, CPU
SMOKE = {
    "train": {"model": "test_resnet", "layer": "auto", "image_size": 64, "epochs": 1, "warmup_epochs": 0,
              "snapshots": 0, "checkpoint_every": 0},
    "rows": {"gain-batched": {"batch_size": 4}, "ext200": {"pixel_labels": 2}, "ext200+box": {"pixel_labels": 2},
             "ext1464": {"pixel_labels": 6}},
    "pseudo_label": {"scales": "1.0", "flip": False},
    "segment": {"arch": "linknet", "encoder": "tu-test_resnet", "crop_size": 32, "scale_range": "0.8,1.2",
                "iterations": 2, "batch_size": 4, "step_size": 1, "checkpoint_every": 0},
}


def load_yaml(name: str) -> dict:
    import yaml

    return yaml.safe_load((CONFIGS / name).read_text()) or {}


def cli_options(options: dict) -> list[str]:
    """``{"crf": True, "scales": "1.0,0.5", "val_split": ""}`` -> ``--crf --scales 1.0,0.5 --val-split ''``."""
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            out += [flag, str(value)]
    return out


def attnguide(*args: str) -> list[str]:
    return [sys.executable, "-m", "attnguide", *args]


# ---------------------------------------------------------------------- steps


@dataclass
class Step:
    """One CLI call. ``done`` marks a complete output; ``partial`` an interrupted one,
    continued with ``resume`` (a command) when given."""

    name: str
    command: list[str]
    done: Path
    deps: list[str] = field(default_factory=list)
    partial: Path | None = None
    resume: list[str] | None = None

    def argv(self) -> list[str]:
        if self.resume is not None and self.partial is not None and self.partial.exists():
            return self.resume
        return self.command


def plan(args, voc: Path) -> list[Step]:
    """The steps of the chosen rows and routes, in dependency order."""
    train_cfg = CONFIGS / "train-vgg16.yaml"
    pseudo_opts = load_yaml("pseudo-label.yaml")
    seg = load_yaml("segment-largefov.yaml")
    weights = [] if args.smoke else ["--weights", str(args.weights)]
    smoke = SMOKE if args.smoke else {"train": {}, "rows": {}, "pseudo_label": {}, "segment": {}}
    steps = []
    for row in args.rows:
        base = args.out / row
        classifier, pseudo = base / "classifier", base / "pseudo"
        train_opts = {**ROWS[row][2], **smoke["train"], **smoke["rows"].get(row, {}), **args.train_set}
        steps.append(Step(
            f"{row}/train",
            attnguide("train", "--config", str(train_cfg), "--data", str(voc), *weights, "--out", str(classifier),
                      "--device", args.device, "--workers", str(args.workers), "--overwrite", "--quiet",
                      *cli_options(train_opts)),
            done=base / "train.done", partial=classifier / "last.pt",
            resume=attnguide("train", "--resume", str(classifier), "--quiet")))
        steps.append(Step(
            f"{row}/pseudo-label",
            attnguide("pseudo-label", str(classifier / "last.pt"), "--data", str(voc), "--out", str(pseudo),
                      "--device", args.device, "--workers", str(args.workers), "--resume", "--quiet",
                      *cli_options({**pseudo_opts, **smoke["pseudo_label"]})),
            done=base / "pseudo-label.done", deps=[f"{row}/train"]))
        for route in args.routes:
            run = base / f"segment-{route}"
            labels = pseudo / "crf" if route == "pseudo" else pseudo
            options = {**seg.get("common", {}), **seg.get(route, {}), **smoke["segment"], **args.segment_set}
            steps.append(Step(
                f"{row}/segment-{route}",
                attnguide("segment", "--data", str(voc), "--labels", str(labels), *weights, "--out", str(run),
                          "--device", args.device, "--workers", str(args.workers),
                          "--crf-workers", str(args.workers), "--quiet", *cli_options(options)),
                done=base / f"segment-{route}.done", deps=[f"{row}/pseudo-label"], partial=run / "last.pt",
                resume=attnguide("segment", "--resume", str(run), "--quiet")))
    return steps


def run_steps(steps: list[Step], logs: Path, parallel: int) -> None:
    """Run the steps (``parallel`` at a time, each after its dependencies); skip done ones."""
    logs.mkdir(parents=True, exist_ok=True)
    finished = {s.name for s in steps if s.done.exists()}
    for name in sorted(finished):
        print(f"skip  {name} (done)", flush=True)
    todo = [s for s in steps if s.name not in finished]
    running: list[tuple[Step, subprocess.Popen, float, Path]] = []
    failed: list[str] = []
    while todo or running:
        ready = [s for s in todo if all(d in finished for d in s.deps)]
        while ready and len(running) < parallel and not failed:
            step = ready.pop(0)
            todo.remove(step)
            argv = step.argv()
            log = logs / (step.name.replace("/", "-") + ".log")
            with log.open("a") as f:
                f.write(f"\n$ {shlex.join(argv)}\n")
            print(f"start {step.name}: {shlex.join(argv[1:])}", flush=True)
            handle = log.open("a")
            proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
            handle.close()
            running.append((step, proc, time.time(), log))
        if not running:
            if failed or not todo:
                break
            raise SystemExit(f"error: steps {[s.name for s in todo]} wait for steps that did not run")
        time.sleep(0.2)
        for job in list(running):
            step, proc, t0, log = job
            if proc.poll() is None:
                continue
            running.remove(job)
            if proc.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-5:])
                print(f"FAIL  {step.name} (exit {proc.returncode}); the end of {log}:\n{tail}", flush=True)
                failed.append(step.name)
                continue
            step.done.parent.mkdir(parents=True, exist_ok=True)
            step.done.write_text(shlex.join(step.argv()) + "\n")
            finished.add(step.name)
            print(f"done  {step.name} ({time.time() - t0:.0f} s)", flush=True)
        if failed and not running:
            break
    if failed:
        raise SystemExit(f"error: {', '.join(failed)} failed; see {logs}/ (rerun the same command to resume)")


# ---------------------------------------------------------------------- inputs


def check_inputs(args) -> Path:
    """The VOC2012 folder; exits with one readable line per problem when VOC, SBD, the
    weights or the GPU is missing (without importing torch unless a GPU is asked for)."""
    problems = []
    voc = find_voc_root(args.voc) if args.voc is not None else None
    if args.voc is None:
        problems.append("pass the PASCAL VOC 2012 folder with --voc PATH (VOCdevkit/VOC2012 with JPEGImages/)")
    elif voc is None:
        problems.append(f"--voc {args.voc}: no VOC 2012 folder there (expected JPEGImages/ and "
                        "ImageSets/Segmentation/ in PATH, PATH/VOC2012 or PATH/VOCdevkit/VOC2012)")
    else:
        for split in ("train_aug", "val"):
            if not any((voc / folder / f"{split}.txt").is_file() for folder in SPLIT_FOLDERS):
                what = "SBD's train_aug.txt" if split == "train_aug" else "val.txt"
                problems.append(f"{voc}: {what} is missing from ImageSets/Segmentation/")
        if not (voc / "SegmentationClassAug").is_dir():
            problems.append(f"{voc}: SegmentationClassAug/ (the SBD masks as index PNGs) is missing")
    if args.weights is None:
        problems.append("pass the ImageNet VGG16 weights file with --weights FILE (see benchmarks/voc2012/README.md)")
    elif not args.weights.is_file():
        problems.append(f"--weights {args.weights}: no such file")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(f"--device {args.device}: no CUDA GPU is visible (the real rows need one)")
    if problems:
        raise SystemExit("error: " + "\nerror: ".join(problems))
    return voc


SPLIT_FOLDERS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug", "SegmentationClassAug")
"""Where attnguide looks for a VOC split list (attnguide.data.voc.SPLIT_FOLDERS)."""


def find_voc_root(path: Path) -> Path | None:
    """The VOC2012 folder at ``path``, ``path/VOC2012`` or ``path/VOCdevkit/VOC2012`` (as attnguide finds it)."""
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    return None


def make_smoke_data(out: Path) -> Path:
    root = out / "data"
    voc = root / "VOCdevkit" / "VOC2012"
    if not (voc / "ImageSets" / "Segmentation" / "train_aug.txt").is_file():
        from attnguide.data import make_tiny_voc

        make_tiny_voc(root, n_train=6, n_val=4, image_size=(64, 80), seed=0, sbd=True)
    return voc


# ---------------------------------------------------------------------- table


def read_results(out: Path, row: str, routes: list[str]) -> dict:
    res: dict = {}
    metrics = out / row / "pseudo" / "metrics.json"
    if metrics.is_file():
        data = json.loads(metrics.read_text())
        res["labels_miou"] = data.get("miou")
        res["labels_miou_crf"] = (data.get("crf") or {}).get("miou")
    for route in routes:
        lines = (out / row / f"segment-{route}" / "metrics.jsonl")
        records = [json.loads(x) for x in lines.read_text().splitlines() if x.strip()] if lines.is_file() else []
        if records:  # the final model (no selection on val)
            res[f"{route}_miou"] = records[-1].get("val_miou")
            res[f"{route}_miou_crf"] = records[-1].get("val_miou_crf")
    return res


def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def table(args) -> str:
    head = ["row", "paper val mIoU"] + [f"{ROUTES[r]}: val mIoU +CRF (no CRF)" for r in args.routes]
    head.append("pseudo labels, train_aug mIoU +CRF (no CRF)")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in args.rows:
        res = read_results(args.out, row, args.routes)
        cells = [ROWS[row][0], "n/a" if ROWS[row][1] is None else f"{ROWS[row][1]:.1f}"]
        for route in args.routes:
            cells.append(f"{pct(res.get(f'{route}_miou_crf'))} ({pct(res.get(f'{route}_miou'))})")
        cells.append(f"{pct(res.get('labels_miou_crf'))} ({pct(res.get('labels_miou'))})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(device: str) -> str:
    cpu = f"{platform.node() or 'unknown host'}, {os.cpu_count()} CPU cores"
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(torch.device(device))}, {cpu}"
    return cpu


def report(args, argv: list[str], seconds: float) -> str:
    command = "python benchmarks/voc2012/run.py " + shlex.join(argv)
    kind = "smoke run (tiny VOC-format folder, random-init tiny models: the numbers mean nothing)" \
        if args.smoke else "VOC 2012 val, final DeepLab-LargeFOV of each run"
    return (f"### VOC 2012: GAIN cues → DeepLab-LargeFOV — {dt.date.today()} — {machine(args.device)}\n\n"
            f"`{command}`\n\n{kind}; mIoU in %; settings in benchmarks/voc2012/configs/; "
            f"{seconds / 60:.1f} min for the steps run now.\n\n{table(args)}\n")


# ---------------------------------------------------------------------- main


def parse_sets(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: {what} takes key=value, got {item!r}")
        out[key.replace("-", "_")] = value
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, help="PASCAL VOC 2012 with SBD (VOCdevkit/VOC2012, train_aug.txt, "
                   "SegmentationClassAug/)")
    p.add_argument("--weights", type=Path, help="ImageNet VGG16 weights (timm vgg16 state dict; see README)")
    p.add_argument("--out", type=Path, default=Path("runs/voc2012"), help="working folder (default runs/voc2012)")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(PAPER_ROWS))
    p.add_argument("--routes", nargs="+", choices=list(ROUTES), default=list(ROUTES))
    p.add_argument("--device", default=None, help="cuda (default) or cpu (default with --smoke)")
    p.add_argument("--workers", type=int, default=None, help="data-loading and CRF processes per step "
                   "(default 8; 0 with --smoke)")
    p.add_argument("--parallel", type=int, default=None, help="steps run at a time (default 1; 2 with --smoke)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an `attnguide train` option of every row, e.g. warmup_epochs=10")
    p.add_argument("--segment-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an `attnguide segment` option of both routes, e.g. iterations=6000")
    p.add_argument("--smoke", action="store_true", help="every step on a tiny VOC-format folder (CPU, ~1 min); "
                   "the table goes to OUT/RESULTS.md, not to benchmarks/RESULTS.md")
    p.add_argument("--dry-run", action="store_true", help="print the commands a run would start now, and exit")
    p.add_argument("--no-write", action="store_true",
                   help="do not put the table in benchmarks/RESULTS.md (where it replaces the run of "
                        "the same rows and routes, moved to benchmarks/history/voc2012.md)")
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.workers = (0 if args.smoke else 8) if args.workers is None else args.workers
    args.parallel = (2 if args.smoke else 1) if args.parallel is None else args.parallel
    args.train_set = parse_sets(args.train_set, "--train-set")
    args.segment_set = parse_sets(args.segment_set, "--segment-set")
    args.out = args.out.resolve()

    voc = make_smoke_data(args.out) if args.smoke else check_inputs(args)
    steps = plan(args, voc)
    if args.dry_run:  # what a run would do now
        for step in steps:
            print(f"# {step.name}: done" if step.done.exists() else shlex.join(step.argv()))
        return
    start = time.time()
    env_threads = os.environ.get("OMP_NUM_THREADS")
    if args.smoke and env_threads is None:
        os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: threads only contend on a small machine
    run_steps(steps, args.out / "logs", args.parallel)
    text = report(args, argv, time.time() - start)
    print(text)
    (args.out / "RESULTS.md").write_text(text)
    if not args.smoke and not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/results_page.py
        from results_page import record

        record(f"voc2012/run.py: {' '.join(args.rows)} / {' '.join(args.routes)}", text,
               section="VOC 2012: GAIN cues → DeepLab-LargeFOV", history="voc2012.md", results=RESULTS)


if __name__ == "__main__":
    main()
