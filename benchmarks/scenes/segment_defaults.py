"""Do `attnguide segment`'s defaults learn at small scale? Old against new, 3 seeds.

On the demo's scenes (64 px, 320 training images): a guided classifier (`--guidance auto`,
10 % masks; resnet10t, 6 epochs) gives CRF pseudo labels of the training split; then a U-Net
(tu-resnet10t encoder, from scratch, 64 px crops, batch 16, 6 epochs = 120 iterations) learns
from the true masks and from those pseudo labels, with each optimiser setting and seed, and
is scored on the unbiased test split. Settings:

- ``new``: segment's defaults (AdamW, lr 1e-3, weight decay 1e-2, 5 % warm-up, poly)
- ``old_defaults``: segment's defaults before issue 15 (SGD, lr 1e-3, last layer at 10x,
  momentum 0.9, weight decay 5e-4, poly, no warm-up)
- ``old_demo``: the old demo's setting (the same SGD at lr 0.05)
- ``balanced`` / ``smoothing``: the defaults with ``--class-weights balanced`` or
  ``--label-smoothing 0.1``
- ``light``: the defaults with a U-Net decoder a quarter as wide (``--decoder-channels
  64,32,16,8,4``, 2.5x fewer FLOPs an iteration at 64 px), tried for the demo's segmenters
- ``deeplab``: segment's default architecture (DeepLabv3+) instead of the U-Net, the same
  encoder and settings: what the demo's segmenters use since 2026-12-07

    OMP_NUM_THREADS=1 python benchmarks/scenes/segment_defaults.py --out runs/segdefaults \\
        --sets new old_defaults old_demo --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SETTINGS = {
    "new": {},
    "old_defaults": {"optimizer": "sgd", "lr": 1e-3, "head_lr_mult": 10.0, "weight_decay": 5e-4,
                     "warmup_iterations": 0},
    "old_demo": {"optimizer": "sgd", "lr": 0.05, "head_lr_mult": 10.0, "weight_decay": 5e-4,
                 "warmup_iterations": 0},
    "balanced": {"class_weights": "balanced"},
    "smoothing": {"label_smoothing": 0.1},
    "light": {"decoder_channels": "64,32,16,8,4"},  # a quarter of the decoder widths
    "deeplab": {"arch": "deeplabv3plus"},  # segment's default arch
}
SEGMENTER = {"arch": "unet", "encoder": "tu-resnet10t", "crop_size": 64, "epochs": 6, "batch_size": 16,
             "scale_range": "0.9,1.1"}
CLASSIFIER = {"model": "resnet10t", "image_size": 64, "epochs": 6, "warmup_epochs": 2, "batch_size": 32,
              "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "schedule": "cosine",
              "snapshots": 0, "guidance": "auto", "pixel_labels": "10%"}


def scenes(out: Path) -> Path:
    from attnguide.data import make_scenes

    return make_scenes(out / "scenes", n_train=320, n_val=64, n_test=128, image_size=64, seed=0)


def pseudo_labels(out: Path) -> tuple[Path, Path]:
    """The scenes and the guided classifier's CRF pseudo labels of their training split."""
    from attnguide.engine.config import TrainConfig
    from attnguide.tasks.pseudo_labels import PseudoLabelConfig, pseudo_label
    from attnguide.tasks.training import train

    data = scenes(out)
    run = out / "classifier"
    if not (run / "last.pt").exists():
        train(TrainConfig(data=str(data), out=str(run), quiet=True, overwrite=True, **CLASSIFIER))
    labels = out / "pseudo"
    pseudo_label(PseudoLabelConfig(run=str(run / "last.pt"), data=str(data), split="train", out=str(labels),
                                   scales=(1.0, 1.5), crf=True, resume=True, device="cpu", quiet=True))
    return data, labels / "crf"


def one(data: Path, labels: str, setting: str, seed: int, out: Path) -> dict:
    from attnguide.tasks.evaluate import evaluate_predictions
    from attnguide.tasks.prediction import predict
    from attnguide.tasks.segmentation import SegmentConfig, segment

    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    t = time.perf_counter()
    segment(SegmentConfig(data=str(data), labels=labels, out=str(out), val_split="", device="cpu",
                          quiet=True, overwrite=True, seed=seed, **{**SEGMENTER, **SETTINGS[setting]}))
    seconds = time.perf_counter() - t
    predict(out / "last.pt", out / "test_predictions", data=str(data), split="test", device="cpu", quiet=True)
    miou = evaluate_predictions(out / "test_predictions", data=str(data), split="test").miou
    steps = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    result = {"miou": miou, "steps": steps, "seconds": seconds}
    done.write_text(json.dumps(result))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/segdefaults"))
    p.add_argument("--sets", nargs="+", default=["new", "old_defaults", "old_demo"], choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--labels", nargs="+", default=["gt", "pseudo"], choices=["gt", "pseudo"])
    args = p.parse_args()
    data, pseudo = pseudo_labels(args.out) if "pseudo" in args.labels else (scenes(args.out), None)
    print("| setting | labels | seeds | test mIoU (mean ± std) | per seed | iterations | s per run |")
    print("|---|---|---|---|---|---|---|")
    for setting in args.sets:
        for which in args.labels:
            labels = "gt" if which == "gt" else str(pseudo)
            res = [one(data, labels, setting, s, args.out / f"{setting}-{which}-s{s}") for s in args.seeds]
            m = [r["miou"] for r in res]
            spread = f" ± {statistics.stdev(m):.3f}" if len(m) > 1 else ""
            print(f"| {setting} | {'true masks' if which == 'gt' else 'CRF pseudo labels'} | {len(m)} "
                  f"| {statistics.mean(m):.3f}{spread} | {' / '.join(f'{v:.3f}' for v in m)} "
                  f"| {res[0]['steps']} | {statistics.mean(r['seconds'] for r in res):.0f} |", flush=True)


if __name__ == "__main__":
    main()
