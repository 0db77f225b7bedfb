"""Group metrics: hand-computed values, groups read from groups.csv and from the scenes, the
engine's evaluation reporting them, and `attnguide evaluate --run`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from attnguide.cli.main import main
from attnguide.data import make_scenes, open_dataset
from attnguide.data.groups import Groups, dataset_groups, read_groups
from attnguide.engine.config import TrainConfig
from attnguide.engine.trainer import group_metrics
from attnguide.errors import AttnGuideError
from attnguide.metrics import MeanGroupAccuracy, WorstGroupAccuracy, pair_predictions
from attnguide.tasks.evaluate import classifier_markdown, evaluate_classifier
from attnguide.tasks.training import train
from tests.data.test_composite import _build, _inputs


def test_mean_group_accuracy_by_hand():
    preds = torch.tensor([0, 0, 1, 1, 1, 0, 1])
    target = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    bias = torch.tensor([0, 0, 1, 0, 1, 1, 1])
    mean, worst = MeanGroupAccuracy(2, 2), WorstGroupAccuracy(2, 2)
    for metric in (mean, worst):
        metric.update(preds, target, bias)
    # groups (0,0) 2/2, (0,1) 0/1, (1,0) 1/1, (1,1) 2/3
    assert float(mean.compute()) == pytest.approx((1 + 0 + 1 + 2 / 3) / 4)
    assert float(worst.compute()) == 0.0 and worst.groups_counted() == 4


def test_pair_predictions_single_and_multi_label():
    scores = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.1]])
    index, classes = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 1, 2])
    assert pair_predictions(scores, index, classes, multilabel=False).tolist() == [0, 0, 1, 1]
    # multi-label: a pair is its class when the class's logit >= 0 (sigmoid >= 0.5), else -1
    assert pair_predictions(scores, index, classes, multilabel=True).tolist() == [0, 2, 1, -1]
    # at a decision threshold of 0.4 the logit -0.1 (sigmoid 0.475) detects its class
    assert pair_predictions(scores, index, classes, multilabel=True, threshold=0.4).tolist() == [0, 2, 1, 2]
    for bad in (0.0, 1.0):
        with pytest.raises(AttnGuideError, match="probability in"):
            pair_predictions(scores, index, classes, multilabel=True, threshold=bad)


def test_group_metrics_table_by_hand():
    groups = Groups(["land", "water"], torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1]),
                    torch.tensor([0, 1, 1, 0]), "test")
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    out = group_metrics(scores, groups, 2, False, ["bird", "fish"])
    assert out["val_worst_group_accuracy"] == 0.0 and out["val_mean_group_accuracy"] == 0.75
    assert out["val_group_accuracy"] == {"bird": {"land": 1.0, "water": 0.0},
                                         "fish": {"land": 1.0, "water": 1.0}}


def test_groups_of_the_scenes_are_their_backgrounds(tmp_path):
    root = make_scenes(tmp_path / "s", n_train=6, n_val=4, n_test=4, image_size=48)
    ds = open_dataset(root, "val", image_size=48, train=False)
    groups = dataset_groups(ds)
    assert groups is not None and "background" in groups.source
    assert len(groups) == sum(len(s.labels) for s in ds.samples)
    cue = make_scenes(tmp_path / "c", n_train=6, n_val=4, n_test=4, image_size=48, bias="cue")
    cue_groups = read_groups(cue, "val")
    assert "cue" in cue_groups.source and set(cue_groups.bias_names) <= set(ds.class_names)


def test_groups_csv_errors(tmp_path):
    root = _build(_inputs(tmp_path), tmp_path / "d", n_train=4, n_val=2, n_test=2, image_size=32)
    rows = (root / "groups.csv").read_text().splitlines()
    (root / "groups.csv").write_text("image,klass,bias\n")
    with pytest.raises(AttnGuideError, match="lacks column"):
        read_groups(root, "test")
    first = rows[1].split(",")
    (root / "groups.csv").write_text(f"{rows[0]}\n{first[0]},cat,{first[2]}\n")
    with pytest.raises(AttnGuideError, match="unknown class 'cat'"):
        read_groups(root, "train")
    other = next(n for n in ("blue", "green", "red") if n != first[1])
    (root / "groups.csv").write_text(f"{rows[0]}\n{first[0]},{other},{first[2]}\n")
    with pytest.raises(AttnGuideError, match="is paired with class"):
        read_groups(root, "train")
    (root / "groups.csv").unlink()
    assert read_groups(root, "train") is None  # a folder data set without groups


@pytest.fixture(scope="module")
def composite_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("grouprun")
    data = _build(_inputs(base), base / "data", n_train=24, n_val=9, n_test=12, image_size=32,
                  bias=1.0)
    cfg = TrainConfig(data=str(data), model="test_resnet", image_size=32, batch_size=8, epochs=1,
                      guidance="none", out=str(base / "run"), device="cpu", quiet=True)
    result = train(cfg)
    return data, Path(result.run_dir)


def test_engine_reports_group_metrics(composite_run):
    _, run = composite_run
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= record["val_worst_group_accuracy"] <= record["val_mean_group_accuracy"] <= 1
    assert record["val_groups"] >= 1


def test_evaluate_classifier_matches_a_hand_count(composite_run):
    data, run = composite_run
    metrics = evaluate_classifier(run, data, "test", device="cpu")
    assert metrics["images"] == 12 and "cam_miou" in metrics
    # recount from the model's own predictions and the CSV's backgrounds
    from attnguide.models.trained import load_model

    trained = load_model(run)
    ds = open_dataset(data, "test", image_size=32, train=False, mode="single")
    batch = torch.stack([ds[i]["image"] for i in range(len(ds))])
    pred = trained.model(batch).argmax(1)
    groups = dataset_groups(ds)
    acc = {}
    for i, c, b in zip(groups.index.tolist(), groups.classes.tolist(), groups.bias.tolist(), strict=True):
        acc.setdefault((c, b), []).append(int(pred[i]) == c)
    per_group = [sum(v) / len(v) for v in acc.values()]
    assert metrics["worst_group_accuracy"] == pytest.approx(min(per_group))
    assert metrics["mean_group_accuracy"] == pytest.approx(sum(per_group) / len(per_group))
    assert metrics["accuracy"] == pytest.approx(float((pred == groups.classes).float().mean()))
    table = metrics["group_accuracy"]
    assert set(table) == set(ds.class_names)
    shown = [v for row in table.values() for v in row.values() if v is not None]
    assert sorted(shown) == pytest.approx(sorted(per_group))
    assert "| worst group accuracy |" in classifier_markdown(metrics)


def test_cli_evaluate_run(composite_run, tmp_path, capsys):
    data, run = composite_run
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--split", "test",
                 "--device", "cpu", "--json", str(out)]) == 0
    assert "worst group accuracy" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert not math.isnan(saved["worst_group_accuracy"]) and saved["split"] == "test"
    assert main(["evaluate", "--run", str(run), "--split", "test"]) == 2
    assert "--run needs --data" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--pred", str(tmp_path)]) == 2
    assert main(["evaluate", "--data", str(data)]) == 2
    assert "--pred DIR" in capsys.readouterr().err
