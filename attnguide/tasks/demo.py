"""``attnguide demo``: the whole method on the built-in biased scenes, in minutes on a CPU.

It runs the library's defaults (``--guidance auto``), as a user gets them:

1. ``make_scenes``: multi-label scenes whose background (water) is tied to the
   class "boat" in train, and independent of it in val and test.
2. Two classifiers with the same compute: the defaults (``--guidance auto``) with
   pixel masks for 10% of the training images, then an unguided one (``--guidance
   none``) given the guided run's optimizer steps (``--steps``): the labelled images
   recur in every batch, so a guided epoch has more steps than an unguided one, and a
   baseline trained for the same epochs would have had less compute.
3. Each one's attention becomes pseudo labels for the training split (with and
   without dense CRF), scored against the true masks.
4. Three segmenters with ``segment``'s defaults: on the unguided run's pseudo labels,
   on the guided run's, and on the true masks (the upper bound); all scored on test.
5. ``OUT/report.md`` opens with a three-line verdict, then the table, the wall time,
   the seed, and the pictures when matplotlib is there; ``OUT/results.json`` holds one
   entry per row (``unguided``, ``guided``, ``true masks``).

Each stage prints its progress and an estimate of the time left. Each step skips
work whose results exist, so a killed demo continues where it stopped; ``--fresh``
starts over.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from attnguide.data import make_scenes, open_dataset
from attnguide.engine.config import TrainConfig
from attnguide.engine.trainer import evaluate
from attnguide.errors import AttnGuideError
from attnguide.models.trained import load_model
from attnguide.tasks.evaluate import decision_threshold, evaluate_predictions
from attnguide.tasks.prediction import predict
from attnguide.tasks.pseudo_labels import PseudoLabelConfig, pseudo_label
from attnguide.tasks.segmentation import SegmentConfig, segment
from attnguide.tasks.training import train
from attnguide.viz import attention_grid, plot_curves
from attnguide.viz.common import require_matplotlib

# Settings sized for 2 CPU cores (measured: benchmarks/RESULTS.md, "The demo"); --scale
# multiplies the data set and the epochs. Everything else is the library's defaults.
SCENES = {"n_train": 192, "n_val": 64, "n_test": 128, "image_size": 64}
CLASSIFIER = {"model": "resnet10t", "image_size": 64, "epochs": 6, "warmup_epochs": 2,
              "batch_size": 32, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4,
              "schedule": "cosine", "snapshots": 0}
RUNS = {"guided": {"guidance": "auto", "pixel_labels": "10%"},
        "unguided": {"guidance": "none"}}  # in this order: unguided gets guided's step count
TRUE_MASKS = "true masks"
# segment's defaults (DeepLabv3+, AdamW, warm-up, poly) from scratch; only the encoder and the
# size are the demo's. Measured against the U-Net it replaced (benchmarks/RESULTS.md, "Segmenter
# defaults" and "The demo"): learns as much or more, with less spread over seeds, in less time.
SEGMENTER = {"encoder": "tu-resnet10t", "crop_size": 64, "epochs": 4, "batch_size": 16,
             "scale_range": "0.9,1.1"}
SEGMENTER_NAME = f"{SegmentConfig.arch}/{SEGMENTER['encoder']}"
PSEUDO_SCALES = (1.0,)  # one scale: 1.0 and 1.5 gave the same labels to 0.01 mIoU, in twice the time
# Each stage's seconds in a measured demo (2026-12-07, an idle 2-core machine, 2 threads,
# benchmarks/RESULTS.md, "The demo"): the estimate of the time left scales them by how fast
# this machine ran the stages it has done.
STAGES = {"scenes": 2, "classifier guided": 100, "classifier unguided": 48,
          "pseudo labels unguided": 6, "pseudo labels guided": 6,
          "segmenter on unguided pseudo labels": 30, "segmenter on guided pseudo labels": 27,
          "segmenter on the true masks": 28, "report": 4}
PRIOR_S = 60.0
KEYS = ("test_map", "test_cam_miou", "pseudo_miou_crf", "segmenter_miou")


@dataclass
class DemoResult:
    """What :func:`run_demo` did: its folder, the report file, one row of numbers per run, seconds."""

    out: Path
    report: Path
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


class Progress:
    """One line per stage: its number, name and time, and an estimate of the time left
    (the stages' measured seconds, scaled by how fast this machine did the ones it ran)."""

    def __init__(self, say) -> None:
        self.say, self.names = say, list(STAGES)
        self.ran_expected = self.ran_seconds = 0.0
        self.t = time.perf_counter()

    def start(self, name: str, detail: str = "") -> None:
        i = self.names.index(name)
        self.say(f"[bold]{i + 1}/{len(self.names)}[/bold] {name}{': ' + detail if detail else ''}")
        self.t = time.perf_counter()

    def done(self, name: str, skipped: bool = False) -> None:
        seconds = time.perf_counter() - self.t
        if not skipped:
            self.ran_expected += STAGES[name]
            self.ran_seconds += seconds
        # this machine's speed against the measured demo, starting from 1 (a prior of PRIOR_S
        # seconds), so that one short stage does not swing the estimate
        rate = (self.ran_seconds + PRIOR_S) / (self.ran_expected + PRIOR_S)
        later = self.names[self.names.index(name) + 1:]
        left = rate * sum(STAGES[n] for n in later)
        self.say(f"    {'found done' if skipped else f'done in {seconds:.0f} s'}; "
                 f"about {_duration(left)} left" if later else f"    done in {seconds:.0f} s")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _epochs(scale: float) -> int:
    return max(2, round(CLASSIFIER["epochs"] * scale))


def _last_record(run: Path) -> dict[str, Any]:
    """The last line of the run's metrics.jsonl ({} when there is none)."""
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return json.loads(lines[-1]) if lines else {}


def _trained(run: Path, epochs: int, steps: int | None) -> bool:
    last = _last_record(run) if (run / "last.pt").exists() else {}
    if steps is not None:
        return last.get("step", 0) >= steps
    return last.get("epoch", 0) >= epochs


def _train(name: str, data: Path, out: Path, scale: float, seed: int, quiet: bool,
           steps: int | None = None) -> tuple[Path, bool]:
    """The run folder of classifier ``name`` (``steps``: its optimizer-step budget) and
    whether it was found done."""
    run = out / "runs" / name
    if _trained(run, _epochs(scale), steps):
        return run, True
    options = {**CLASSIFIER, **RUNS[name], "epochs": _epochs(scale), "steps": steps,
               "data": str(data), "out": str(run), "quiet": quiet, "overwrite": True, "seed": seed}
    known = set(TrainConfig.__dataclass_fields__)
    train(TrainConfig(**{k: v for k, v in options.items() if k in known}))
    return run, False


def _test_metrics(run: Path, data: Path) -> dict[str, Any]:
    """The engine's test metrics (at 0.5), and exact match at the decision threshold the run
    chose on val (``test_accuracy_val_threshold``, with ``decision_threshold``)."""
    trained = load_model(run / "last.pt")
    ds = open_dataset(data, split="test", image_size=trained.image_size, train=False)
    metrics = evaluate(trained.guide(), ds, multilabel=trained.multilabel, device=torch.device("cpu"))
    out = {k.replace("val_", "test_"): v for k, v in metrics.items()}
    if trained.multilabel:
        chosen = decision_threshold("auto", trained.decision_threshold)
        out["decision_threshold"] = chosen
        out["test_accuracy_val_threshold"] = out["test_accuracy"] if chosen == 0.5 else evaluate(
            trained.guide(), ds, multilabel=True, device=torch.device("cpu"), groups=None,
            threshold=chosen)["val_accuracy"]
    return out


def _pseudo(run: Path, data: Path, out: Path, crf: bool, quiet: bool):
    cfg = PseudoLabelConfig(run=str(run / "last.pt"), data=str(data), split="train", out=str(out),
                            scales=PSEUDO_SCALES, crf=crf, resume=True, device="cpu", quiet=quiet,
                            batch_size=16)  # small images: half the CAM time
    return pseudo_label(cfg)


def _segment(data: Path, labels: str, out: Path, scale: float, seed: int, quiet: bool) -> tuple[float, bool]:
    """Test mIoU of a segmenter trained on ``labels`` (a folder or "gt"), and whether it was found done."""
    score = out / "test_miou.json"
    if score.exists():
        return json.loads(score.read_text())["miou"], True
    epochs = max(2, round(SEGMENTER["epochs"] * scale))
    resume = str(out) if (out / "last.pt").exists() else None  # a killed run continues
    segment(SegmentConfig(data=str(data), labels=labels, out=str(out), val_split="", device="cpu",
                          quiet=quiet, seed=seed, resume=resume, overwrite=resume is None,
                          **{**SEGMENTER, "epochs": epochs}))
    pred = out / "test_predictions"
    predict(out / "last.pt", pred, data=str(data), split="test", device="cpu", quiet=True)
    miou = evaluate_predictions(pred, data=str(data), split="test").miou
    score.write_text(json.dumps({"miou": miou}))
    return miou, False


def _pictures(out: Path, data: Path, runs: dict[str, Path]) -> list[tuple[str, str]]:
    """(caption, relative path) of the report's pictures; none without matplotlib."""
    try:
        require_matplotlib()
    except AttnGuideError:
        return []
    pictures = []
    try:
        grid = out / "attention.png"
        attention_grid([runs["unguided"] / "last.pt", runs["guided"] / "last.pt"], data,
                       split="test", indices=list(range(6)), out_png=grid)
        pictures.append(("Attention per class on unbiased test images: unguided (left) and "
                         "guided, the defaults (right), with the erased image the attention-mining "
                         "loss sees.", grid.name))
        curves = out / "curves.png"
        plot_curves([runs["unguided"], runs["guided"]], curves)
        pictures.append(("Losses and validation metrics per epoch.", curves.name))
    except Exception as e:  # pictures must never cost the numbers
        pictures.append((f"(pictures skipped: {type(e).__name__}: {e})", ""))
    return pictures


def run_demo(out: str | Path = "demo", *, scale: float = 1.0, crf: bool = True, fresh: bool = False,
             seed: int = 0, quiet: bool = False, console=None) -> DemoResult:
    """Run the demo into ``out`` and write ``out/report.md`` and ``out/results.json``; see
    the module doc. ``seed`` seeds the scenes, the classifiers and the segmenters; ``quiet``
    silences the steps' progress bars and tables (the stage lines go to ``console``)."""
    if not scale > 0:
        raise AttnGuideError(f"--scale must be > 0, got {scale}")
    console = console or Console(stderr=True)
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    progress = Progress(console.print)  # the stage lines; quiet silences the steps' own output
    n = {k: (max(8, round(v * scale)) if k.startswith("n_") else v) for k, v in SCENES.items()}
    progress.start("scenes", f"{n['n_train']} train, {n['n_val']} val, {n['n_test']} test images "
                   f"of {n['image_size']} px, seed {seed}")
    found = (out / "scenes" / "test.csv").exists()
    data = make_scenes(out / "scenes", **n, seed=seed)
    progress.done("scenes", skipped=found)

    rows: dict[str, dict[str, Any]] = {"unguided": {}, "guided": {}}
    runs = {}
    steps = None  # the unguided run's budget: the guided run's optimizer steps
    for name, options in RUNS.items():
        stage = f"classifier {name}"
        budget = f"{steps} steps (the guided run's)" if steps else f"{_epochs(scale)} epochs"
        progress.start(stage, f"{CLASSIFIER['model']}, --guidance {options['guidance']}"
                       + (f", {options['pixel_labels']} masks"
                          if "pixel_labels" in options else "") + f", {budget}")
        runs[name], skipped = _train(name, data, out, scale, seed, quiet, steps=steps)
        history = [json.loads(line) for line in (runs[name] / "metrics.jsonl").read_text().splitlines()]
        rows[name] = {**_test_metrics(runs[name], data), "steps": history[-1]["step"],
                      "train_seconds": sum(r.get("time", 0.0) for r in history)}
        steps = history[-1]["step"]
        progress.done(stage, skipped)

    for name in ("unguided", "guided"):  # the order of STAGES
        run = runs[name]
        stage = f"pseudo labels {name}"
        progress.start(stage, "CAMs of the training images" + (" + dense CRF" if crf else ""))
        res = _pseudo(run, data, out / "pseudo" / name, crf, quiet)
        rows[name]["pseudo_miou"] = res.metrics.miou if res.metrics else None
        rows[name]["pseudo_miou_crf"] = res.crf_metrics.miou if res.crf_metrics else None
        progress.done(stage, skipped=res.written == 0)

    rows[TRUE_MASKS] = {}
    sources = {"unguided": ("segmenter on unguided pseudo labels", "unguided"),
               "guided": ("segmenter on guided pseudo labels", "guided"),
               TRUE_MASKS: ("segmenter on the true masks", "gt")}
    for row, (stage, labels) in sources.items():
        progress.start(stage, f"{SEGMENTER_NAME} from scratch, segment's defaults")
        folder = "gt" if labels == "gt" else str(out / "pseudo" / labels / ("crf" if crf else ""))
        miou, skipped = _segment(data, folder, out / "runs" / f"seg_{labels}", scale, seed, quiet)
        rows[row]["segmenter_miou"] = miou
        progress.done(stage, skipped)

    progress.start("report")
    pictures = _pictures(out, data, runs)
    seconds = time.perf_counter() - start
    for row in rows.values():
        for key in KEYS:
            row.setdefault(key, None)
    report = out / "report.md"
    report.write_text(_report(rows, pictures, seconds, crf, seed, scale))
    (out / "results.json").write_text(json.dumps(rows, indent=2, default=float))
    progress.done("report")
    return DemoResult(out, report, rows, seconds)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _change(new, old) -> str:
    if new is None or old is None:
        return "—"
    return f"{new:.3f} against {old:.3f} ({new - old:+.3f})"


def verdict(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The report's three opening lines: what the guided model did better and by how much,
    what its segmenter reached, and the upper bound."""
    g, u, t = rows["guided"], rows["unguided"], rows[TRUE_MASKS]
    better = [label for key, label in (("test_map", "test mAP"),
                                       ("test_worst_group_accuracy", "worst-group accuracy"),
                                       ("test_cam_miou", "CAM mIoU"),
                                       ("pseudo_miou_crf", "CRF pseudo-label mIoU"),
                                       ("segmenter_miou", "segmenter mIoU"))
              if g.get(key) is not None and u.get(key) is not None and g[key] > u[key]]
    share = (g["segmenter_miou"] / t["segmenter_miou"]
             if g.get("segmenter_miou") is not None and t.get("segmenter_miou") else None)
    first = (f"**Guided (the defaults, 10 % masks) beats unguided at equal steps in {', '.join(better)}**"
             if better else "**Guided (the defaults, 10 % masks) beats unguided at equal steps in nothing here**")
    return [
        f"{first}: test mAP {_change(g.get('test_map'), u.get('test_map'))}, worst-group accuracy "
        f"(its worst (class, background) group) "
        f"{_change(g.get('test_worst_group_accuracy'), u.get('test_worst_group_accuracy'))}, "
        f"CAM mIoU {_change(g.get('test_cam_miou'), u.get('test_cam_miou'))}.",
        f"Its CRF pseudo labels score {_change(g.get('pseudo_miou_crf'), u.get('pseudo_miou_crf'))} "
        f"mIoU, and the segmenter trained on them {_change(g.get('segmenter_miou'), u.get('segmenter_miou'))} "
        "test mIoU.",
        f"Upper bound: the same segmenter on the true masks scores {_fmt(t.get('segmenter_miou'))} "
        "test mIoU" + (f"; the guided pseudo labels reach {100 * share:.0f} % of it." if share is not None
                       else "."),
    ]


def _threshold_cell(row: dict[str, Any]) -> str:
    """Exact match at the decision threshold the run chose on val, and that threshold."""
    value = row.get("test_accuracy_val_threshold")
    return "—" if value is None else f"{_fmt(value)} ({row['decision_threshold']:.2f})"


def _report(rows: dict[str, dict[str, Any]], pictures, seconds: float, crf: bool, seed: int,
            scale: float) -> str:
    names = {"unguided": "unguided classifier (`--guidance none`, the guided run's steps)",
             "guided": "guided: the defaults (`--guidance auto`), 10 % pixel masks",
             TRUE_MASKS: "true masks (upper bound)"}
    lines = ["# attnguide demo: guided attention on biased scenes", "", *verdict(rows), "",
             f"Made by `attnguide demo` in {seconds / 60:.1f} minutes (wall time, seed {seed}"
             + (f", --scale {scale:g}" if scale != 1 else "") + ").", "",
             "Scenes where water goes with boats in training but not at test. Two classifiers "
             f"({CLASSIFIER['model']}, {CLASSIFIER['image_size']} px) trained alike with the library's "
             f"defaults: one with `--guidance auto` for {_epochs(scale)} epochs (what a user gets: "
             "GAIN_ext with the background swap on the masked images, which recur in every batch), "
             "and one unguided given the same number of optimizer steps (`--steps`), so that the "
             "comparison is at equal compute (the table gives the steps and the training seconds); "
             "their attention turned "
             "into pseudo labels" + (" (with dense CRF)" if crf else "") + ", and three segmenters "
             f"({SEGMENTER_NAME} from scratch, `segment`'s defaults) trained "
             "on the unguided labels, the guided ones and the true masks. All scores are on splits "
             "whose backgrounds are independent of the classes (pseudo labels: the training images "
             "against their true masks). Exact match (every class right) is given at probability "
             "0.5 and at the decision threshold each classifier chose on the val split (in "
             "brackets; what `attnguide evaluate --run` applies): a classifier can rank well and "
             "still predict too few classes at 0.5.",
             "",
             "| | steps | training s | test mAP | exact match at 0.5 | at val's threshold "
             "| worst-group accuracy "
             "| CAM mIoU (test) | attention inside objects | pseudo-label mIoU | with CRF "
             "| segmenter mIoU (test) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in rows.items():
        steps = row.get("steps")
        train_s = row.get("train_seconds")
        lines.append(
            f"| {names[key]} | {'—' if steps is None else steps} "
            f"| {'—' if train_s is None else f'{train_s:.0f}'} "
            f"| {_fmt(row.get('test_map'))} | {_fmt(row.get('test_accuracy'))} "
            f"| {_threshold_cell(row)} "
            f"| {_fmt(row.get('test_worst_group_accuracy'))} | {_fmt(row.get('test_cam_miou'))} | {_fmt(row.get('test_attention_inside'))} "
            f"| {_fmt(row.get('pseudo_miou'))} | {_fmt(row.get('pseudo_miou_crf'))} "
            f"| {_fmt(row.get('segmenter_miou'))} |")
    lines += ["", "`attnguide demo --scale 4` trains longer on more images; `--seed` changes the "
              "scenes and every initialisation.", ""]
    for caption, path in pictures:
        lines += [caption, "", f"![]({path})" if path else "", ""]
    return "\n".join(lines)
