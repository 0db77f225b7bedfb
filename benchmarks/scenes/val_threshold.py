"""Multi-label exact match at 0.5 against a decision threshold chosen on val, per scenes row.

Exact match (every class right) at probability 0.5 punishes a model whose scores sit lower
without ranking worse: on the demo's scenes the guided classifiers predict fewer positives
than there are (issue 16). This script reloads the runs of a `run.py` call (`--out`), picks
for each run the threshold in 0.05 .. 0.95 that maximises exact match on the unbiased val
split (the engine's `choose_threshold`, what `attnguide evaluate --run` applies from the
run's last validation; ties go to the one nearest 0.5), and prints the test exact match at 0.5 and at that
threshold, the worst-group accuracy (per (image, class) pair, the engine's) at both, and the
predicted and true positives per test image:

    python benchmarks/scenes/val_threshold.py --out runs/demo4 \\
        --rows baseline_steps auto10 oracle_steps auto10_unbiased --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from attnguide.core.guide import extract_logits
from attnguide.data import open_dataset
from attnguide.data.groups import dataset_groups
from attnguide.engine.metrics import accuracy, choose_threshold
from attnguide.engine.trainer import group_metrics
from attnguide.models.trained import load_model


def scores(model: torch.nn.Module, data: Path, split: str, image_size: int):
    """Logits and 0/1 labels of every image of ``split`` (in its order), and the split."""
    ds = open_dataset(data, split=split, image_size=image_size, train=False)
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([item["image"] for item in items])
    labels = torch.stack([torch.as_tensor(item["labels"]) for item in items]).float()
    with torch.no_grad():
        return extract_logits(model(images)).float(), labels, ds


def exact(logits: torch.Tensor, labels: torch.Tensor, threshold: float) -> float:
    return accuracy(logits, labels, multilabel=True, threshold=threshold)


def one(run: Path, data: Path) -> dict:
    trained = load_model(run / "last.pt")
    if not trained.multilabel:
        raise SystemExit(f"{run}: a single-label run has no decision threshold (argmax)")
    model = trained.guide().model.eval()
    val = scores(model, data, "val", trained.image_size)[:2]
    *test, ds = scores(model, data, "test", trained.image_size)
    best = choose_threshold(*val)
    groups = dataset_groups(ds)

    def worst(threshold: float) -> float:
        return group_metrics(test[0], groups, ds.num_classes, True, threshold=threshold)["val_worst_group_accuracy"]

    return {"at_half": exact(*test, 0.5), "threshold": best, "at_val": exact(*test, best),
            "worst_half": worst(0.5), "worst_val": worst(best),
            "predicted": float((test[0].sigmoid() >= 0.5).sum(dim=1).float().mean()),
            "true": float(test[1].sum(dim=1).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="a run.py --out folder (its runs and scenes/)")
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data", type=Path, default=None, help="the scenes (default OUT/scenes)")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = args.data or args.out / "scenes"

    def mean_sd(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")

    print("| row | seeds | exact match at 0.5 | threshold chosen on val | exact match at it "
          "| worst group at 0.5 | at val's threshold | positives per test image at 0.5 (true) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in args.rows:
        res = [one(args.out / f"{row}-s{seed}", data) for seed in args.seeds]
        chosen = " / ".join(f"{r['threshold']:.2f}" for r in res)
        print(f"| {row} | {len(res)} | {mean_sd([r['at_half'] for r in res])} "
              f"| {chosen} | {mean_sd([r['at_val'] for r in res])} "
              f"| {mean_sd([r['worst_half'] for r in res])} | {mean_sd([r['worst_val'] for r in res])} "
              f"| {statistics.mean(r['predicted'] for r in res):.2f} ({res[0]['true']:.2f}) |", flush=True)


if __name__ == "__main__":
    main()
