"""benchmarks/scenes/run.py on tiny scenes: rows x seeds with --one-seed, the pseudo-label
columns, the table's seeds column, and reuse of finished runs by a second call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "benchmarks" / "scenes" / "run.py"
TINY = ["--scenes", "n_train=16", "--scenes", "n_val=4", "--scenes", "n_test=8", "--scenes", "image_size=48",
        "--set", "model=test_resnet", "--set", "image_size=48", "--set", "epochs=1",
        "--set", "warmup_epochs=0", "--set", "batch_size=8", "--set", "snapshots=0"]


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(DRIVER), "--out", str(out), *TINY, *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _table(stdout: str) -> dict[str, list[str]]:
    rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_scenes_bench_rows_seeds_pseudo_columns_and_reuse(tmp_path):
    out = tmp_path / "bench"
    first = _run(out, "--rows", "baseline", "ext10", "--one-seed", "ext10", "--seeds", "0", "1",
                 "--pseudo", "--parallel", "2")
    table = _table(first.stdout)
    baseline, ext10 = table["unguided (CAM baseline)"], table["GAIN_ext, 10% pixel labels"]
    assert baseline[0] == "2" and ext10[0] == "1"  # seeds column: --one-seed trains seed 0 only
    assert "±" in baseline[2] and "±" not in ext10[2]  # mAP: spread only over several seeds
    assert sorted(p.name for p in out.iterdir() if p.name != "scenes") == [
        "baseline-s0", "baseline-s1", "ext10-s0"]
    metrics = json.loads((out / "ext10-s0" / "test_metrics.json").read_text())
    assert 0 <= metrics["pseudo_miou"] <= 1 and 0 <= metrics["pseudo_miou_crf"] <= 1
    assert 0 <= metrics["test_map"] <= 1
    assert "segmenter_miou" not in metrics  # no segmenter is trained without --segment

    again = _run(out, "--rows", "baseline", "ext10", "--one-seed", "ext10", "--seeds", "0", "1", "--pseudo")
    assert "seed" not in again.stdout.split("| row")[0]  # nothing trained: every run was reused
    assert _table(again.stdout) == table


def test_train_command_passes_booleans_as_flags(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("scenes_bench", DRIVER)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cmd = bench.train_command(tmp_path, tmp_path / "run", {"detach_weights": True, "amp": False,
                                                            "alpha": 0}, seed=1, device="cpu")
    assert "--detach-weights" in cmd and "--no-amp" in cmd and "True" not in cmd
    assert cmd[cmd.index("--alpha") + 1] == "0"
    from attnguide.engine.config import FIELDS

    for row, (_, options) in bench.ROWS.items():  # every row's options are train options
        assert set(options) - {"steps_of"} <= set(FIELDS), row
        assert options.get("steps_of", "baseline") in bench.ROWS, row


def test_equal_steps_row_trains_to_the_guided_rows_step_count(tmp_path):
    """baseline_steps waits for auto10 (same seed) and takes its optimizer steps; the table
    reports steps and training seconds for every row."""
    out = tmp_path / "bench"
    proc = _run(out, "--rows", "baseline", "baseline_steps", "auto10", "--parallel", "2")
    steps = {row: json.loads((out / f"{row}-s0" / "test_metrics.json").read_text())["steps"]
             for row in ("baseline", "baseline_steps", "auto10")}
    assert steps["baseline_steps"] == steps["auto10"] > steps["baseline"]  # labelled images recur
    table = _table(proc.stdout)
    assert table["unguided, the defaults' (auto10) steps"][-2] == str(steps["auto10"])
    assert "| steps | training s |" in proc.stdout


def test_scenes_bench_failed_training_names_the_run_and_starts_no_more(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(DRIVER), "--out", str(out), *TINY, "--set", "lr=-1",
                           "--rows", "baseline", "gain", "--parallel", "1"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode != 0
    assert "training gain seed 0 failed; see" in proc.stderr  # guided rows start first
    assert not (out / "baseline-s0").exists()  # the queued job was cancelled


def test_a_second_call_on_the_same_out_folder_is_refused(tmp_path):
    """Two driver calls on one --out would train into the same run folders at once (an invalid
    row came of it once): the second is refused while the first holds the folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scenes_bench_lock", DRIVER)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    held = bench.hold_folder(tmp_path / "out")
    proc = subprocess.run([sys.executable, str(DRIVER), "--out", str(tmp_path / "out"), "--rows", "baseline"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "another benchmark call is using" in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []  # the lock adds no file to the folder
    os.close(held)  # released: a later call may use the folder
    os.close(bench.hold_folder(tmp_path / "out"))


def test_a_killed_calls_training_resumes_from_its_last_checkpoint(tmp_path):
    """A run with last.pt and no test_metrics.json (the call was killed) goes on from last.pt:
    a finished training is not redone (its epochs' records, times included, stay as they were)."""
    out = tmp_path / "bench"
    _run(out, "--rows", "baseline")
    run = out / "baseline-s0"
    records = (run / "metrics.jsonl").read_text()
    (run / "test_metrics.json").unlink()
    _run(out, "--rows", "baseline")
    assert (run / "metrics.jsonl").read_text() == records  # a new training would have new times
    assert (run / "test_metrics.json").is_file()
