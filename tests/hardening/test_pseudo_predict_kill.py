"""`attnguide pseudo-label` and `attnguide predict` killed with SIGKILL in the middle of a
run, while a label PNG is half written, then run again with ``--resume``: no partial file
is ever visible under a label's name, the killed writer's temporary file is removed, and
every file ends byte-identical to an uninterrupted run's (the metrics too).

The killed process is the real CLI; a wrapper around the PNG writer (only in that process)
makes its third write stop half-way, so the kill lands inside a write every time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hardening_helpers import subprocess_env

# The CLI, with the third label-PNG write stalled after half its bytes (killed there); the
# first argument is a file it creates once those bytes are on disk.
STALLED_CLI = """
import pathlib, sys, time
import attnguide.io.labels as labels
marker = pathlib.Path(sys.argv.pop(1))
write, calls = labels.atomic_write, []
def stalled(path, data, **kw):
    calls.append(path)
    if len(calls) != 3:
        return write(path, data, **kw)
    import io
    buffer = io.BytesIO()
    data(buffer)
    def half(stream):
        stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        stream.flush()
        marker.touch()
        time.sleep(120)
    return write(path, half, **kw)
labels.atomic_write = stalled
from attnguide.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".json"}


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def _kill_inside_a_write(args: list[str], out: Path) -> None:
    marker = out.parent / f"{out.name}.stalled"
    proc = subprocess.Popen([sys.executable, "-c", STALLED_CLI, str(marker), *args], env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline and not marker.exists():
            time.sleep(0.02)
        if proc.poll() is None and marker.exists():
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]


def _check_interrupted_then_resumed(cli, args: list[str], out: Path, ref: Path, report: str):
    assert cli(*args, "--out", ref).code == 0
    expected = _files(ref)
    _kill_inside_a_write([*args, "--out", str(out)], out)

    left = _temporaries(out)
    assert len(left) == 1 and left[0].stat().st_size > 0, left  # the stalled half PNG
    done = _files(out)
    assert 0 < len([k for k in done if k.endswith(".png")]) < len(expected)  # killed mid-run
    for name, data in done.items():  # never a partial file under a real name
        if not name.endswith(".tmp"):
            assert data == expected[name], name

    resumed = cli(*args, "--out", out, "--resume")
    assert resumed.code == 0, resumed.err
    assert _temporaries(out) == []  # the killed writer's file is gone
    assert _files(out) == expected
    before, after = (json.loads((folder / report).read_text()) for folder in (ref, out))
    assert after["skipped"] > 0 and after["written"] + after["skipped"] == before["written"]
    for key in ("miou", "per_class", "images"):
        assert after.get(key) == before.get(key), key


def test_pseudo_label_killed_inside_a_write_resumes_to_the_same_bytes(cli, classifier_run, scenes,
                                                                      tmp_path):
    args = ["pseudo-label", str(classifier_run), "--data", str(scenes), "--split", "train",
            "--scales", "1.0,0.5", "--save-cams", "--device", "cpu", "--quiet"]
    _check_interrupted_then_resumed(cli, args, tmp_path / "killed", tmp_path / "ref", "metrics.json")


def test_predict_killed_inside_a_write_resumes_to_the_same_bytes(cli, segmenter_run, scenes, tmp_path):
    args = ["predict", str(segmenter_run), "--data", str(scenes), "--split", "train", "--overlay",
            "--device", "cpu", "--quiet"]
    _check_interrupted_then_resumed(cli, args, tmp_path / "killed", tmp_path / "ref", "predict.json")


def test_a_running_writers_temporary_file_is_left_alone(classifier_run, scenes, tmp_path):
    """Resume removes only a dead writer's temporary file: one of a live process stays."""
    from attnguide.io.atomic import temp_name
    from attnguide.tasks.pseudo_labels import PseudoLabelConfig, pseudo_label

    out = tmp_path / "out"
    live = temp_name(out / "images" / "train_00000.png")  # this process's: alive
    live.parent.mkdir(parents=True)
    live.write_bytes(b"half")
    # the older name scheme, with a pid no Linux process can have (pids stay below 2**22)
    dead = live.with_name(".train_00001.png.4194304.0123456789ab.tmp")
    dead.write_bytes(b"half")
    pseudo_label(PseudoLabelConfig(run=str(classifier_run), data=str(scenes), out=str(out),
                                   scales=(1.0,), resume=True, device="cpu", quiet=True))
    assert live.is_file() and not dead.exists()
