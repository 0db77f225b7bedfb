"""Helpers of the integration equality tests (a module with its own name: every test folder
has a conftest.py): the plain engine's run, the largest weight difference, and a 2-process
torchrun of a script beside the tests on the DDP tests' data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from attnguide.data import make_scenes
from attnguide.engine import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]


def engine_run(options: dict, out: Path) -> Trainer:
    """The plain attnguide engine trained on ``options`` into ``out``."""
    trainer = Trainer(TrainConfig(**options, out=str(out)))
    trainer.fit()
    return trainer


def max_diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def ddp_options(tmp_path: Path) -> dict:
    """A GroupNorm model on single-label scenes, as the engine's own DDP test: per-process
    batch statistics and the mean over pairs then agree with one process."""
    data = make_scenes(tmp_path / "single", n_train=16, n_val=4, n_test=4, image_size=48,
                       min_objects=1, max_objects=1, seed=1)
    return dict(data=str(data), model="test_efficientnet_gn", image_size=48, batch_size=8, epochs=1,
                warmup_epochs=0, guidance="self", val_split="", seed=1, lr=0.02, device="cpu",
                snapshots=0, quiet=True, checkpoint_every=0)


def torchrun_two(script: str, options: dict, out: Path, cwd: Path) -> dict:
    """Run ``script`` (a file beside these tests, given the options as JSON and ``out``) in 2
    processes under torchrun; return what it saved to ``out``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONWARNINGS="ignore")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(Path(__file__).with_name(script)), json.dumps(options), str(out)],
                         env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out, weights_only=True)
