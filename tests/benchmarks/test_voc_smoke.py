"""benchmarks/voc2012/run.py --smoke: every step of the VOC 2012 recipe (train, pseudo-label,
segment on both routes, for every row) on a tiny VOC-format folder, as CI runs it."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "benchmarks" / "voc2012" / "run.py"
NUMBER = r"\d+\.\d"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_voc_smoke_writes_every_row_and_resumes(tmp_path):
    for module in ("pydensecrf", "segmentation_models_pytorch"):  # the crf and seg extras
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the VOC smoke run needs {module}")
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes() if results.is_file() else None
    out = tmp_path / "voc"

    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = (out / "RESULTS.md").read_text()
    assert "`python benchmarks/voc2012/run.py --smoke --out " in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    assert "paper val mIoU" in header and "SEC route" in header and "pseudo-label route" in header
    assert [r.split("|")[1].strip().split(",")[0] for r in rows] == [
        "SEC baseline (unguided VGG16 Grad-CAM cues)", "GAIN", "GAIN", "GAIN_ext", "GAIN_ext"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 5, row
        assert re.fullmatch(NUMBER, cells[1]), row  # the paper's number
        for cell in cells[2:]:
            assert re.fullmatch(rf"{NUMBER} \({NUMBER}\)", cell), row  # ours, with and without CRF
    assert (results.read_bytes() if results.is_file() else None) == before  # smoke: not RESULTS.md

    # a rerun skips the finished steps (no step process: fast) ...
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("skip  ") == 20 and "start " not in proc.stdout
    # ... and continues an interrupted one (output without its .done marker) with --resume
    (out / "gain" / "segment-sec.done").unlink()
    proc = _run("--smoke", "--out", str(out), "--dry-run")
    lines = proc.stdout.splitlines()
    assert len(lines) == 20 and sum(line.endswith(": done") for line in lines) == 19
    assert [line for line in lines if not line.startswith("#")] == [
        f"{sys.executable} -m attnguide segment --resume {out / 'gain' / 'segment-sec'} --quiet"]


def test_voc_driver_names_missing_inputs(tmp_path):
    proc = _run("--voc", str(tmp_path / "nowhere"), "--weights", str(tmp_path / "vgg16.pth"), "--device", "cpu",
                "--out", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "no VOC 2012 folder there" in proc.stderr and "vgg16.pth: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "VOC2012" / "JPEGImages").mkdir(parents=True)
    (tmp_path / "VOC2012" / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").write_text("")
    proc = _run("--voc", str(tmp_path), "--device", "cpu", "--out", str(tmp_path / "out"))
    assert "SBD's train_aug.txt is missing" in proc.stderr and "SegmentationClassAug/" in proc.stderr
    assert "--weights FILE" in proc.stderr
