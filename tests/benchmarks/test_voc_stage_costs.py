"""benchmarks/voc2012/stage_costs.py --quick: every stage of the VOC recipe is timed and
projected to hours for every row of run.py, and the hours follow from the stage costs."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "voc2012" / "stage_costs.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_stage_costs_quick_projects_every_row():
    if importlib.util.find_spec("pydensecrf") is None:
        pytest.skip("the stage costs time the CRFs: they need pydensecrf")
    proc = subprocess.run([sys.executable, "-W", "ignore", str(SCRIPT), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in proc.stdout.splitlines()
            if line.startswith("| ")]
    stages = {r[0]: float(r[1]) for r in rows if len(r) == 2 and r[0] != "stage"}
    assert len(stages) == 13 and all(v > 0 for v in stages.values())
    run = _load(ROOT / "benchmarks" / "voc2012" / "run.py", "voc_run")
    hours = {r[0]: r[1:] for r in rows if len(r) == 7 and r[0] != "row"}
    assert set(hours) == set(run.ROWS) | {"all rows"}
    for row, cells in hours.items():
        values = [float(c.strip("*")) for c in cells]
        assert math.isclose(sum(values[:-1]), values[-1], abs_tol=0.06 * len(values)), row


def test_projection_follows_the_recipe():
    costs = _load(SCRIPT, "stage_costs")
    run = costs._recipe()
    train = run.load_yaml("train-vgg16.yaml")
    seg = run.load_yaml("segment-largefov.yaml")["common"]
    unit = {k: 1.0 for k in ("plain b1", "gain b1", "ext b1", "plain b16", "gain b16", "ext b16",
                             "cam eval", "pseudo", "pseudo crf", "seg pseudo", "seg sec", "seg eval",
                             "seg eval crf")}
    unit["gain b1"], unit["ext b1"] = 2.0, 3.0

    class Args:
        workers, batched = 8, 16

    rows = dict(costs.project(unit, run, train, seg, Args))
    n, epochs, warm = costs.TRAIN_AUG, int(train["epochs"]), int(train["warmup_epochs"])
    assert math.isclose(rows["sec-baseline"]["train"] * 3600, epochs * n)  # plain steps throughout
    assert math.isclose(rows["gain"]["train"] * 3600, warm * n + (epochs - warm) * n * 2.0)
    masked = 200 / n  # ext200: its masked images take GAIN_ext steps
    assert math.isclose(rows["ext200"]["train"] * 3600,
                        warm * n + (epochs - warm) * n * ((1 - masked) * 2.0 + masked * 3.0))
    assert math.isclose(rows["gain-batched"]["train"] * 3600, epochs * math.ceil(n / 16))
    assert math.isclose(rows["gain"]["pseudo-label"] * 3600, n * (1 + 1 / 8))
