"""benchmarks/speed/core.py at toy scale: every table it prints has its rows, the GAIN_ext
column included, and the maps of the three CAM implementations agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "benchmarks" / "speed" / "core.py"


def test_speed_core_prints_all_tables_at_toy_scale():
    proc = subprocess.run([sys.executable, str(DRIVER), "--size", "64", "--batch", "2", "--cam-batch", "2",
                           "--rounds", "1", "--warmup", "0", "--k", "1", "2", "--threads", "1", "--ports"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ")]
    steps = [r for r in rows if len(r) == 11 and r[0].strip() in ("1", "2")]
    assert [r[0].strip() for r in steps] == ["1", "2"]  # k = 1, 2 with GAIN_ext columns
    for r in steps:
        ms = [float(r[i]) for i in (1, 2, 4)]  # plain, GAIN, GAIN_ext
        assert all(v > 0 for v in ms)
        ratio = float(re.search(r"[\d.]+", r[5]).group())  # GAIN_ext against plain
        assert abs(ratio - ms[2] / ms[0]) <= 0.05 * ratio + 0.02
    ports = [r for r in rows if len(r) == 4 and r[0].strip() in ("1", "2")]
    assert len(ports) == 2
    cams = {r[0].strip(): r for r in rows if len(r) == 4 and r[0].strip() in ("attnguide", "grad-cam", "torchcam")}
    assert set(cams) == {"attnguide", "grad-cam", "torchcam"}
    diffs = [float(x) for x in re.findall(r"to (?:grad-cam|torchcam) ([\d.e+-]+)", proc.stdout)]
    assert len(diffs) == 2 and max(diffs) < 1e-4  # the maps are the same before they are timed
