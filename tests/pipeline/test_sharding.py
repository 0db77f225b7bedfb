"""`attnguide pseudo-label` and `attnguide predict` under torchrun: 2 gloo processes on CPU
each take a disjoint slice of the images; the files are byte-identical to one process's,
the merged report (metrics.json, predict.json) is the same but for the timing, and
``--resume`` after a partial run redoes only the missing files (in 2 processes and in 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from attnguide.engine.distributed import DistInfo, shard

ROOT = Path(__file__).resolve().parents[2]
TIMING = ("seconds", "images_per_s", "processes")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """8 train images (48 px), a classifier (1 epoch) and a segmenter (1 iteration)."""
    from attnguide.data import make_scenes
    from attnguide.engine import TrainConfig
    from attnguide.tasks.segmentation import SegmentConfig, segment
    from attnguide.tasks.training import train

    base = tmp_path_factory.mktemp("sharding")
    data = make_scenes(base / "scenes", n_train=8, n_val=2, n_test=2, image_size=48, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(TrainConfig(data=str(data), model="test_resnet", image_size=48, epochs=1, batch_size=4,
                          guidance="none", layer="layer3", val_split="", device="cpu", quiet=True,
                          snapshots=0, out=str(base / "classifier")))
        segment(SegmentConfig(data=str(data), labels="gt", arch="linknet", encoder="tu-test_resnet",
                              crop_size=32, batch_size=2, iterations=1, val_split="", device="cpu",
                              quiet=True, out=str(base / "segmenter")))
    return {"data": data, "classifier": base / "classifier", "segmenter": base / "segmenter"}


def _one_process(runs, out: Path, *extra: str) -> None:
    from attnguide.cli.main import main

    assert main(["pseudo-label", str(runs["classifier"]), "--data", str(runs["data"]), "--out",
                 str(out / "pseudo"), "--scales", "1.0,0.5", "--save-cams", "--device", "cpu",
                 "--quiet", *extra]) == 0
    assert main(["predict", str(runs["segmenter"]), "--data", str(runs["data"]), "--split", "train",
                 "--out", str(out / "pred"), "--overlay", "--device", "cpu", "--quiet", *extra]) == 0


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".json"}


def _report(path: Path) -> dict:
    """The report less its timing and the output folder (the two runs write to two)."""
    report = json.loads(path.read_text())
    report["config"].pop("out", None)
    return {k: v for k, v in report.items() if k not in TIMING}


def test_shards_are_disjoint_and_cover_every_item():
    for n in (0, 1, 7, 8):
        for world in (1, 2, 3):
            parts = [list(shard(n, DistInfo(rank, world))) for rank in range(world)]
            assert sorted(i for part in parts for i in part) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _two_processes(runs, out: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(ROOT / "tests" / "pipeline" / "sharded_run.py"),
                          str(runs["classifier"]), str(runs["segmenter"]), str(runs["data"]), str(out),
                          *extra], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, "\n".join(line for line in run.stderr.splitlines()
                                           if "Warning" not in line)[-4000:]


def test_two_processes_write_the_bytes_of_one_and_the_same_report(runs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process(runs, one)
    _two_processes(runs, two)

    a, b = _files(one), _files(two)
    assert len([k for k in a if k.startswith("pseudo/") and k.endswith(".png")]) == 8
    assert len([k for k in a if k.startswith("pred/overlay/")]) == 8
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []  # every PNG and NPZ byte-identical

    pseudo_two = json.loads((two / "pseudo" / "metrics.json").read_text())
    assert pseudo_two["processes"] == 2 and pseudo_two["written"] == 8
    assert _report(one / "pseudo" / "metrics.json") == _report(two / "pseudo" / "metrics.json")
    pred_two = json.loads((two / "pred" / "predict.json").read_text())
    assert pred_two["processes"] == 2 and pred_two["written"] == 8
    assert _report(one / "pred" / "predict.json") == _report(two / "pred" / "predict.json")

    # --resume under 2 processes: only the removed files are made again, the same bytes
    for name in ("pseudo/images/train_00001.png", "pseudo/images/train_00004.png",
                 "pseudo/images/train_00006.png", "pred/overlay/images/train_00003.png"):
        (two / name).unlink()
    _two_processes(runs, two, "--resume")
    assert _files(two) == a
    pseudo = json.loads((two / "pseudo" / "metrics.json").read_text())
    assert (pseudo["written"], pseudo["skipped"]) == (3, 5)
    assert _report(one / "pseudo" / "metrics.json")["miou"] == pseudo["miou"]
    pred = json.loads((two / "pred" / "predict.json").read_text())
    assert (pred["written"], pred["skipped"]) == (1, 7)


def test_resume_redoes_only_missing_files(runs, tmp_path):
    full = tmp_path / "full"
    _one_process(runs, full)
    part = tmp_path / "part"
    _one_process(runs, part)
    gone = ["images/train_00002.png", "images/train_00005.png"]  # names: the CSV paths
    for name in gone:
        (part / "pseudo" / name).unlink()
        (part / "pred" / "overlay" / name).unlink()
    stamp = {p: p.stat().st_mtime_ns for p in (part / "pseudo").rglob("*.png")}
    _one_process(runs, part, "--resume")
    assert _files(part) == _files(full)
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # done files untouched
    pseudo = json.loads((part / "pseudo" / "metrics.json").read_text())
    assert (pseudo["written"], pseudo["skipped"]) == (2, 6)
    assert pseudo["miou"] == json.loads((full / "pseudo" / "metrics.json").read_text())["miou"]
    pred = json.loads((part / "pred" / "predict.json").read_text())
    assert (pred["written"], pred["skipped"]) == (2, 6)


def test_resume_refuses_another_segmenter(runs, tmp_path):
    from attnguide.errors import AttnGuideError
    from attnguide.tasks.prediction import predict

    out = tmp_path / "pred"
    predict(runs["segmenter"], out, data=str(runs["data"]), split="train", device="cpu", quiet=True)
    report = json.loads((out / "predict.json").read_text())
    report["config"]["checkpoint"] = "/elsewhere/best.pt"
    (out / "predict.json").write_text(json.dumps(report))
    with pytest.raises(AttnGuideError, match="other settings.*checkpoint"):
        predict(runs["segmenter"], out, data=str(runs["data"]), split="train", device="cpu",
                quiet=True, resume=True)
