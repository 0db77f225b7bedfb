"""The training loop: a short guided run, AMP on CPU, bit-exact resume after
SIGKILL, resume checks, and DDP (2 gloo processes) against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from kill_helpers import kill_at_checkpoint, read_checkpoint

from attnguide.data import make_scenes
from attnguide.engine import TrainConfig, Trainer
from attnguide.errors import AttnGuideError
from attnguide.models.trained import load_model
from attnguide.tasks.training import train

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _cli(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "attnguide", *map(str, args)]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Multi-label scenes with exact masks: 24 train, 8 val images, 64 px."""
    return make_scenes(tmp_path_factory.mktemp("data") / "scenes", n_train=24, n_val=8, n_test=8,
                       image_size=64, seed=0)


@pytest.fixture(scope="module")
def single_scenes(tmp_path_factory) -> Path:
    """Single-label scenes (one object per image): 32 train images."""
    return make_scenes(tmp_path_factory.mktemp("data") / "single", n_train=32, n_val=8, n_test=8,
                       image_size=64, min_objects=1, max_objects=1, seed=1)


def _cfg(scenes: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(scenes), model="test_resnet", image_size=64, batch_size=8, epochs=2,
                warmup_epochs=1, guidance="ext", out=str(out), quiet=True, checkpoint_every=0,
                device="cpu", snapshots=0)  # snapshots are tested in tests/viz
    base.update(kw)
    return TrainConfig(**base)


def test_guided_run_writes_metrics_and_checkpoints(scenes, tmp_path):
    result = train(_cfg(scenes, tmp_path / "run"))
    run = result.run_dir
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert [r["guided"] for r in lines] == [False, True]  # one classification-only warm-up epoch
    assert lines[0]["train_loss_am"] == 0 and lines[1]["train_loss_am"] > 0
    assert lines[1]["train_loss_ext"] > 0 and 0 <= lines[1]["attention_area"] <= 1
    for key in ("train_loss", "train_loss_cls", "lr", "time", "val_map", "val_accuracy",
                "val_cam_miou", "val_attention_inside"):
        assert key in lines[1], key
    assert 0 <= lines[1]["val_cam_miou"] <= 1
    trained = load_model(run)
    assert trained.multilabel and len(trained.class_names) == 5
    assert trained.layer == "layer2" and trained.image_size == 64  # layer "auto": >= 7x7 cells


def test_amp_bf16_step_runs_on_cpu(single_scenes, tmp_path):
    trainer = Trainer(_cfg(single_scenes, tmp_path / "amp", amp=True, epochs=1, warmup_epochs=0,
                           guidance="self", val_split=""))
    seen = []
    hook = trainer.model.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    hook.remove()
    assert torch.bfloat16 in seen
    assert result.history[0]["train_loss_am"] > 0
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_with_another_model_fails_clearly(single_scenes, tmp_path):
    train(_cfg(single_scenes, tmp_path / "a", epochs=1, warmup_epochs=1, guidance="none", val_split=""))
    cfg = _cfg(single_scenes, tmp_path / "b", model="test_efficientnet", resume=str(tmp_path / "a"))
    with pytest.raises(AttnGuideError, match="--model test_resnet, not test_efficientnet"):
        Trainer(cfg)
    with pytest.raises(AttnGuideError, match="already holds a run.*--resume"):
        Trainer(_cfg(single_scenes, tmp_path / "a"))  # no silent overwrite



def test_resume_after_sigkill_is_bit_exact(scenes, tmp_path):
    args = ["train", "--data", scenes, "--model", "test_resnet", "--image-size", 64, "--batch-size", 4,
            "--epochs", 2, "--warmup-epochs", 1, "--guidance", "ext", "--checkpoint-every", 2,
            "--val-split", "", "--seed", 3, "--quiet", "--device", "cpu"]
    ref = subprocess.run(_cli(*args, "--out", tmp_path / "ref", cwd=tmp_path), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--out", killed_dir, cwd=tmp_path), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    at = None
    try:  # mid-epoch, well before the end
        at = kill_at_checkpoint(proc, killed_dir / "last.pt", lambda s: s["batch"] >= 2 and s["step"] < 9)
    finally:
        if proc.poll() is None and at is None:
            proc.kill()
        proc.wait(timeout=60)
    assert at is not None, "the run ended before a mid-epoch checkpoint was seen"
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(killed_dir / "last.pt")["batch"] > 0  # resuming mid-epoch

    resumed = subprocess.run(_cli("train", "--resume", killed_dir, "--quiet", cwd=tmp_path), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_checkpoint(tmp_path / "ref" / "last.pt"), read_checkpoint(killed_dir / "last.pt")
    assert a["step"] == b["step"] == 12 and b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    losses = [[r["train_loss"] for r in s["history"]] for s in (a, b)]
    assert losses[0] == losses[1]  # the interrupted epoch logs the same average loss


def test_ddp_two_gloo_processes_match_one_process(single_scenes, tmp_path):
    # A model without BatchNorm (GroupNorm EfficientNet): per-process batch statistics
    # would otherwise differ from those of the global batch (SyncBatchNorm needs CUDA).
    # Single-label data gives one (image, class) pair per image, so L_am's mean over
    # pairs is a mean over images, which DDP's gradient averaging reproduces exactly.
    args = ["train", "--data", single_scenes, "--model", "test_efficientnet_gn", "--image-size", 64,
            "--batch-size", 8, "--epochs", 1, "--warmup-epochs", 0, "--guidance", "self",
            "--val-split", "", "--seed", 1, "--lr", 0.02, "--quiet", "--checkpoint-every", 0,
            "--device", "cpu"]
    one = subprocess.run(_cli(*args, "--out", tmp_path / "one", cwd=tmp_path), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "attnguide", *map(str, args), "--out", str(tmp_path / "two")],
                         env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_checkpoint(tmp_path / "one" / "last.pt"), read_checkpoint(tmp_path / "two" / "last.pt")
    assert a["step"] == b["step"] == 4
    import timm

    torch.manual_seed(1)
    init = timm.create_model("test_efficientnet_gn", num_classes=5).state_dict()
    moved = max(float((a["model"][k].float() - init[k].float()).abs().max()) for k in init)
    assert moved > 1e-3  # the steps changed the weights
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5), key


def test_best_checkpoint_comes_from_a_guided_epoch_and_rrr_is_logged(scenes, tmp_path):
    """A warm-up epoch may have the better metric, but best.pt must hold guided weights;
    every term of a joined guidance is logged, extra registry terms included."""
    result = train(_cfg(scenes, tmp_path / "run", guidance="ext+rrr+bg+swap", rrr_weight=0.5,
                        pixel_labels="all"))
    first, second = result.history
    assert not first["guided"] and second["guided"]
    assert second["best"] and result.best_value == second[result.best_metric]
    assert first["train_loss_rrr"] == 0 and second["train_loss_rrr"] > 0
    assert first["train_loss_bg"] == 0 and second["train_loss_bg"] > 0
    # --swap-source auto swaps the pixel-labelled images: the swap term
    assert first["train_loss_swap"] == 0 and second["train_loss_swap"] > 0
    assert second["train_loss_ext"] > 0 and second["train_loss_am"] > 0


def test_auto_guidance_is_ext_and_swap_with_masks_and_self_without(scenes, tmp_path):
    from attnguide.engine.config import resolve_guidance

    assert resolve_guidance("auto", has_masks=False) == "self"
    assert resolve_guidance("ext", has_masks=False) == "ext"
    result = train(_cfg(scenes, tmp_path / "run", guidance="auto", epochs=1, warmup_epochs=0))
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["guidance"] == "ext+swap"  # the run records what auto became
    assert saved["swap_source"] == "masks" and saved["labelled_share"] == 0.5  # and its auto parts
    assert result.history[0]["train_loss_swap"] > 0 and result.history[0]["train_loss_ext"] > 0


def test_labelled_share_reaches_the_sampler_and_needs_a_mask_guidance(scenes, tmp_path):
    trainer = Trainer(_cfg(scenes, tmp_path / "run", guidance="ext+swap", pixel_labels="2",
                           labelled_share=0.5))
    assert trainer.sampler.labelled_per_batch == 2  # both labelled images, the pool's size
    trainer.sampler.set_epoch(0)
    for batch in trainer.sampler:
        assert sum(key[1] in trainer.train_ds.pixel_labelled for key in batch) == 2
    with pytest.raises(AttnGuideError, match="--labelled-share 0.5 .* --guidance self uses no masks"):
        Trainer(_cfg(scenes, tmp_path / "run2", guidance="self", labelled_share=0.5))
    with pytest.raises(AttnGuideError, match=r"--labelled-share must lie in \[0, 1\]"):
        train(_cfg(scenes, tmp_path / "run3", labelled_share=2.0))
    from attnguide.engine.config import resolve_config

    assert resolve_config({"labelled_share": "auto"}).labelled_share is None
    assert resolve_config({"labelled_share": "0.25"}).labelled_share == 0.25
    with pytest.raises(AttnGuideError, match="labelled_share must be float or auto, got 'half'"):
        resolve_config({"labelled_share": "half"})


def test_steps_budget_ends_the_run_mid_epoch_and_the_schedule_spans_it(scenes, tmp_path):
    """--steps N: an equal-compute baseline. 24 images at batch 8 = 3 steps an epoch; 7 steps
    end in the third epoch's first step, where the cosine schedule reaches its end (lr 0)."""
    res = train(_cfg(scenes, tmp_path / "r", guidance="none", epochs=99, steps=7, optimizer="adamw",
                     lr=1e-3, schedule="cosine", val_split=""))
    steps = [r["step"] for r in res.history]
    assert steps == [3, 6, 7]
    assert res.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert load_model(tmp_path / "r" / "last.pt").model is not None
    with pytest.raises(AttnGuideError, match="--steps must be at least 1"):
        _cfg(scenes, tmp_path / "bad", steps=0).validate()
