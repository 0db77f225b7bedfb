"""GuidedModule (attnguide.integrations.lightning) against the engine: the weights after
the same steps on the same data and seed are equal (fp32 and bf16-mixed in one CPU
process: bit for bit; DDP with 2 gloo processes: to float rounding), and validation
under Lightning's default inference_mode gives the engine's attention metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

L = pytest.importorskip(
    "lightning", reason="PyTorch Lightning is not installed: pip install -e '.[dev]' (or '.[lightning]')")

from equality_helpers import ddp_options, engine_run, max_diff, torchrun_two  # noqa: E402

from attnguide.data import make_scenes  # noqa: E402
from attnguide.errors import AttnGuideError  # noqa: E402
from attnguide.integrations.lightning import GuidedModule  # noqa: E402

# One process: every run so far was bit-identical; the bound is 1e-6 absolute, as in
# test_accelerate.py, because CPU kernels whose thread split varies on a loaded machine
# can round differently (seen once there, 1.5e-8).
TOL = 1e-6


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Multi-label scenes with masks: 16 train, 8 val images, 48 px."""
    return make_scenes(tmp_path_factory.mktemp("data") / "scenes", n_train=16, n_val=8, n_test=4,
                       image_size=48, seed=0)


def _options(scenes: Path, **kw) -> dict:
    base = dict(data=str(scenes), model="test_resnet", image_size=48, batch_size=8, epochs=2,
                warmup_epochs=1, guidance="ext", pixel_labels="all", quiet=True, checkpoint_every=0,
                device="cpu", snapshots=0)
    base.update(kw)
    return base


def _lightning(module: GuidedModule, **kw) -> L.Trainer:
    trainer = L.Trainer(max_epochs=module.cfg.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, **kw)
    trainer.fit(module)
    return trainer


def test_weights_and_validation_equal_the_engine_under_inference_mode(scenes, tmp_path):
    options = _options(scenes)
    engine = engine_run(options, tmp_path / "engine")
    class Recording(GuidedModule):
        modes: list[bool] = []

        def validation_step(self, batch, batch_idx):
            self.modes.append(torch.is_inference_mode_enabled())
            return super().validation_step(batch, batch_idx)

    module = Recording(options)
    start = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = _lightning(module, num_sanity_val_steps=1)  # validation inside fit: under no_grad
    assert trainer.global_step == engine.step == 4
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}  # what a logger received
    assert module.modes and not any(module.modes)
    during_fit = module.last_validation
    module.modes.clear()
    trainer.validate(module, verbose=False)  # Trainer(inference_mode=True), Lightning's default
    assert module.modes and all(module.modes)  # validate() ran under torch.inference_mode()
    assert module.last_validation == during_fit  # the same numbers: attention maps and all
    assert max_diff(start, module.model.state_dict()) > 1e-3  # the steps moved the weights
    assert max_diff(module.model.state_dict(), engine.model.state_dict()) <= TOL
    # validation after the guided epoch: the engine's numbers, from the attnguide.metrics classes
    record = engine.history[-1]
    got = module.last_validation
    for key in ("val_loss", "val_accuracy", "val_map", "val_cam_miou", "val_attention_inside",
                "val_attention_area"):
        assert got[key] == pytest.approx(record[key], rel=1e-5, abs=1e-7), key
    assert got["val_cam_iou"] == pytest.approx(record["val_cam_iou"], nan_ok=True)
    assert 0 <= got["val_pointing_game"] <= 1
    for key in ("val_cam_miou", "train_loss", "train_loss_am", "train_loss_ext", "attention_area"):
        assert logged[key] == pytest.approx(record[key], rel=1e-5), key  # the metrics.jsonl names


def test_bf16_mixed_equals_the_engine_amp(scenes, tmp_path):
    options = _options(scenes, epochs=1, warmup_epochs=0, val_split="", amp=True, amp_dtype="bf16")
    engine = engine_run(options, tmp_path / "engine")
    module = GuidedModule(options)
    _lightning(module, precision="bf16-mixed", num_sanity_val_steps=0)
    # GuidedModule re-enables autocast's weight-cast cache, which Lightning turns off; without
    # it the weights differ by ~3e-3 after two steps (each use of a weight cast anew).
    assert max_diff(module.model.state_dict(), engine.model.state_dict()) <= TOL


def test_ddp_two_gloo_processes_match_theengine_run(tmp_path):
    # GroupNorm model and single-label data, as the engine's own DDP test: per-process batch
    # statistics and the mean over pairs then agree with one process; what remains is the
    # order of the gradient all-reduce's float sums (tolerance 1e-5 absolute, 1e-4 relative).
    options = ddp_options(tmp_path)
    ddp = torchrun_two("lightning_ddp_run.py", options, tmp_path / "ddp.pt", tmp_path)
    engine = engine_run(options, tmp_path / "engine")
    assert ddp["steps"] == engine.step == 2
    theirs = engine.model.state_dict()
    assert max_diff(ddp["model"], theirs) < 1e-5
    init = GuidedModule(options).model.state_dict()
    assert max_diff(init, theirs) > 1e-3  # the steps changed the weights


def test_bad_options_and_a_wrong_max_epochs_say_what_to_fix(scenes):
    with pytest.raises(AttnGuideError, match="unknown option"):
        GuidedModule(_options(scenes), epochz=3)
    with pytest.raises(AttnGuideError, match="needs pixel masks"):
        GuidedModule(_options(scenes, pixel_labels=0))
    module = GuidedModule(_options(scenes, epochs=1, warmup_epochs=0))
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(AttnGuideError, match="max_epochs"):
        trainer.fit(module)
    # one copy of each weight in the Lightning state dict: the bare model's keys under guide.
    assert list(module.state_dict()) == ["guide." + k for k in module.model.state_dict()]


def test_attention_snapshots_reach_the_tensorboard_logger(scenes, tmp_path):
    pytest.importorskip("matplotlib", reason="snapshots need matplotlib (the viz extra)")
    pytest.importorskip("tensorboard", reason="this check reads a TensorBoard event file")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = GuidedModule(_options(scenes, epochs=1, warmup_epochs=0, snapshots=2))
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module)
    assert (Path(logger.log_dir) / "snapshots" / "epoch_001.png").is_file()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "attention" in events.Tags()["images"]
    assert "val_cam_miou" in events.Tags()["scalars"]
