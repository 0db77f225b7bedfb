"""The atomic writer: recognisable temporary names, and clean_stale for killed writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from attnguide.io import atomic
from attnguide.io.atomic import TEMP_RE, atomic_write, clean_stale, is_stale, temp_name

# the writer loads atomic.py by its path: it needs the standard library only, so the
# process starts in milliseconds (importing attnguide would import torch)
WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("atomic", sys.argv[2])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
def slow(stream):
    stream.write(b"half of the new")
    stream.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic.atomic_write(sys.argv[1], slow)
"""


def _dead_pid() -> int:
    """The id of a process that has just ended (not reused within a test)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_temporary_name_names_the_writer(tmp_path):
    seen = []

    def write(stream):
        seen.extend(p.name for p in tmp_path.iterdir())
        stream.write(b"x")

    atomic_write(tmp_path / "last.pt", write)
    (name,) = seen
    match = TEMP_RE.match(name)
    assert match is not None, name
    assert match["name"] == "last.pt" and int(match["pid"]) == os.getpid()
    assert TEMP_RE.match(temp_name(tmp_path / "a.png").name)["name"] == "a.png"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_killed_writer_leaves_its_file_and_clean_stale_removes_it(tmp_path):
    dest = tmp_path / "run" / "last.pt"
    atomic_write(dest, b"old")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest), atomic.__file__],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        (left,) = [p for p in dest.parent.iterdir() if p.name != "last.pt"]
        assert not is_stale(left)  # its writer still runs: kept
        assert clean_stale(dest.parent) == [] and left.exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert left.exists() and TEMP_RE.match(left.name)["pid"] == str(proc.pid)
    assert is_stale(left)
    assert clean_stale(dest.parent) == [left]
    assert [p.name for p in dest.parent.iterdir()] == ["last.pt"]
    assert dest.read_bytes() == b"old"


def test_clean_stale_removes_only_dead_writers_files(tmp_path):
    dead = _dead_pid()
    host = atomic._host()
    sub = tmp_path / "crf"
    sub.mkdir()
    stale = [tmp_path / f".a.png.attnguide-{host}-{dead}-{'0' * 12}.tmp",
             sub / f".b.png.attnguide-{host}-{dead}-{'1' * 12}.tmp",
             tmp_path / f".c.json.{dead}.{'2' * 12}.tmp"]  # the name earlier versions used
    kept = [tmp_path / f".d.png.attnguide-{host}-{os.getpid()}-{'3' * 12}.tmp",  # running
            tmp_path / ".notes.tmp", tmp_path / "e.tmp",  # not the writer's
            tmp_path / "a.png", sub / "b.png"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert clean_stale(tmp_path, recursive=False) == [stale[0], stale[2]]
    assert clean_stale(tmp_path) == [stale[1]]
    assert all(p.exists() for p in kept)
    assert clean_stale(tmp_path / "missing") == []


def test_another_hosts_file_is_stale_only_when_old(tmp_path):
    other = "0badf00d" if atomic._host() != "0badf00d" else "0badf00e"
    path = tmp_path / f".last.pt.attnguide-{other}-{os.getpid()}-{'4' * 12}.tmp"
    path.write_bytes(b"x")
    assert not is_stale(path) and clean_stale(tmp_path) == []
    old = time.time() - 2 * atomic.FOREIGN_AGE
    os.utime(path, (old, old))
    assert is_stale(path)
    assert clean_stale(tmp_path, foreign_age=3 * atomic.FOREIGN_AGE) == []
    assert clean_stale(tmp_path) == [path]


@pytest.mark.parametrize("name", ["last.pt", ".last.pt.attnguide-zz-1-x.tmp", ".x.1.short.tmp"])
def test_other_names_are_never_stale(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    assert not is_stale(path)
