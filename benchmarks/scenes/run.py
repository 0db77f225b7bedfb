"""The method's claim on the built-in biased scenes: does guided attention stop a
classifier from using the shortcut?

Rows: an unguided classifier (the CAM baseline), GAIN, GAIN_ext with 2%, 10% and
100% of the training images pixel-labelled, RRR, and an oracle trained on scenes
without the shortcut. Columns: accuracy and mAP on the unbiased test split, CAM
mIoU and the share of attention inside the objects; with --pseudo / --segment the
pseudo-label and segmenter mIoU. Each (row, seed) is a job, trained and then scored in
processes of its own, ``--parallel`` jobs at a time, longest first; seeds give the spread.

    python benchmarks/scenes/run.py --out runs/scenes-bench --seeds 0 1 2 --write
    python benchmarks/scenes/run.py --rows baseline ext10 --set epochs=4 --set lr=3e-4
    python benchmarks/scenes/run.py --rows baseline gain ext10 --pseudo   # + pseudo-label mIoU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from attnguide.tasks.demo import CLASSIFIER as DEMO_CLASSIFIER
from attnguide.tasks.demo import SCENES as DEMO_SCENES

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"

# Settings shared by every row; any of them can be overridden with --set key=value.
COMMON = {
    "model": "resnet18",
    "image_size": 96,
    "layer": "auto",
    "epochs": 12,
    "warmup_epochs": 4,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "schedule": "cosine",
}

# row name -> (label in the table, options of that row)
ROWS = {
    "baseline": ("unguided (CAM baseline)", {"guidance": "none"}),
    # Equal compute: "steps_of" gives a row the optimizer steps its named row (same seed) took.
    "baseline_steps": ("unguided, the defaults' (auto10) steps", {"guidance": "none", "steps_of": "auto10"}),
    "oracle_steps": ("oracle, the defaults' (auto10) steps",
                     {"guidance": "none", "train_split": "train_unbiased", "steps_of": "auto10"}),
    "gain": ("GAIN", {"guidance": "self"}),
    "ext2": ("GAIN_ext, 2% pixel labels", {"guidance": "ext", "pixel_labels": "2%"}),
    "ext10": ("GAIN_ext, 10% pixel labels", {"guidance": "ext", "pixel_labels": "10%"}),
    "ext100": ("GAIN_ext, 100% pixel labels", {"guidance": "ext", "pixel_labels": "100%"}),
    "extall10": ("L_e over every class (alpha=0), 10% pixel labels",
                 {"guidance": "ext", "pixel_labels": "10%", "alpha": 0, "ext_classes": "all"}),
    "extall100": ("L_e over every class (alpha=0), 100% pixel labels",
                  {"guidance": "ext", "pixel_labels": "100%", "alpha": 0, "ext_classes": "all"}),
    "auto10": ("the defaults (--guidance auto), 10% pixel labels", {"guidance": "auto", "pixel_labels": "10%"}),
    # Ablations of the defaults at 10% masks: one change each against auto10.
    "auto10_detach": ("defaults, 10%, detached CAM weights (first order)",
                      {"guidance": "auto", "pixel_labels": "10%", "detach_weights": True}),
    "auto10_logit": ("defaults, 10%, attention-mining score on the logit",
                     {"guidance": "auto", "pixel_labels": "10%", "am_score": "logit"}),
    "auto10_noam": ("defaults, 10%, no attention mining (alpha=0)",
                    {"guidance": "auto", "pixel_labels": "10%", "alpha": 0}),
    "auto10_area": ("defaults, 10%, area penalty 0.5",
                    {"guidance": "auto", "pixel_labels": "10%", "area_weight": 0.5}),
    "auto10_extall": ("defaults, 10%, L_e over every class",
                      {"guidance": "auto", "pixel_labels": "10%", "ext_classes": "all"}),
    "auto10_warmup0": ("defaults, 10%, no warm-up", {"guidance": "auto", "pixel_labels": "10%", "warmup_epochs": 0}),
    "auto10_warmup3": ("defaults, 10%, 3 warm-up epochs",
                       {"guidance": "auto", "pixel_labels": "10%", "warmup_epochs": 3}),
    "auto10_share75": ("defaults, 10%, three quarters of every batch pixel-labelled",
                       {"guidance": "auto", "pixel_labels": "10%", "labelled_share": 0.75}),
    # A smaller labelled share at the defaults' step count: more of every batch for the
    # unlabelled images, whose learning a guided run slows where nothing needs fixing.
    "auto10_share25": ("defaults, 10%, a quarter of every batch pixel-labelled, the defaults' steps",
                       {"guidance": "auto", "pixel_labels": "10%", "labelled_share": 0.25,
                        "steps_of": "auto10"}),
    "auto10_share25_unbiased": ("defaults, 10%, a quarter of every batch pixel-labelled, the defaults' "
                                "steps, trained without the shortcut",
                                {"guidance": "auto", "pixel_labels": "10%", "labelled_share": 0.25,
                                 "steps_of": "auto10", "train_split": "train_unbiased"}),
    "auto10_swap2": ("defaults, 10%, swap weight 2",
                     {"guidance": "auto", "pixel_labels": "10%", "swap_weight": 2}),
    "auto10_swap4": ("defaults, 10%, swap weight 4",
                     {"guidance": "auto", "pixel_labels": "10%", "swap_weight": 4}),
    "auto10_share75_swap2": ("defaults, 10%, three quarters of every batch pixel-labelled, swap weight 2",
                             {"guidance": "auto", "pixel_labels": "10%", "labelled_share": 0.75,
                              "swap_weight": 2}),
    "auto10_bn": ("defaults, 10%, --freeze-bn none (BatchNorm in training mode in every extra forward)",
                  {"guidance": "auto", "pixel_labels": "10%", "freeze_bn": "none"}),
    # --guidance auto as it was before 2026-12-07 (--freeze-bn auto is now none with the swap)
    "auto10_bnall": ("defaults before 2026-12-07, 10% (--freeze-bn all)",
                     {"guidance": "auto", "pixel_labels": "10%", "freeze_bn": "all"}),
    "auto10_bnerased": ("defaults, 10%, --freeze-bn erased (only the erased images frozen)",
                        {"guidance": "auto", "pixel_labels": "10%", "freeze_bn": "erased"}),
    "auto10_bn_unbiased": ("defaults, 10%, --freeze-bn none, trained without the shortcut",
                           {"guidance": "auto", "pixel_labels": "10%", "freeze_bn": "none",
                            "train_split": "train_unbiased"}),
    "auto10_unbiased": ("defaults, 10%, trained without the shortcut",
                        {"guidance": "auto", "pixel_labels": "10%", "train_split": "train_unbiased"}),
    # Twice the epochs of the preset (the cue preset trains 15): does a longer run let the
    # few masks reach the rest? Compare with the e30 baseline and oracle only.
    "baseline_e30": ("unguided, 30 epochs", {"guidance": "none", "epochs": 30}),
    "oracle_e30": ("oracle, 30 epochs", {"guidance": "none", "train_split": "train_unbiased", "epochs": 30}),
    "auto10_e30": ("defaults, 10%, 30 epochs", {"guidance": "auto", "pixel_labels": "10%", "epochs": 30}),
    "auto10_unbiased_e30": ("defaults, 10%, 30 epochs, trained without the shortcut",
                            {"guidance": "auto", "pixel_labels": "10%", "train_split": "train_unbiased",
                             "epochs": 30}),
    "rrr100": ("RRR, 100% pixel labels", {"guidance": "rrr", "pixel_labels": "100%"}),
    "bg10": ("background invariance, 10% pixel labels", {"guidance": "bg", "pixel_labels": "10%"}),
    "bg100": ("background invariance, 100% pixel labels", {"guidance": "bg", "pixel_labels": "100%"}),
    "swap10": ("background swap, 10% pixel labels", {"guidance": "swap", "pixel_labels": "10%", "labelled_share": 0}),
    "swap100": ("background swap, 100% pixel labels", {"guidance": "swap", "pixel_labels": "100%"}),
    "swap10half": ("background swap, 10% pixel labels, half of every batch pixel-labelled",
                   {"guidance": "swap", "pixel_labels": "10%", "labelled_share": 0.5}),
    "extswap10half": ("GAIN_ext + background swap, 10% pixel labels, half of every batch pixel-labelled",
                      {"guidance": "ext+swap", "pixel_labels": "10%", "swap_source": "masks",
                       "labelled_share": 0.5}),
    "swap10half_unbiased": ("background swap, 10% pixel labels, half of every batch pixel-labelled, "
                            "trained without the shortcut",
                            {"guidance": "swap", "pixel_labels": "10%", "labelled_share": 0.5,
                             "train_split": "train_unbiased"}),
    "extswap10half_unbiased": ("GAIN_ext + background swap, 10% pixel labels, half of every batch "
                               "pixel-labelled, trained without the shortcut",
                               {"guidance": "ext+swap", "pixel_labels": "10%", "swap_source": "masks",
                                "labelled_share": 0.5, "train_split": "train_unbiased"}),
    "swap10most": ("background swap, 10% pixel labels, three quarters of every batch pixel-labelled",
                   {"guidance": "swap", "pixel_labels": "10%", "labelled_share": 0.75}),
    "extswapatt10half": ("GAIN_ext + background swap, objects also cut by attention, 10% pixel labels, "
                         "half of every batch pixel-labelled",
                         {"guidance": "ext+swap", "pixel_labels": "10%", "swap_source": "attention",
                          "labelled_share": 0.5}),
    "extswapatt10": ("GAIN_ext + background swap, objects also cut by attention, 10% pixel labels",
                     {"guidance": "ext+swap", "pixel_labels": "10%", "swap_source": "attention",
                      "labelled_share": 0}),
    "extswap10": ("GAIN_ext + background swap, 10% pixel labels",
                  {"guidance": "ext+swap", "pixel_labels": "10%", "swap_source": "masks", "labelled_share": 0}),
    "extswap100": ("GAIN_ext + background swap, 100% pixel labels",
                   {"guidance": "ext+swap", "pixel_labels": "100%", "swap_source": "masks"}),
    "swap100_unbiased": ("background swap, 100% pixel labels, trained without the shortcut",
                         {"guidance": "swap", "pixel_labels": "100%", "train_split": "train_unbiased"}),
    "oracle": ("oracle (trained without the shortcut)",
               {"guidance": "none", "train_split": "train_unbiased"}),
    # No classifier: the segmenter of --segment trained on the true masks (the upper bound).
    "truemasks": ("segmenter on the true masks (upper bound)", {}),
}
TRUE_MASKS = "truemasks"

# --preset NAME: scenes and training settings of a named experiment (before --scenes/--set).
PRESETS = {
    # `attnguide demo`'s scale: multi-label scenes whose background goes with the class in train
    # (water with boats) and not in val/test; resnet10t, 64 px, 6 epochs. Each run (classifier,
    # pseudo labels, segmenter) takes a couple of minutes on 2 CPU cores.
    "demo": ({k: v for k, v in DEMO_SCENES.items() if k != "seed"}, DEMO_CLASSIFIER),
    # Issue 7's decoy: single-label, shared colours (only the shape names the class), a corner
    # cue that names the class in every train image and is random in val/test; 64 px, CPU-sized.
    "cue": ({"bias": "cue", "bias_strength": 1.0, "colours": "shared", "min_objects": 1,
             "max_objects": 1, "image_size": 64, "n_train": 1000, "n_val": 100, "n_test": 300},
            {"model": "resnet10t", "image_size": 64, "epochs": 15, "warmup_epochs": 0,
             "batch_size": 16, "snapshots": 0}),
}

COLUMNS = [("test_accuracy", "accuracy"), ("test_map", "mAP"), ("test_cam_miou", "CAM mIoU"),
           ("test_attention_inside", "attention inside"),
           ("test_worst_group_accuracy", "worst group"), ("test_mean_group_accuracy", "mean group")]
PSEUDO_COLUMNS = [("pseudo_miou", "pseudo-label mIoU"), ("pseudo_miou_crf", "with CRF")]
SEGMENT_COLUMNS = [("segmenter_miou", "segmenter mIoU")]
COST_COLUMNS = [("steps", "steps"), ("train_seconds", "training s")]  # every row reports its compute


def hold_folder(out: Path) -> int:
    """An exclusive lock on the driver's --out folder itself (no file is added to it) for this
    process's life: a second call on the same folder would train into the same run folders at
    once. Returns the folder's open descriptor; the lock goes with ``os.close`` or the exit."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SystemExit(f"another benchmark call is using {out}: wait for it to end, or pass "
                         "another --out (two calls on one folder train into the same runs)") from None
    return fd


def parse_sets(items: list[str]) -> dict[str, str | bool]:
    """``--set key=value`` items -> options; ``true`` / ``false`` become booleans (flags)."""
    words = {"true": True, "false": False}
    out: dict[str, str | bool] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--set takes key=value, got {item!r}")
        out[key.replace("-", "_")] = words.get(value.strip().lower(), value)
    return out


def train_command(data: Path, run: Path, options: dict, seed: int, device: str,
                  resume: bool = False) -> list[str]:
    """``attnguide train`` of a row; ``resume``: go on from the run's own ``last.pt`` (a killed
    call's training, bit-exact on CPU) instead of starting it over."""
    cmd = [sys.executable, "-m", "attnguide", "train", "--data", str(data), "--out", str(run),
           "--seed", str(seed), "--device", device, "--quiet"]
    cmd += ["--resume", str(run / "last.pt")] if resume else ["--overwrite"]
    for key, value in options.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):  # typer flags: --detach-weights / --no-detach-weights
            cmd.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            cmd += [f"--{flag}", str(value)]
    return cmd


def test_metrics(run: Path, data: Path, device: str) -> dict:
    """Metrics of the run's last checkpoint on the unbiased test split."""
    import torch

    from attnguide.data import open_dataset
    from attnguide.engine import evaluate
    from attnguide.models.trained import load_model

    trained = load_model(run / "last.pt")
    dev = torch.device(device)
    trained.model.to(dev)
    ds = open_dataset(data, split="test", image_size=trained.image_size, train=False)
    metrics = evaluate(trained.guide(), ds, multilabel=trained.multilabel, device=dev)
    return {k.replace("val_", "test_"): v for k, v in metrics.items()}


def pseudo_metrics(run: Path, data: Path, device: str, crf: bool, boxes: str = "auto",
                   out: str = "pseudo") -> dict:
    """Pseudo-label mIoU of the run's attention on the training split (true masks),
    without and with dense CRF; ``boxes``: pseudo-label's --boxes (auto: the boxes bound
    the CAMs when the run was trained on boxes)."""
    from attnguide.tasks.pseudo_labels import PseudoLabelConfig, pseudo_label

    res = pseudo_label(PseudoLabelConfig(run=str(run / "last.pt"), data=str(data), split="train",
                                         out=str(run / out), scales=(1.0, 1.5), crf=crf, boxes=boxes,
                                         device=device, quiet=True, resume=True))
    return {"pseudo_miou": res.metrics.miou if res.metrics else None,
            "pseudo_miou_crf": res.crf_metrics.miou if res.crf_metrics else None}


def segmenter_metrics(run: Path, data: Path, device: str, true_masks: bool = False, seed: int = 0) -> dict:
    """Test mIoU of a small segmenter trained on the run's CRF pseudo labels, or on the true
    masks (the demo's segmenter: segment's defaults, DeepLabv3+, with a tu-resnet10t encoder
    from scratch, 64 px crops), seeded with the job's seed (so the seeds' spread includes the segmenter's)."""
    from attnguide.tasks.demo import SEGMENTER
    from attnguide.tasks.evaluate import evaluate_predictions
    from attnguide.tasks.prediction import predict
    from attnguide.tasks.segmentation import SegmentConfig, segment

    seg = run / "segmenter"
    resume = str(seg) if (seg / "last.pt").exists() else None  # a killed run goes on; a finished one stops
    labels = "gt" if true_masks else str(run / "pseudo" / "crf")
    segment(SegmentConfig(data=str(data), labels=labels, out=str(seg),
                          val_split="", device=device, quiet=True, resume=resume, seed=seed,
                          **SEGMENTER))
    pred = seg / "test_predictions"
    predict(seg / "last.pt", pred, data=str(data), split="test", device=device, quiet=True)
    return {"segmenter_miou": evaluate_predictions(pred, data=str(data), split="test").miou}


def train_cost(run: Path) -> dict:
    """Optimizer steps and training seconds (the epochs' own times) from metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return {"steps": records[-1]["step"], "train_seconds": sum(r.get("time", 0.0) for r in records)}


def run_steps(run: Path) -> int:
    """The optimizer steps a finished run took."""
    return train_cost(run)["steps"]


def score_run(run: Path, data: Path, device: str, pseudo: bool, segment: bool,
              true_masks: bool = False, seed: int = 0) -> None:
    """Add the columns the run's test_metrics.json lacks (all of them for a new run): test
    metrics, and with ``pseudo`` / ``segment`` the pseudo-label and segmenter mIoU;
    ``true_masks``: only the segmenter, trained on the true masks (no classifier)."""
    done_file = run / "test_metrics.json"
    if true_masks:
        write_json(done_file, segmenter_metrics(run, data, device, true_masks=True, seed=seed))
        return
    metrics = json.loads(done_file.read_text()) if done_file.exists() else test_metrics(run, data, device)
    if "steps" not in metrics:
        metrics.update(train_cost(run))
    if (pseudo or segment) and "pseudo_miou" not in metrics:
        metrics.update(pseudo_metrics(run, data, device, crf=True))
    if segment and "segmenter_miou" not in metrics:
        metrics.update(segmenter_metrics(run, data, device, seed=seed))
    write_json(done_file, metrics)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # atomic: a killed call never leaves half a file


def plot_table(results: dict[str, list[dict]], columns: list[tuple[str, str]], out_png: Path) -> Path:
    """Bar chart of the table: one panel per column, mean over seeds with each seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if results[r]]
    columns = [(k, n) for k, n in columns if any(m.get(k) is not None for r in rows for m in results[r])]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 0.45 * len(rows) + 1.4),
                             sharey=True, squeeze=False)
    for ax, (key, name) in zip(axes[0], columns):
        for y, row in enumerate(rows):
            values = [m[key] for m in results[row] if m.get(key) is not None]
            if values:
                ax.barh(y, statistics.mean(values), color="tab:blue" if row != "oracle" else "tab:gray")
                ax.plot(values, [y] * len(values), "k.", markersize=4)
        ax.set_title(name, fontsize=10)
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)), [ROWS[r][0] for r in rows], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def summarise(values: list[float], digits: int = 3) -> str:
    if not values:
        return "n/a"
    if digits == 0:
        return (f"{values[0]:.0f}" if len(values) == 1
                else f"{statistics.mean(values):.0f} ± {statistics.stdev(values):.0f}")
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/scenes-bench"))
    p.add_argument("--data", type=Path, default=None, help="scenes folder (default: OUT/scenes)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--one-seed", nargs="+", default=[], choices=list(ROWS), metavar="ROW",
                   help="rows (among --rows) trained with the first seed only: the spread is for the main rows")
    p.add_argument("--set", action="append", default=[], help="override a training option, key=value")
    p.add_argument("--scenes", action="append", default=[], help="make_scenes option, key=value")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="named experiment: its scenes and training settings")
    p.add_argument("--device", default="cpu")
    p.add_argument("--parallel", type=int, default=1, help="training processes at a time")
    p.add_argument("--pseudo", action="store_true",
                   help="also score each run's pseudo labels of the train split, with and without CRF")
    p.add_argument("--segment", action="store_true",
                   help="also train a small segmenter on each run's CRF pseudo labels (implies --pseudo)")
    p.add_argument("--segment-seeds", type=int, default=None, metavar="N",
                   help="segmenters for the first N seeds of each row only (the slowest step; default all)")
    p.add_argument("--plots", type=Path, default=None, metavar="PREFIX",
                   help="write PREFIX.png (the table as bars) and PREFIX_attention.png (test images' "
                        "attention of each row's first seed)")
    p.add_argument("--rerun", action="store_true",
                   help="train again rows that already have OUT/ROW-sSEED/test_metrics.json")
    p.add_argument("--write", action="store_true",
                   help="put the table in benchmarks/RESULTS.md, replacing the run of the same preset, "
                        "rows and settings (moved to benchmarks/history/)")
    p.add_argument("--true-masks", action="store_true", help=argparse.SUPPRESS)  # --score: row truemasks
    p.add_argument("--score", type=Path, default=None, help=argparse.SUPPRESS)  # one run's columns (a job's 2nd step)
    p.add_argument("--score-seed", type=int, default=0, help=argparse.SUPPRESS)  # --score: the job's seed
    args = p.parse_args(argv)
    if args.score:
        score_run(args.score, args.data, args.device, args.pseudo, args.segment, args.true_masks,
                  args.score_seed)
        return
    if TRUE_MASKS in args.rows and not args.segment:
        raise SystemExit(f"row {TRUE_MASKS} is a segmenter on the true masks: pass --segment")
    args.pseudo = args.pseudo or args.segment
    lock = hold_folder(args.out)  # noqa: F841 - held until the process exits
    columns = COLUMNS + (PSEUDO_COLUMNS if args.pseudo else []) + (SEGMENT_COLUMNS if args.segment else [])
    for row in args.rows:
        ref = ROWS[row][1].get("steps_of")
        if ref and ref not in args.rows:
            raise SystemExit(f"row {row} takes the steps of row {ref}: add {ref} to --rows")

    from attnguide.data import make_scenes

    preset_scenes, preset_train = PRESETS[args.preset] if args.preset else ({}, {})
    scene_opts = {k: (int(v) if v.isdigit() else (float(v) if v.replace(".", "", 1).isdigit() else v))
                  for k, v in parse_sets(args.scenes).items()}
    data = args.data or make_scenes(args.out / "scenes", **{**preset_scenes, **scene_opts})
    common = {**COMMON, **preset_train, **parse_sets(args.set)}

    jobs = [(row, seed) for row in args.rows
            for seed in (args.seeds[:1] if row in args.one_seed else args.seeds)]
    segment_seeds = set(args.seeds[:args.segment_seeds])
    env = dict(os.environ)
    if args.parallel > 1:  # one share of the cores per process, not all to each (on CUDA too)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.parallel))
    t_start = time.time()

    stop = threading.Event()  # set by the first job that fails: queued jobs then do nothing
    trained_events = {job: threading.Event() for job in jobs}  # set when a job's classifier is done

    def steps_of(row: str, seed: int) -> dict:
        """{"steps": N} of the row this row takes its step count from (waits for it), or {}."""
        ref = ROWS[row][1].get("steps_of")
        if not ref:
            return {}
        while not trained_events[ref, seed].wait(5) and not stop.is_set():
            pass
        if stop.is_set():
            raise SystemExit(f"a job failed: {row} seed {seed} does not start")
        return {"steps": run_steps(args.out / f"{ref}-s{seed}")}

    def run_job(row: str, seed: int) -> tuple[dict, bool, bool] | None:
        if stop.is_set():
            return None
        try:
            return train_and_score(row, seed)
        except BaseException:
            stop.set()
            raise
        finally:
            trained_events[row, seed].set()

    def train_and_score(row: str, seed: int) -> tuple[dict, bool, bool]:
        """Train (row, seed) unless an earlier call finished it, then score it in a process of
        its own, so that --parallel jobs keep that many cores busy through every step.
        Returns the metrics, whether it trained and whether it was scored."""
        run = args.out / f"{row}-s{seed}"
        done_file = run / "test_metrics.json"
        trained = False
        t0 = time.time()
        if row == TRUE_MASKS:  # no classifier to train
            run.mkdir(parents=True, exist_ok=True)
            if args.rerun:
                done_file.unlink(missing_ok=True)
        elif args.rerun or not done_file.exists():
            done_file.unlink(missing_ok=True)
            run.mkdir(parents=True, exist_ok=True)
            options = {k: v for k, v in {**common, **ROWS[row][1]}.items() if k != "steps_of"}
            resume = not args.rerun and (run / "last.pt").is_file()  # a killed call's training goes on
            cmd = train_command(data, run, {**options, **steps_of(row, seed)}, seed, args.device, resume)
            with (run / "train.log").open("a" if resume else "w") as log:
                if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
                    raise SystemExit(f"training {row} seed {seed} failed; see {run}/train.log")
            trained = True
        if row != TRUE_MASKS:
            trained_events[row, seed].set()  # rows that take this row's steps may start
        wanted = [k for k, _ in columns if k != "segmenter_miou" or seed in segment_seeds]
        if row == TRUE_MASKS:
            wanted = ["segmenter_miou"] if seed in segment_seeds else []
        have = json.loads(done_file.read_text()) if done_file.exists() else {}
        scored = any(k not in have for k in wanted)
        if scored:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--score", str(run), "--data", str(data),
                   "--device", args.device, "--score-seed", str(seed)] + ["--pseudo"] * args.pseudo + ["--segment"] * (args.segment and seed in segment_seeds) + ["--true-masks"] * (row == TRUE_MASKS)
            with (run / "score.log").open("w") as log:
                if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode != 0:
                    raise SystemExit(f"scoring {row} seed {seed} failed; see {run}/score.log")
            have = json.loads(done_file.read_text())
        if trained or (row == TRUE_MASKS and scored):
            have["seconds"] = time.time() - t0
            write_json(done_file, have)
        return have, trained, scored

    # Longest jobs first (segmenters, then more epochs, then masks-guided rows), so no core idles at
    # the end; a row that takes another row's steps after it (it waits for that row's training).
    order = sorted(jobs, key=lambda j: ("steps_of" in ROWS[j[0]][1], j[1] not in segment_seeds,
                                        -int({**common, **ROWS[j[0]][1]}["epochs"]),
                                        ROWS[j[0]][1].get("guidance") == "none"))
    found: dict[tuple[str, int], dict] = {}
    reused = 0
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:  # threads only wait on processes
        futures = {pool.submit(run_job, row, seed): (row, seed) for row, seed in order}
        for future in as_completed(futures):
            row, seed = futures[future]
            try:
                done = future.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # let running jobs end, start no more
                raise
            if done is None:  # skipped after another job failed
                continue
            metrics, trained, scored = done
            found[row, seed] = metrics
            reused += not trained
            if not (trained or scored):
                continue
            print(f"{row:9s} seed {seed}: " + ", ".join(
                f"{name} {metrics[key] if metrics.get(key) is not None else float('nan'):.3f}"
                for key, name in columns) + f" ({metrics.get('seconds', float('nan')):.0f} s)", flush=True)
    results = {row: [found[r, s] for r, s in jobs if r == row] for row in args.rows}

    lines = ["| row | seeds | " + " | ".join(name for _, name in columns + COST_COLUMNS) + " |",
             "|---|---|" + "---|" * len(columns + COST_COLUMNS)]
    for row in args.rows:
        cells = [summarise([m[key] for m in results[row] if m.get(key) is not None], digits)
                 for cols, digits in ((columns, 3), (COST_COLUMNS, 0)) for key, _ in cols]
        lines.append(f"| {ROWS[row][0]} | {len(results[row])} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    pictures = ""
    if args.plots:
        args.plots.parent.mkdir(parents=True, exist_ok=True)
        bars = plot_table(results, columns, args.plots.with_suffix(".png"))
        from attnguide.viz.grid import attention_grid

        first = [r for r in args.rows if (args.out / f"{r}-s{args.seeds[0]}" / "last.pt").exists()]
        grid = attention_grid([args.out / f"{r}-s{args.seeds[0]}" / "last.pt" for r in first], data,
                              split="test", images=4, names=first, max_classes=1,
                              out_png=args.plots.parent / f"{args.plots.name}_attention.png",
                              title="unbiased test images: attention of each row, seed "
                                    f"{args.seeds[0]}")
        print(f"wrote {bars} and {grid}")
        rel = RESULTS.parent
        pictures = "".join(f"\n![{what}]({p.resolve().relative_to(rel.resolve())})\n"
                           for what, p in (("table", bars), ("attention", grid))
                           if p.resolve().is_relative_to(rel.resolve()))
    if args.write:
        cmd = "python benchmarks/scenes/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        where = platform.node() if args.device == "cpu" else args.device
        settings = ", ".join(f"{k}={v}" for k, v in common.items())
        text = (f"### Scenes: guided attention against the shortcut — {dt.date.today()} — {where}\n\n"
                f"`{cmd}`\n\nSettings: {settings}; seeds {args.seeds} (mean ± std over the seeds a "
                f"row has{'; segmenters for seeds ' + str(sorted(segment_seeds)) if args.segment else ''}); test split is "
                f"unbiased; last checkpoint; {time.time() - t_start:.0f} s for this call"
                f"{f' ({reused} runs reused from earlier calls)' if reused else ''}.\n\n{table}\n{pictures}")
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/results_page.py
        from results_page import record

        preset = args.preset or "default"
        key = (f"scenes/run.py {preset}: {' '.join(args.rows)}"
               + "".join(f" --set {s}" for s in sorted(args.set))
               + "".join(f" --scenes {s}" for s in sorted(args.scenes)))
        section, history = {"demo": ("Scenes at the demo's scale: from attention to segmentation",
                                     "scenes-demo.md"),
                            "cue": ("Cue decoy: other runs", "scenes-cue.md"),
                            "default": ("Scenes at benchmark scale (96 px, 2,000 images): from attention "
                                        "to segmentation", "scenes.md")}.get(
                                preset, ("Scenes: other runs", "scenes.md"))
        record(key, text, section=section, history=history, results=RESULTS)


if __name__ == "__main__":
    main()
