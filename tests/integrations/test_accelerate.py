"""attnguide.integrations.accelerate.fit on a real Accelerator against the engine: one CPU
process (the same weights after the same steps, fp32 and bf16 autocast, and the engine's
validation numbers), and 2 gloo processes started by torchrun (weights to float rounding)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip(
    "accelerate", reason="Hugging Face Accelerate is not installed: pip install -e '.[dev]' (or '.[accelerate]')")

from accelerate.state import AcceleratorState  # noqa: E402
from equality_helpers import ddp_options, engine_run, max_diff, torchrun_two  # noqa: E402

from attnguide.data import make_scenes  # noqa: E402
from attnguide.engine import TrainConfig, Trainer  # noqa: E402
from attnguide.integrations.accelerate import fit  # noqa: E402

# Weights are compared to 1e-6 absolute, not bit for bit: in about one run in four on a
# loaded 2-core machine one weight differed by 1.5e-8 (float rounding of CPU kernels whose
# thread split varies); every other run was bit-identical.
TOL = 1e-6


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("data") / "scenes", n_train=16, n_val=8, n_test=4,
                       image_size=48, seed=0)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state; each test builds its own Accelerator."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _options(scenes: Path, **kw) -> dict:
    base = dict(data=str(scenes), model="test_resnet", image_size=48, batch_size=8, epochs=2,
                warmup_epochs=1, guidance="ext", pixel_labels="all", quiet=True, checkpoint_every=0,
                device="cpu", snapshots=0)
    base.update(kw)
    return base


def test_fit_equals_the_engine_with_validation(scenes, tmp_path):
    options = _options(scenes)
    engine = engine_run(options, tmp_path / "engine")
    result = fit(options)
    assert result.accelerator.num_processes == 1 and result.step == engine.step == 4
    assert max_diff(result.model.state_dict(), engine.model.state_dict()) <= TOL
    start = Trainer(TrainConfig(**options, out=str(tmp_path / "init"))).model.state_dict()
    assert max_diff(start, engine.model.state_dict()) > 1e-3  # the steps moved the weights
    mine, theirs = result.history[-1], engine.history[-1]
    assert mine["guided"] and mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6)
    for key in ("val_loss", "val_accuracy", "val_map", "val_cam_miou", "val_attention_inside",
                "val_attention_area"):
        assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), key


def test_bf16_autocast_equals_the_engine_amp(scenes, tmp_path):
    options = _options(scenes, epochs=1, warmup_epochs=0, val_split="", amp=True, amp_dtype="bf16")
    engine = engine_run(options, tmp_path / "engine")
    result = fit(options)
    assert result.accelerator.mixed_precision == "bf16"
    assert max_diff(result.model.state_dict(), engine.model.state_dict()) <= TOL


def test_two_processes_under_torchrun_match_theengine_run(tmp_path):
    # As the Lightning DDP test: GroupNorm model, single-label data; the bound is the float
    # rounding of the gradient all-reduce (measured 1.7e-7).
    options = ddp_options(tmp_path)
    saved = torchrun_two("accelerate_ddp_run.py", options, tmp_path / "acc.pt", tmp_path)
    engine = engine_run(options, tmp_path / "engine")
    assert saved["processes"] == 2 and saved["steps"] == engine.step == 2
    assert max_diff(saved["model"], engine.model.state_dict()) < 1e-5
