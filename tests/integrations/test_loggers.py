"""The engine's experiment loggers (attnguide.engine.loggers): a tiny `attnguide train` with
``--logger tensorboard,wandb`` (W&B offline, its files in tmp), both read back: every
number of metrics.jsonl arrives under its own key at the record's optimizer step, plus
``train_loss_step`` and ``lr`` after every step, the same names in both back ends;
``--tensorboard`` stays an alias; bad names are one clear error."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import pytest

from attnguide.engine import TrainConfig
from attnguide.engine.loggers import epoch_values, parse_loggers
from attnguide.errors import AttnGuideError

STEPS = 4  # 8 images, batch 4, 2 epochs


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from attnguide.data import make_scenes

    return make_scenes(tmp_path_factory.mktemp("loggers") / "scenes", n_train=8, n_val=4, n_test=2,
                       image_size=48, seed=0)


def _train(scenes: Path, out: Path, **kw) -> list[dict]:
    from attnguide.tasks.training import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(TrainConfig(**{**dict(data=str(scenes), model="test_resnet", image_size=48, epochs=2,
                                    batch_size=4, warmup_epochs=1, guidance="self", device="cpu",
                                    quiet=True, snapshots=0, out=str(out)), **kw}))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _tensorboard(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the event files in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B ``run-ID.wandb`` file: a 7-byte header (":W&B", 0xBEE1, version),
    then 32 KiB blocks of chunks, each crc32 (4), length (2, little-endian), type (1: full,
    2 first, 3 middle, 4 last) and data; a block's tail shorter than 7 bytes is padding."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, records, parts = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(parts)
            parts = b""
    return records


def _offline(monkeypatch, home: Path) -> None:
    pytest.importorskip("wandb", reason="W&B is not installed: pip install -e '.[dev]' (or '.[wandb]')")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def _wandb_history(folder: Path, path: Path | None = None) -> tuple[dict[str, dict[int, float]], dict]:
    """({key: {step: value}}, the run's config) of the one offline run under ``folder`` (or
    of the run file ``path``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    if path is None:
        (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    history: dict[str, dict[int, float]] = {}
    config: dict = {}
    records = []
    deadline = time.monotonic() + 60  # W&B's writer process may still be flushing the file:
    while True:  # read it once it holds the run's exit record (written last, at finish)
        records = [pb.Record.FromString(data) for data in _wandb_records(path)]
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in record.history.item}
            for key, value in row.items():
                if not key.startswith("_"):
                    history.setdefault(key, {})[record.history.step.num] = value
        elif kind == "run":
            config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
    return history, config


def _expected(records: list[dict]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in epoch_values(record).items():
            out.setdefault(key, {})[record["step"]] = value
    return out


def test_tensorboard_and_wandb_offline_receive_every_metric_under_one_name(scenes, tmp_path,
                                                                        monkeypatch):
    pytest.importorskip("tensorboard", reason="TensorBoard is not installed: pip install -e '.[dev]'")
    _offline(monkeypatch, tmp_path / "wandb-home")
    run = tmp_path / "run"
    records = _train(scenes, run, logger="tensorboard,wandb", wandb_project="tiny")

    expected = _expected(records)
    assert {"train_loss", "train_loss_am", "val_accuracy", "val_cam_miou", "epoch", "lr"} <= expected.keys()
    tb = _tensorboard(run / "tensorboard")
    wb, config = _wandb_history(tmp_path / "wandb-home")
    assert tb.keys() == wb.keys() == expected.keys() | {"train_loss_step"}
    for key, by_step in expected.items():
        for step, value in by_step.items():
            assert tb[key][step] == pytest.approx(value, rel=1e-6), (key, step)  # TB stores float32
            assert wb[key][step] == pytest.approx(value, rel=1e-12), (key, step)
    assert sorted(tb["train_loss_step"]) == sorted(wb["train_loss_step"]) == list(range(1, STEPS + 1))
    # each epoch's train_loss is the mean of its steps' losses (equal batches)
    for record in records:
        steps = range(record["step"] - STEPS // 2 + 1, record["step"] + 1)
        mean = sum(wb["train_loss_step"][s] for s in steps) / len(steps)
        assert math.isclose(mean, record["train_loss"], rel_tol=1e-6)
    assert config["model"] == "test_resnet" and config["logger"] == "tensorboard,wandb"
    assert (run / "wandb" / "run_id").read_text().strip()


def test_tensorboard_flag_is_an_alias(scenes, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is not installed: pip install -e '.[dev]'")
    records = _train(scenes, tmp_path / "run", tensorboard=True)
    tb = _tensorboard(tmp_path / "run" / "tensorboard")
    assert tb.keys() == _expected(records).keys() | {"train_loss_step"}
    assert tb["val_accuracy"][records[-1]["step"]] == pytest.approx(records[-1]["val_accuracy"])


def test_logger_names_are_checked():
    assert parse_loggers("none") == ()
    assert parse_loggers("wandb", tensorboard=True) == ("tensorboard", "wandb")
    assert parse_loggers("TensorBoard, wandb,tensorboard") == ("tensorboard", "wandb")
    with pytest.raises(AttnGuideError, match="--logger 'mlflow' is not a logger; use tensorboard, wandb"):
        TrainConfig(data="d", logger="mlflow").validate()


def test_cli_logger_option_bad_value_is_exit_2(tmp_path, capsys):
    from attnguide.cli.main import main

    assert main(["train", "--data", str(tmp_path), "--logger", "wandbx", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--logger 'wandbx'" in err[0]


def test_a_resumed_run_continues_its_wandb_run(scenes, tmp_path, monkeypatch):
    from attnguide.cli.main import main

    _offline(monkeypatch, tmp_path / "wandb-home")
    run = tmp_path / "run"
    _train(scenes, run, epochs=1, warmup_epochs=0, logger="wandb")
    run_id = (run / "wandb" / "run_id").read_text().strip()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert (run / "wandb" / "run_id").read_text().strip() == run_id
    files = sorted((tmp_path / "wandb-home").glob("wandb/offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # the same W&B run, twice
    # one of the two files is the resumed run's (modification times do not say which: the
    # first run's writer may still touch its file when the second starts, on a busy machine)
    epochs = [_wandb_history(tmp_path, f)[0].get("epoch") for f in files]
    assert {4: 2.0} in epochs and {2: 1.0} in epochs  # each epoch at its optimizer step


def test_a_missing_back_end_is_named_before_the_run_folder_is_made(scenes, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(AttnGuideError, match=r"--logger wandb needs the wandb package: pip install 'attnguide\[wandb\]'"):
        _train(scenes, tmp_path / "run", logger="wandb")
    assert not (tmp_path / "run").exists()
