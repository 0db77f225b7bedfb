"""`attnguide segment` killed with SIGKILL in the middle of an epoch and resumed ends
bit-exactly where an uninterrupted run ends (the pattern of
tests/engine/test_engine_train.py's kill test for `attnguide train`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import torch
from hardening_helpers import subprocess_env
from kill_helpers import kill_at_checkpoint, read_checkpoint


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "attnguide", *map(str, args)]



def test_segment_resumed_after_sigkill_is_bit_exact(scenes, tmp_path):
    # 8 train images, batch 2: 4 iterations an epoch, 16 in all; last.pt every 2 iterations
    args = ["segment", "--data", scenes, "--labels", "gt", "--arch", "linknet", "--encoder",
            "tu-test_resnet", "--crop-size", 32, "--batch-size", 2, "--epochs", 4,
            "--val-split", "", "--checkpoint-every", 2, "--seed", 3, "--device", "cpu", "--quiet"]
    ref = subprocess.run(_cli(*args, "--out", tmp_path / "ref"), env=subprocess_env(), capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--out", killed), env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    at = None
    try:  # mid-epoch, well before the end
        at = kill_at_checkpoint(proc, killed / "last.pt", lambda s: s["batch"] >= 2 and s["step"] < 12)
    finally:
        if proc.poll() is None and at is None:
            proc.kill()
        proc.wait(timeout=60)
    assert at is not None, "the run ended before a mid-epoch checkpoint was seen"
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(killed / "last.pt")["batch"] > 0  # the resume starts mid-epoch (last.pt is whole)
    # a kill during a checkpoint write can leave only the writer's temporary file, never half a file
    left = {p.name for p in killed.iterdir()} - {"last.pt", "metrics.jsonl", "segment.yaml"}
    assert all(name.startswith(".last.pt.") and name.endswith(".tmp") for name in left), left

    resumed = subprocess.run(_cli("segment", "--resume", killed, "--quiet"), env=subprocess_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]  # the resume removed them
    a, b = read_checkpoint(tmp_path / "ref" / "last.pt"), read_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == 16 and a["epoch"] == b["epoch"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for name in sa:
            assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), name
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert _metrics(tmp_path / "ref") == _metrics(killed)


def _metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the timings."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in records]
