"""The multi-label decision threshold: chosen on val by hand-checkable exact match, kept in
the checkpoint and the exported folder, applied by `attnguide evaluate --run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnguide.cli.main import main
from attnguide.data import make_scenes, open_dataset
from attnguide.engine.config import TrainConfig
from attnguide.engine.metrics import DECISION_THRESHOLDS, accuracy, choose_threshold
from attnguide.errors import AttnGuideError
from attnguide.models.export import export_model
from attnguide.models.trained import load_model
from attnguide.tasks.evaluate import decision_threshold, evaluate_classifier
from attnguide.tasks.training import train


def _logits(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.logit(torch.tensor(probabilities))


def test_choose_threshold_by_hand():
    # probabilities sit low: nothing is right at 0.5, both images are right for 0.15 .. 0.30
    logits = _logits([[0.32, 0.10], [0.40, 0.36]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert accuracy(logits, labels, True) == 0.0
    assert choose_threshold(logits, labels) == 0.3  # the best nearest 0.5
    assert accuracy(logits, labels, True, 0.3) == 1.0
    # a model already right at 0.5 keeps 0.5 (ties go to the threshold nearest it)
    assert choose_threshold(_logits([[0.9, 0.1], [0.8, 0.7]]), labels) == 0.5
    assert choose_threshold(logits, labels, grid=(0.7,)) == 0.7
    assert DECISION_THRESHOLDS[0] == 0.05 and DECISION_THRESHOLDS[-1] == 0.95 and len(DECISION_THRESHOLDS) == 19
    with pytest.raises(ValueError):
        choose_threshold(logits, labels, grid=())


def test_decision_threshold_option():
    assert decision_threshold("auto", None) == 0.5
    assert decision_threshold("AUTO", 0.35) == 0.35
    assert decision_threshold("0.2", 0.35) == 0.2
    for bad, words in (("half", "'auto' or a probability"), ("0", "strictly between"), ("1.5", "strictly between")):
        with pytest.raises(AttnGuideError, match=words):
            decision_threshold(bad, 0.35)


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("threshold")
    data = make_scenes(base / "scenes", n_train=16, n_val=8, n_test=8, image_size=48)
    cfg = TrainConfig(data=str(data), model="test_resnet", image_size=48, batch_size=8, epochs=1,
                      guidance="none", out=str(base / "run"), device="cpu", quiet=True)
    return data, Path(train(cfg).run_dir)


def _exact(run: Path, data: Path, split: str, threshold: float) -> float:
    trained = load_model(run)
    ds = open_dataset(data, split, image_size=48, train=False)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    labels = torch.stack([torch.as_tensor(ds[i]["labels"]) for i in range(len(ds))]).float()
    with torch.no_grad():
        return accuracy(trained.model(images), labels, True, threshold)


def test_the_run_keeps_the_threshold_it_chose_on_val(multilabel_run, tmp_path):
    data, run = multilabel_run
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    chosen = record["val_decision_threshold"]
    assert chosen in DECISION_THRESHOLDS
    # the record's threshold is the best exact match on val (to the grid's ties)
    assert _exact(run, data, "val", chosen) == max(_exact(run, data, "val", t) for t in DECISION_THRESHOLDS)
    assert load_model(run).decision_threshold == chosen
    folder = export_model(run, tmp_path / "model")
    assert json.loads((folder / "config.json").read_text())["decision_threshold"] == chosen
    assert load_model(folder).decision_threshold == chosen


def test_evaluate_applies_the_runs_threshold(multilabel_run, tmp_path, capsys):
    data, run = multilabel_run
    chosen = load_model(run).decision_threshold
    auto = evaluate_classifier(run, data, "test", device="cpu")
    assert auto["decision_threshold"] == chosen
    assert auto["accuracy"] == pytest.approx(_exact(run, data, "test", chosen))
    half = evaluate_classifier(run, data, "test", device="cpu", threshold=0.5)
    assert half["decision_threshold"] == 0.5
    assert half["accuracy"] == pytest.approx(_exact(run, data, "test", 0.5))
    assert half["map"] == auto["map"]  # the ranking does not depend on the threshold
    low = evaluate_classifier(run, data, "test", device="cpu", threshold=0.05)
    assert low["worst_group_accuracy"] >= half["worst_group_accuracy"]  # more pairs detected
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--split", "test", "--device", "cpu",
                 "--threshold", "0.05", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["decision_threshold"] == 0.05
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--threshold", "2"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(tmp_path), "--data", str(data), "--threshold", "0.3"]) == 2
    assert "goes with --run" in capsys.readouterr().err
