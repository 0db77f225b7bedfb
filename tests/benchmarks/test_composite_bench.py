"""benchmarks/composite/run.py on a tiny composite of generated cut-outs: the equal-steps row
takes the guided row's steps, the counterfactual head stage writes a scored run, and the
table has a row per run with its steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from attnguide.data.composite import make_composite

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "benchmarks" / "composite" / "run.py"
TINY = ["--set", "model=test_resnet", "--set", "image_size=32", "--set", "epochs=2", "--set", "batch_size=8"]


def _composite(root: Path) -> Path:
    objects, backgrounds = root / "objects", root / "backgrounds"
    yy, xx = np.mgrid[:24, :24]
    for name, colour in {"red": (255, 0, 0), "blue": (0, 0, 255)}.items():
        (objects / name).mkdir(parents=True)
        for i in range(3):
            rgba = np.zeros((24, 24, 4), np.uint8)
            rgba[..., :3] = colour
            rgba[..., 3] = np.where((yy - 12) ** 2 + (xx - 12) ** 2 <= (6 + 2 * i) ** 2, 255, 0)
            Image.fromarray(rgba, "RGBA").save(objects / name / f"{name}{i}.png")
    for name, grey in {"dark": 40, "light": 210}.items():
        (backgrounds / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 50, 3), grey + 5 * i, np.uint8)).save(backgrounds / name / f"{i}.jpg")
    return make_composite(root / "data", objects=objects, backgrounds=backgrounds, n_train=40, n_val=8,
                          n_test=16, image_size=32, bias=0.95, seed=1)


def _table(stdout: str) -> dict[str, list[str]]:
    rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_composite_bench_equal_steps_and_counterfactual_head(tmp_path):
    data, out = _composite(tmp_path), tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(DRIVER), "--data", str(data), "--out", str(out), *TINY,
                           "--rows", "baseline", "baseline_steps", "auto10", "--heads", "auto10"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = {run.name: json.loads((run / "test_metrics.json").read_text()) for run in out.iterdir()}
    assert sorted(metrics) == ["auto10+cf-s0", "auto10-s0", "baseline-s0", "baseline_steps-s0"]
    # equal compute: the unguided row was given the guided row's optimizer steps, which are
    # more than an unguided epoch count gives (the labelled half of each batch adds steps)
    assert metrics["baseline_steps-s0"]["steps"] == metrics["auto10-s0"]["steps"]
    assert metrics["auto10-s0"]["steps"] > metrics["baseline-s0"]["steps"]
    head = metrics["auto10+cf-s0"]
    assert head["steps"] == metrics["auto10-s0"]["steps"] and head["head_steps"] > 0
    assert head["train_seconds"] > metrics["auto10-s0"]["train_seconds"]  # the head's seconds are added
    for m in metrics.values():
        assert 0 <= m["test_accuracy"] <= 1 and 0 <= m["test_worst_group_accuracy"] <= m["test_accuracy"] + 1e-6
    table = _table(proc.stdout)
    assert len(table) == 4
    steps = {name: cells[-3] for name, cells in table.items()}
    assert steps["unguided, the defaults' steps"] == str(metrics["auto10-s0"]["steps"])
