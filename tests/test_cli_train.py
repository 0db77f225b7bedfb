"""`attnguide train` and `attnguide data scenes` from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnguide.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "scenes"
    assert main(["data", "scenes", str(out), "--n-train", "24", "--n-val", "8", "--n-test", "4",
                 "--image-size", "64", "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def trained_run(scenes, tmp_path_factory) -> Path:
    """One end-to-end `python -m attnguide train` (2 epochs, GAIN_ext after 1 warm-up epoch)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    config = run.parent / "train.yaml"
    config.write_text("model: test_resnet\nimage-size: 64\nbatch-size: 8\nepochs: 5\nlr: 2e-2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "attnguide", "train", "--config", str(config), "--data", str(scenes),
         "--guidance", "ext", "--epochs", "2", "--warmup-epochs", "1", "--out", str(run),
         "--device", "cpu"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run


def test_python_m_attnguide_help():
    proc = subprocess.run([sys.executable, "-m", "attnguide", "--help"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "train" in proc.stdout and "data" in proc.stdout


def test_train_help_lists_every_option(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--model", "--guidance", "--epochs", "--batch-size", "--lr", "--image-size",
                 "--warmup-epochs", "--alpha", "--omega", "--cam", "--layer", "--pixel-labels", "--out",
                 "--resume", "--weights", "--pretrained", "--amp", "--device", "--seed", "--config",
                 "--workers", "--optimizer", "--schedule", "--checkpoint-every", "--sync-bn",
                 "--tensorboard", "--quiet"):
        assert flag in out, flag


def test_end_to_end_train_writes_the_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"} <= names
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_loss_cls", "train_loss_am", "train_loss_ext", "lr", "time",
                "val_map", "val_cam_miou", "attention_area"):
        assert key in records[-1], key
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert saved["epochs"] == 2  # the command line beat the config file's 5
    assert saved["lr"] == 0.02 and saved["model"] == "test_resnet"  # from the config file
    assert saved["guidance"] == "ext" and saved["momentum"] == 0.9  # command line / default


def test_missing_data_folder(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "nowhere" in _one_error_line(capsys)


def test_unknown_model(scenes, tmp_path, capsys):
    assert main(["train", "--data", str(scenes), "--model", "resnet81", "--out", str(tmp_path / "r")]) == 2
    err = _one_error_line(capsys)
    assert "resnet81" in err and "resnet18" in err


def test_resume_on_a_data_set_with_other_classes(trained_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["data", "scenes", str(other), "--n-train", "8", "--n-val", "4", "--n-test", "4",
                 "--image-size", "48", "--num-classes", "3"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(trained_run), "--data", str(other), "--image-size", "64"]) == 2
    err = _one_error_line(capsys)
    assert "cannot resume" in err and "[boat, disc, square]" in err  # brackets survive rich markup


def test_pretrained_offline_is_one_line(scenes, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", "--data", str(scenes), "--model", "test_resnet", "--pretrained",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--weights" in _one_error_line(capsys)


def test_bad_option_value_is_one_line(capsys):
    assert main(["train", "--data", "x", "--lr", "fast"]) == 2
    assert "--lr" in _one_error_line(capsys)
    assert main(["train", "--data", "x", "--guidance", "full"]) == 2
    assert "none, auto or a '+'-joined set of self, ext, rrr, bg, swap" in _one_error_line(capsys)


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGUIDE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["train", "--data", str(tmp_path / "nowhere")])
