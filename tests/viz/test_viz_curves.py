"""`plot_curves`: a PNG from metrics.jsonl, the quantities drawn, guided spans, bad input."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from attnguide import viz
from attnguide.errors import AttnGuideError

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.filterwarnings("ignore:layer 'layer3' gives")


def test_curves_png_of_one_and_two_runs(runs, tmp_path):
    one = viz.plot_curves(runs["ext"], tmp_path / "one.png")
    two = viz.plot_curves([runs["baseline"], runs["ext"]], tmp_path / "two.png")
    for path in (one, two):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400


def test_unused_loss_terms_are_left_out(runs):
    baseline = viz.read_metrics(runs["baseline"])
    ext = viz.read_metrics(runs["ext"] / "metrics.jsonl")
    keys = viz.curve_keys([baseline])
    assert "train_loss_cls" in keys and "val_cam_miou" in keys and "lr" in keys
    assert "train_loss_am" not in keys and "train_loss_ext" not in keys  # never guided
    both = viz.curve_keys([baseline, ext])
    assert "train_loss_am" in both and "train_loss_ext" in both
    assert viz.curve_keys([baseline], keys=["train_loss_am", "nope"]) == ["train_loss_am"]


def test_guided_epochs_become_shaded_spans():
    assert viz._spans([2, 3, 4, 7]) == [(1.5, 4.5), (6.5, 7.5)]
    assert viz._spans([]) == []


def test_bad_runs_name_the_fix(runs, tmp_path):
    with pytest.raises(AttnGuideError, match="does not exist"):
        viz.plot_curves([tmp_path / "missing"], tmp_path / "c.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AttnGuideError, match="has no metrics.jsonl"):
        viz.plot_curves([tmp_path / "empty"], tmp_path / "c.png")
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(AttnGuideError, match="no finished epoch"):
        viz.plot_curves([tmp_path / "empty"], tmp_path / "c.png")
    (tmp_path / "empty" / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n{oops\n")
    with pytest.raises(AttnGuideError, match="line 2 is not JSON"):
        viz.plot_curves([tmp_path / "empty"], tmp_path / "c.png")
    with pytest.raises(AttnGuideError, match="none of nope"):
        viz.plot_curves([runs["ext"]], tmp_path / "c.png", keys=["nope"])
    assert not (tmp_path / "c.png").exists()
