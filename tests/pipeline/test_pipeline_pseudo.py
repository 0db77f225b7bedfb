"""`attnguide pseudo-label` and `attnguide evaluate`: files, metrics, resume, CRF, bad input, CLI."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from attnguide import AttnGuideError, GuidedAttention
from attnguide.data import open_dataset
from attnguide.io.labels import load_label_png
from attnguide.tasks.common import label_path, parse_scales
from attnguide.tasks.evaluate import evaluate_predictions
from attnguide.tasks.pseudo_labels import PseudoLabelConfig, pseudo_label
from attnguide.wsss.crf import parse_crf_params

pytestmark = pytest.mark.filterwarnings("ignore:layer '.*' gives a .* attention map")


def _cfg(classifier, scenes, out, **kw) -> PseudoLabelConfig:
    kw.setdefault("scales", (1.0, 1.5))
    return PseudoLabelConfig(run=str(classifier), data=str(scenes), out=str(out), device="cpu", quiet=True, **kw)


def _names(scenes, split="train") -> list[str]:
    return [s.name for s in open_dataset(scenes, split, train=False, require_labels=False).samples]


def _app() -> typer.Typer:
    from attnguide.cli.seg import register

    app = typer.Typer()
    register(app)
    return app


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------- pseudo-label


def test_writes_one_palette_png_per_image_and_metrics(classifier, scenes, tmp_path):
    out = tmp_path / "pl"
    res = pseudo_label(_cfg(classifier, scenes, out, save_cams=True))
    names = _names(scenes)
    assert (res.written, res.skipped, res.images) == (24, 0, 24)
    ds = open_dataset(scenes, "train", train=False)
    for i, name in enumerate(names[:6]):
        path = label_path(out, name)
        with Image.open(path) as im:
            assert im.mode == "P"
        label = load_label_png(path)
        image, gt = ds.load_raw(i)
        assert label.shape == image.shape[:2]
        allowed = {0} | {c + 1 for c in ds.samples[i].labels}  # GT classes only, + background
        assert set(np.unique(label).tolist()) <= allowed
        cams = np.load(label_path(out / "cams", name, ".npz"))
        assert cams["cams"].shape == (len(ds.samples[i].labels), *image.shape[:2])
        assert cams["classes"].tolist() == list(ds.samples[i].labels)
        assert 0 <= cams["cams"].min() and cams["cams"].max() <= 1.0 + 1e-3
    assert not (out / "crf").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["crf"] is None and metrics["images"] == 24
    assert set(metrics["per_class"]) == {"background", *ds.class_names}
    assert metrics["miou"] == pytest.approx(res.metrics.miou)
    # the metrics equal an independent evaluation of the written folder
    assert evaluate_predictions(out, str(scenes), "train").miou == pytest.approx(res.metrics.miou)


def test_crf_labels_and_resume_skips_finished_images(classifier, scenes, tmp_path):
    out = tmp_path / "pl"
    first = pseudo_label(_cfg(classifier, scenes, out, crf=True, bg="power:4"))
    names = _names(scenes)
    assert all(label_path(out / "crf", n).is_file() for n in names)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["crf"]["miou"] == pytest.approx(first.crf_metrics.miou)
    assert set(metrics["crf"]["per_class"]) == set(metrics["per_class"])
    # everything done: nothing recomputed, the metrics still cover the whole split
    again = pseudo_label(_cfg(classifier, scenes, out, crf=True, bg="power:4", resume=True))
    assert (again.written, again.skipped) == (0, 24)
    assert again.metrics.miou == pytest.approx(first.metrics.miou)
    assert again.crf_metrics.miou == pytest.approx(first.crf_metrics.miou)
    # an image whose CRF file is missing (killed in between) is redone
    label_path(out / "crf", names[3]).unlink()
    before = label_path(out, names[5]).stat().st_mtime_ns
    third = pseudo_label(_cfg(classifier, scenes, out, crf=True, bg="power:4", resume=True))
    assert (third.written, third.skipped) == (1, 23)
    assert label_path(out / "crf", names[3]).is_file()
    assert label_path(out, names[5]).stat().st_mtime_ns == before
    assert third.crf_metrics.miou == pytest.approx(first.crf_metrics.miou)
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(AttnGuideError, match="other settings.*bg 'power:4' -> 'threshold:0.15'"):
        pseudo_label(_cfg(classifier, scenes, out, crf=True, resume=True))


def test_crf_worker_pool_gives_the_same_labels(classifier, scenes, pseudo, tmp_path):
    out = tmp_path / "pool"
    res = pseudo_label(PseudoLabelConfig(run=str(classifier), data=str(scenes), out=str(out), crf=True,
                                         scales=(1.0, 0.5, 1.5), workers=2, device="cpu", quiet=True))
    assert res.written == 24
    for name in _names(scenes):
        assert np.array_equal(load_label_png(label_path(out / "crf", name)),
                              load_label_png(label_path(pseudo / "crf", name)))


def test_one_attention_call_per_scale_and_batch_with_flip_in_the_batch(classifier, scenes, tmp_path,
                                                                        monkeypatch):
    calls = []
    original = GuidedAttention.attention

    def spy(self, images, classes=None, **kw):
        calls.append((tuple(images.shape), kw.get("resize"), kw.get("normalize")))
        return original(self, images, classes, **kw)

    monkeypatch.setattr(GuidedAttention, "attention", spy)
    # the 8 val images (48 px) in one batch, their mirror images beside them
    pseudo_label(_cfg(classifier, scenes, tmp_path / "pl", split="val", scales=(1.0, 0.5, 2.0), batch_size=16))
    assert [c[0] for c in calls] == [(16, 3, 48, 48), (16, 3, 24, 24), (16, 3, 96, 96)]
    assert all(c[1:] == (False, False) for c in calls)  # raw maps
    calls.clear()
    pseudo_label(_cfg(classifier, scenes, tmp_path / "bs3", split="val", scales=(1.0, 0.5), batch_size=3))
    assert [c[0][0] for c in calls] == [6, 6, 6, 6, 4, 4]  # batches of 3, 3 and 2 images
    calls.clear()
    pseudo_label(_cfg(classifier, scenes, tmp_path / "noflip", split="val", scales=(1.0,), flip=False,
                      batch_size=1))
    assert [c[0] for c in calls] == [(1, 3, 48, 48)] * 8


def test_batched_cams_give_the_labels_of_one_image_at_a_time(classifier, scenes, tmp_path):
    one = pseudo_label(_cfg(classifier, scenes, tmp_path / "one", batch_size=1, save_cams=True))
    many = pseudo_label(_cfg(classifier, scenes, tmp_path / "many", batch_size=5, save_cams=True))
    assert one.metrics.miou == many.metrics.miou
    for name in _names(scenes):
        assert np.array_equal(load_label_png(label_path(tmp_path / "one", name)),
                              load_label_png(label_path(tmp_path / "many", name)))
        a = np.load(label_path(tmp_path / "one" / "cams", name, ".npz"))
        b = np.load(label_path(tmp_path / "many" / "cams", name, ".npz"))
        assert np.array_equal(a["classes"], b["classes"])
        np.testing.assert_allclose(a["cams"].astype(np.float32), b["cams"].astype(np.float32), atol=2e-3)


def test_predicted_classes_for_images_without_labels(classifier, scenes, tmp_path):
    data = tmp_path / "scenes"
    shutil.copytree(scenes, data)
    rows = (data / "val.csv").read_text().splitlines()
    header, body = rows[0], [r.split(",") for r in rows[1:]]
    for r in body[:4]:
        r[1] = ""  # no image-level labels
    (data / "val.csv").write_text("\n".join([header, *[",".join(r) for r in body]]) + "\n")
    res = pseudo_label(_cfg(classifier, data, tmp_path / "pl", split="val", class_threshold=0.0))
    assert res.written == 8
    label = load_label_png(label_path(tmp_path / "pl", _names(data, "val")[0]))
    assert set(np.unique(label).tolist()) - {0}  # threshold 0: every class gets a CAM
    res = pseudo_label(_cfg(classifier, data, tmp_path / "gt", split="val", classes="gt"))
    label = load_label_png(label_path(tmp_path / "gt", _names(data, "val")[0]))
    assert np.unique(label).tolist() == [0]  # no classes: all background


# ---------------------------------------------------------------------- bad input


def test_class_list_mismatch_names_both_lists(classifier, scenes, tmp_path):
    data = tmp_path / "other"
    shutil.copytree(scenes, data)
    names = (data / "classes.txt").read_text().split()
    (data / "classes.txt").write_text("\n".join([names[1], names[0], *names[2:]]) + "\n")
    swap = {names[0]: names[1], names[1]: names[0]}
    for path in data.glob("*.csv"):  # the same data with the two names swapped: masks still agree
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        for r in rows[1:]:
            r[1] = " ".join(swap.get(n, n) for n in r[1].split())
            for column in ("boxes", "points"):  # they name classes too: drop them
                if column in rows[0]:
                    r[rows[0].index(column)] = ""
        with path.open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)
    with pytest.raises(AttnGuideError, match="class lists differ") as err:
        pseudo_label(_cfg(classifier, data, tmp_path / "pl"))
    assert "[boat, disc" in str(err.value) and "[disc, boat" in str(err.value)


def test_crf_without_pydensecrf_names_the_extra(classifier, scenes, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(AttnGuideError, match=r"attnguide\[crf\]"):
        pseudo_label(_cfg(classifier, scenes, tmp_path / "pl", crf=True))
    assert not (tmp_path / "pl").exists()


def test_option_parsing_errors():
    assert parse_scales("1,0.5, 2") == (1.0, 0.5, 2.0)
    assert parse_crf_params("psa,bilateral_sxy=40,iterations=5").bilateral_sxy == 40.0
    assert parse_crf_params("deeplab").bilateral_compat == 4.0
    for bad in ("1,x", "0,1", ""):
        with pytest.raises(AttnGuideError, match="--scales"):
            parse_scales(bad)
    for bad in ("nope", "psa,foo=1", "psa,bilateral_sxy=x"):
        with pytest.raises(AttnGuideError, match="--crf-params"):
            parse_crf_params(bad)
    with pytest.raises(AttnGuideError, match="background rule"):
        PseudoLabelConfig(run="r", data="d", bg="power").validate()


# ---------------------------------------------------------------------- evaluate


def test_evaluate_missing_and_non_label_map_files_are_named(pseudo, scenes, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(pseudo, pred)
    names = _names(scenes)
    label_path(pred, names[2]).unlink()
    label_path(pred, names[7]).unlink()
    with pytest.raises(AttnGuideError, match="lacks 2 of the 24") as err:
        evaluate_predictions(pred, str(scenes), "train")
    assert names[2] in str(err.value) and names[7] in str(err.value)
    shutil.copy(pseudo / f"{names[2]}.png", label_path(pred, names[2]))
    shutil.copy(pseudo / f"{names[7]}.png", label_path(pred, names[7]))
    rgb = label_path(pred, names[4])
    Image.open(Path(scenes) / f"{names[4]}.png").convert("RGB").save(rgb)
    with pytest.raises(AttnGuideError, match="not a label map") as err:
        evaluate_predictions(pred, str(scenes), "train")
    assert str(rgb) in str(err.value)
    Image.fromarray(np.full((48, 48), 9, np.uint8)).save(rgb)  # class 9 of 6
    with pytest.raises(AttnGuideError, match=r"values \[9\]") as err:
        evaluate_predictions(pred, str(scenes), "train")
    assert str(rgb) in str(err.value)


def test_evaluate_against_a_ground_truth_folder(pseudo, scenes, tmp_path):
    by_split = evaluate_predictions(pseudo, str(scenes), "train")
    # the scenes masks folder holds every split: evaluate the train masks as a GT folder
    gt = tmp_path / "gt_train"
    (gt / "images").mkdir(parents=True)
    for path in sorted((Path(scenes) / "masks").glob("train_0*.png")):
        shutil.copy(path, gt / "images" / path.name)
    by_folder = evaluate_predictions(pseudo, gt=str(gt), classes=str(Path(scenes) / "classes.txt"))
    assert by_folder.miou == pytest.approx(by_split.miou)
    assert np.array_equal(by_folder.confusion, by_split.confusion)
    with pytest.raises(AttnGuideError, match="name the classes"):
        evaluate_predictions(pseudo, gt=str(gt))


# ---------------------------------------------------------------------- CLI


def test_cli_pseudo_label_then_evaluate(classifier, scenes, tmp_path):
    app = _app()
    runner = CliRunner()
    out = tmp_path / "pl"
    result = runner.invoke(app, ["pseudo-label", str(classifier), "--data", str(scenes), "--split", "train",
                                 "--out", str(out), "--scales", "1.0,1.5", "--no-flip", "--bg", "threshold:0.2",
                                 "--crf", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "24 pseudo labels written" in result.output and "mIoU" in result.output
    assert len(list(out.glob("images/*.png"))) == 24 and len(list((out / "crf").glob("images/*.png"))) == 24
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["scales"], config["flip"], config["bg"]) == ([1.0, 1.5], False, "threshold:0.2")

    result = runner.invoke(app, ["pseudo-label", str(classifier), "--data", str(scenes), "--out", str(out),
                                 "--scales", "1.0,1.5", "--no-flip", "--bg", "threshold:0.2", "--crf",
                                 "--resume", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "0 pseudo labels written" in result.output and "24 skipped" in result.output

    report = tmp_path / "eval.json"
    table = tmp_path / "eval.md"
    result = runner.invoke(app, ["evaluate", "--pred", str(out / "crf"), "--data", str(scenes), "--split",
                                 "train", "--json", str(report), "--markdown", str(table)])
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and "boat" in result.output
    data = json.loads(report.read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert data["miou"] == pytest.approx(metrics["crf"]["miou"])
    assert data["per_class"] == pytest.approx(metrics["crf"]["per_class"])
    assert "| **mIoU** |" in table.read_text()


def test_cli_bad_input_is_one_line_and_exit_2(classifier, scenes, tmp_path, capsys):
    import attnguide.cli.main as cli
    from attnguide.cli.seg import register

    register(cli.app)
    register(cli.app)  # idempotent
    assert [c.name for c in cli.app.registered_commands].count("pseudo-label") == 1
    assert cli.main(["evaluate", "--pred", str(tmp_path), "--data", str(scenes), "--split", "val"]) == 2
    err = _one_error_line(capsys)
    assert "lacks 8 of the 8 label maps" in err and "images/val_00000" in err
    assert cli.main(["pseudo-label", str(classifier), "--data", str(scenes), "--bg", "power"]) == 2
    assert "background rule" in _one_error_line(capsys)
    assert cli.main(["pseudo-label", str(tmp_path / "nothing"), "--data", str(scenes)]) == 2
    assert "does not exist" in _one_error_line(capsys)


def _box_rasters(sample, size) -> dict[int, np.ndarray]:
    """class -> (H, W) bool union of its boxes (pixel centres inside the box)."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    out: dict[int, np.ndarray] = {}
    for c, x0, y0, x1, y1 in sample.boxes:
        inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        out[c] = out.get(c, np.zeros((h, w), bool)) | inside
    return out


def test_boxes_on_keeps_each_class_inside_its_own_boxes(classifier, scenes, tmp_path):
    """--boxes on: no pixel outside a class's boxes gets that class, so outside every box is
    background; --boxes off (what an unguided run gets under auto) labels beyond them."""
    on = pseudo_label(_cfg(classifier, scenes, tmp_path / "on", boxes="on"))
    off = pseudo_label(_cfg(classifier, scenes, tmp_path / "off", boxes="off"))
    assert on.config["within_boxes"] is True and off.config["within_boxes"] is False
    ds = open_dataset(scenes, "train", train=False)
    outside_off = 0
    for sample in ds.samples:
        assert sample.boxes, "the scenes' CSV gives every image its boxes"
        label_on = load_label_png(label_path(tmp_path / "on", sample.name))
        label_off = load_label_png(label_path(tmp_path / "off", sample.name))
        boxes = _box_rasters(sample, label_on.shape)
        for value in np.unique(label_on[label_on > 0]):
            assert not (label_on == value)[~boxes[int(value) - 1]].any(), sample.name
        anywhere = np.any(list(boxes.values()), axis=0)
        assert (label_on[~anywhere] == 0).all()
        outside_off += int((label_off[~anywhere] > 0).sum())
    assert outside_off > 0, "the unbounded CAMs spill out of the boxes somewhere"
    assert on.metrics.miou > off.metrics.miou


def test_boxes_auto_follows_what_the_run_was_trained_on(classifier, scenes, tmp_path):
    import torch

    plain = pseudo_label(_cfg(classifier, scenes, tmp_path / "plain", scales=(1.0,)))
    assert plain.config["within_boxes"] is False  # guidance none: boxes unused
    ckpt = torch.load(Path(classifier) / "last.pt", map_location="cpu", weights_only=False)
    ckpt["config"]["guidance"] = "self+energy"  # as `train --guidance self+energy` records it
    boxed_run = tmp_path / "boxed.pt"
    torch.save(ckpt, boxed_run)
    boxed = pseudo_label(_cfg(boxed_run, scenes, tmp_path / "boxed", scales=(1.0,)))
    assert boxed.config["within_boxes"] is True


def test_boxes_on_without_boxes_names_the_fix(classifier, scenes, tmp_path):
    data = tmp_path / "noboxes"
    shutil.copytree(scenes, data)
    for split in ("train", "val", "test"):
        path = data / f"{split}.csv"
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        with path.open("w", newline="") as f:
            keep = [k for k in rows[0] if k not in ("boxes", "points")]
            writer = csv.DictWriter(f, fieldnames=keep, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    with pytest.raises(AttnGuideError, match="--boxes on: no image of split 'train'.*--boxes off"):
        pseudo_label(_cfg(classifier, data, tmp_path / "out", boxes="on"))
    with pytest.raises(AttnGuideError, match="--boxes must be one of auto, on, off"):
        pseudo_label(_cfg(classifier, scenes, tmp_path / "out", boxes="yes"))
