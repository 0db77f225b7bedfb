"""`attnguide visualize` and `attnguide plot` through `attnguide.cli.main.main`."""

from __future__ import annotations

import pytest
from PIL import Image

from attnguide import viz
from attnguide.cli.main import main

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.filterwarnings("ignore:layer 'layer3' gives")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_visualize_two_runs_and_plot(runs, scenes, tmp_path):
    out = tmp_path / "before_after.png"
    assert main(["visualize", str(runs["baseline"]), str(runs["ext"]), "--data", str(scenes),
                 "--split", "val", "--indices", "0,3", "--max-classes", "1", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == viz.grid_size(2, 1 + 1 + 1 * 2 * 2)
    assert main(["plot", str(runs["baseline"]), str(runs["ext"]), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file()


def test_defaults_data_from_the_run_and_files_in_the_run(runs):
    # --data defaults to the data set in the run's config; --out to RUN/attention_<split>.png
    assert main(["visualize", str(runs["ext"]), "--images", "1"]) == 0
    with Image.open(runs["ext"] / "attention_val.png") as im:
        assert im.size[1] == viz.grid_size(1, 1)[1]
    assert main(["plot", str(runs["ext"])]) == 0
    assert (runs["ext"] / "curves.png").is_file()


@pytest.mark.parametrize("args,message", [
    (["visualize", "{missing}", "--data", "{scenes}"], "does not exist"),
    (["visualize", "{ext}", "--data", "{other}"], "trained on classes"),
    (["visualize", "{ext}", "--data", "{scenes}", "--indices", "0,99"], "out of range"),
    (["visualize", "{ext}", "--data", "{scenes}", "--images", "2", "--indices", "1"], "not both"),
    (["visualize", "{ext}", "--data", "{scenes}", "--indices", "a,b"], "comma-separated"),
    (["visualize", "{ext}", "--data", "{scenes}", "--cmap", "nope"], "unknown colour map"),
    (["plot", "{scenes}"], "has no metrics.jsonl"),
    (["plot", "{missing}"], "does not exist"),
], ids=["missing run", "class mismatch", "index", "images and indices", "bad indices",
        "bad cmap", "no metrics", "missing plot run"])
def test_bad_input_is_one_red_line_and_exit_2(runs, scenes, tmp_path, capsys, args, message):
    from attnguide.data import make_scenes

    other = make_scenes(tmp_path / "three", n_train=2, n_val=2, n_test=2, image_size=48, num_classes=3)
    values = {"missing": tmp_path / "missing", "scenes": scenes, "other": other, "ext": runs["ext"]}
    argv = [a.format(**values) for a in args] + ["--out", str(tmp_path / "x.png")]
    assert main(argv) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "x.png").exists()
