"""`attnguide segment` and `attnguide predict`: smp and DeepLab-LargeFOV, checkpoints,
resume, val mIoU, predictions that `evaluate` scores like training did."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from pipeline_helpers import fit_until_first_save, same_weights
from typer.testing import CliRunner

from attnguide import AttnGuideError
from attnguide.data import open_dataset
from attnguide.io.labels import load_label_png
from attnguide.tasks.common import label_path
from attnguide.tasks.evaluate import evaluate_predictions
from attnguide.tasks.prediction import load_segmenter, predict
from attnguide.tasks.segmentation import SegmentConfig, SegmentTrainer, config_from_options, segment

pytestmark = pytest.mark.filterwarnings("ignore:layer '.*' gives a .* attention map")


def _cfg(scenes, labels, out, **kw) -> SegmentConfig:
    base = dict(data=str(scenes), labels=str(labels), arch="unet", encoder="resnet18", crop_size=32,
                batch_size=4, iterations=2, lr=0.01, device="cpu", quiet=True, out=str(out))
    base.update(kw)
    return SegmentConfig(**base)


@pytest.fixture(scope="module")
def unet_run(scenes, pseudo, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "unet"
    return segment(_cfg(scenes, pseudo / "crf", out, crf_eval=True))


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_unet_on_pseudo_labels_writes_checkpoints_and_val_miou(unet_run):
    run = unet_run.run_dir
    assert {"last.pt", "best.pt", "metrics.jsonl", "segment.yaml"} <= {p.name for p in run.iterdir()}
    (record,) = _records(run)
    assert record["step"] == 2 and record["best"]
    assert 0 <= record["val_miou"] <= 1 and 0 <= record["val_miou_crf"] <= 1
    assert len(record["val_iou"]) == 6
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert (ckpt["kind"], ckpt["arch"], ckpt["encoder"]) == ("segmenter", "unet", "resnet18")
    assert ckpt["class_names"][0] == "background" and ckpt["step"] == 2


def test_resume_continues_and_matches_an_uninterrupted_run(scenes, pseudo, tmp_path):
    straight = segment(_cfg(scenes, pseudo, tmp_path / "a", iterations=4, val_split=""))
    # the same run, killed right after the checkpoint of iteration 2 (mid-epoch: 6 batches an epoch)
    fit_until_first_save(SegmentTrainer(_cfg(scenes, pseudo, tmp_path / "b", iterations=4,
                                             val_split="", checkpoint_every=2)))
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 2
    resumed = segment(config_from_options({"resume": str(tmp_path / "b")}))  # config from the run
    assert resumed.history[-1]["step"] == 4
    assert same_weights(straight.last_checkpoint, resumed.last_checkpoint)


def test_deeplab_largefov_on_ground_truth_with_10x_head_lr(scenes, tmp_path):
    # the paper's recipe, as benchmarks/voc2012/configs/segment-largefov.yaml spells it
    trainer = SegmentTrainer(_cfg(scenes, "gt", tmp_path / "dl", arch="deeplab-largefov", encoder=None,
                                  crop_size=24, batch_size=2, iterations=1, lr=1e-3, schedule="step",
                                  optimizer="sgd", head_lr_mult=10, encoder_lr_mult=1.0,
                                  warmup_iterations=0))
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == pytest.approx([1e-3, 1e-2])
    assert trainer.optimizer.param_groups[1]["params"][0] is trainer.model.classifier.weight
    result = trainer.fit()
    assert result.best_checkpoint.is_file()
    seg = load_segmenter(result.run_dir)
    assert seg.arch == "deeplab-largefov"
    label, probs = seg.predict(np.zeros((40, 52, 3), np.uint8))
    assert label.shape == (40, 52) and probs.shape == (6, 40, 52)


def test_predict_folder_and_split_then_evaluate(unet_run, scenes, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("val_00000.png", "val_00003.png"):
        shutil.copy(scenes / "images" / name, images / name)
    written = predict(unet_run.run_dir, tmp_path / "out", images, overlay=True, device="cpu", quiet=True)
    assert [p.name for p in written] == ["val_00000.png", "val_00003.png"]
    with Image.open(tmp_path / "out" / "overlay" / "val_00003.png") as im:
        assert im.mode == "RGB" and im.size == (48, 48)
    assert load_label_png(written[0]).max() < 6

    preds = tmp_path / "val"
    predict(unet_run.run_dir, preds, data=str(scenes), split="val", device="cpu", quiet=True)
    metrics = evaluate_predictions(preds, str(scenes), "val")
    assert metrics.miou == pytest.approx(_records(unet_run.run_dir)[-1]["val_miou"])


def test_bad_input(scenes, pseudo, classifier, unet_run, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(pseudo, labels)
    names = [s.name for s in open_dataset(scenes, "train", train=False).samples]
    label_path(labels, names[1]).unlink()
    with pytest.raises(AttnGuideError, match="lacks 1 of the 24") as err:
        SegmentTrainer(_cfg(scenes, labels, tmp_path / "x"))
    assert names[1] in str(err.value)
    with pytest.raises(AttnGuideError, match="not a multiple of 16.*--crop-size 48"):
        SegmentTrainer(_cfg(scenes, pseudo, tmp_path / "x", arch="deeplabv3plus", crop_size=40))
    with pytest.raises(AttnGuideError, match="either --epochs or --iterations"):
        SegmentTrainer(_cfg(scenes, pseudo, tmp_path / "x", epochs=1))
    with pytest.raises(AttnGuideError, match="fixed VGG16 encoder"):
        SegmentTrainer(_cfg(scenes, pseudo, tmp_path / "x", arch="deeplab-largefov"))
    with pytest.raises(AttnGuideError, match="classifier checkpoint"):
        load_segmenter(classifier)
    with pytest.raises(AttnGuideError, match="--arch unet --encoder resnet18"):
        SegmentTrainer(_cfg(scenes, pseudo, tmp_path / "x", encoder="resnet34", resume=str(unet_run.run_dir)))


def test_cli_segment_and_predict(scenes, pseudo, unet_run, tmp_path):
    from attnguide.cli.seg import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["segment", "--data", str(scenes), "--labels", str(pseudo), "--arch",
                                 "deeplab-largefov", "--crop-size", "24", "--batch-size", "2",
                                 "--iterations", "1", "--schedule", "poly", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "iter 1/1" in result.output and (out / "best.pt").is_file()
    result = runner.invoke(app, ["segment", "--resume", str(out), "--iterations", "2"])
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and [r["step"] for r in _records(out)] == [1, 2]
    result = runner.invoke(app, ["predict", str(out), "--images", str(scenes / "images" / "test_00001.png"),
                                 "--out", str(tmp_path / "p"), "--overlay", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "test_00001.png").is_file() and (tmp_path / "p" / "overlay" / "test_00001.png").is_file()


def test_segmenter_checkpoint_is_not_a_classifier_run(tmp_path):
    """load_model on a segmenter checkpoint names the mistake instead of a KeyError."""
    import pytest

    from attnguide.errors import AttnGuideError
    from attnguide.io.checkpoints import save_checkpoint
    from attnguide.models.trained import load_model

    save_checkpoint({"kind": "segmenter", "model": {}}, tmp_path / "last.pt")
    with pytest.raises(AttnGuideError, match="segmenter checkpoint, not a classifier run"):
        load_model(tmp_path / "last.pt")


def test_defaults_adamw_encoder_split_warmup_and_poly(scenes, tmp_path):
    from attnguide.engine.segmenter import lr_factor

    cfg = _cfg(scenes, "gt", tmp_path / "d", iterations=40, lr=2e-3, encoder_lr_mult=0.1, head_lr_mult=2)
    trainer = SegmentTrainer(cfg)
    opt = trainer.optimizer
    assert isinstance(opt, torch.optim.AdamW)
    # encoder at 0.1x, decoder at 1x, segmentation head at 2x; every parameter in one group
    enc = {id(p) for p in trainer.model.encoder.parameters()}
    head = {id(p) for p in trainer.model.segmentation_head.parameters()}
    peak = [g["initial_lr"] for g in opt.param_groups]
    assert peak == pytest.approx([2e-4, 2e-3, 4e-3])
    assert {id(p) for p in opt.param_groups[0]["params"]} == enc
    assert {id(p) for p in opt.param_groups[2]["params"]} == head
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(trainer.model.parameters()))
    # warm-up: 5 % of 40 iterations = 2, then poly
    f = lr_factor(cfg, 40)
    assert [f(0), f(1)] == pytest.approx([0.5 * (1 - 0 / 40) ** 0.9, (1 - 1 / 40) ** 0.9])
    assert f(20) == pytest.approx(0.5 ** 0.9) and f(40) == 0.0
    cos = lr_factor(_cfg(scenes, "gt", tmp_path / "c", schedule="cosine", warmup_iterations=0), 10)
    assert [cos(0), cos(5), cos(10)] == pytest.approx([1.0, 0.5, 0.0])
    # without pretrained weights the encoder learns at the decoder's rate (one group fewer)
    plain = SegmentTrainer(_cfg(scenes, "gt", tmp_path / "p"))
    assert [g["lr"] for g in plain.optimizer.param_groups] == pytest.approx([1e-2, 1e-2])
    assert _cfg(scenes, "gt", tmp_path, weights="w.pth").encoder_factor() == 0.1


def test_balanced_class_weights_and_label_smoothing_train(scenes, pseudo, tmp_path):
    from attnguide.engine.segmenter import balanced_class_weights

    trainer = SegmentTrainer(_cfg(scenes, pseudo / "crf", tmp_path / "b", class_weights="balanced",
                                  label_smoothing=0.1, val_split=""))
    w = trainer.class_weights.cpu().numpy()
    counts = np.zeros(6)
    for i in range(len(trainer.train_set)):
        label = trainer.train_set.load(i)[1]
        counts += np.bincount(label[label != 255].ravel(), minlength=6)[:6]
    share = counts / counts.sum()
    assert (w[share == 0] == 0).all()
    seen = share > 0
    assert np.allclose(w[seen] * np.sqrt(share[seen]), w[seen][0] * np.sqrt(share[seen][0]), rtol=1e-5)
    assert float((w * share).sum()) == pytest.approx(1.0, rel=1e-5)
    assert np.argmax(w) == np.argmin(np.where(seen, share, np.inf))  # the rarest class weighs most
    assert torch.equal(balanced_class_weights(trainer.train_set, 6), trainer.class_weights.cpu())
    result = trainer.fit()
    assert np.isfinite(result.history[-1]["train_loss"])


def test_decoder_channels_train_predict_and_resume(scenes, pseudo, tmp_path):
    """A narrower decoder (--decoder-channels) is saved in the checkpoint: predict rebuilds it,
    resume checks it."""
    run = segment(_cfg(scenes, pseudo / "crf", tmp_path / "n", decoder_channels="32,16,8,8,4", val_split=""))
    assert torch.load(run.run_dir / "last.pt", weights_only=False)["decoder_channels"] == (32, 16, 8, 8, 4)
    seg = load_segmenter(run.run_dir)
    assert seg.model.segmentation_head[0].in_channels == 4
    written = predict(run.run_dir, tmp_path / "pred", data=str(scenes), split="val", device="cpu", quiet=True)
    assert written and load_label_png(written[0]).max() < 6
    with pytest.raises(AttnGuideError, match=r"decoder has channels \(32, 16, 8, 8, 4\), not None"):
        SegmentTrainer(_cfg(scenes, pseudo / "crf", tmp_path / "n", resume=str(run.run_dir), val_split=""))
    for bad in ("64,x", "0,4", ","):
        with pytest.raises(AttnGuideError, match="--decoder-channels must be positive integers"):
            _cfg(scenes, pseudo, tmp_path, decoder_channels=bad).validate()


def test_bad_optimisation_options(scenes, pseudo, tmp_path):
    for kw, match in [({"optimizer": "adam"}, "--optimizer must be one of adamw, sgd"),
                      ({"class_weights": "inverse"}, "--class-weights must be one of none, balanced"),
                      ({"label_smoothing": 1.0}, "--label-smoothing must lie in"),
                      ({"warmup_iterations": -1}, "--warmup-iterations must be >= 0"),
                      ({"encoder_lr_mult": -0.5}, "--encoder-lr-mult must be >= 0"),
                      ({"schedule": "linear"}, "--schedule must be one of poly, cosine, step")]:
        with pytest.raises(AttnGuideError, match=match):
            _cfg(scenes, pseudo, tmp_path, **kw).validate()
