"""`attnguide segment --mode sec`: SEC's seed, expand and constrain losses on the CAMs
that `pseudo-label --save-cams` wrote; cues under the images' crops and flips,
training, resume and the errors for bad input."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
import typer
from pipeline_helpers import fit_until_first_save, same_weights
from typer.testing import CliRunner

from attnguide import AttnGuideError
from attnguide.data import IMAGENET_MEAN, IMAGENET_STD, open_dataset
from attnguide.tasks.common import label_path, to_input
from attnguide.tasks.segmentation import (
    CueSet,
    SegmentationSet,
    SegmentConfig,
    SegmentTrainer,
    config_from_options,
    segment,
)
from attnguide.wsss.pseudo import seed_cues

pytestmark = pytest.mark.filterwarnings("ignore:layer '.*' gives a .* attention map")


@pytest.fixture(scope="module")
def cams(classifier, scenes, tmp_path_factory):
    """A pseudo-label folder with OUT/cams/<name>.npz (one scale, no CRF: fast)."""
    from attnguide.tasks.pseudo_labels import PseudoLabelConfig, pseudo_label

    out = tmp_path_factory.mktemp("sec") / "pseudo"
    pseudo_label(PseudoLabelConfig(run=str(classifier), data=str(scenes), out=str(out), scales=(1.0,),
                                   flip=False, save_cams=True, device="cpu", quiet=True))
    return out


def _cfg(scenes, labels, out, **kw) -> SegmentConfig:
    base = dict(data=str(scenes), labels=str(labels), mode="sec", arch="unet", encoder="resnet18",
                crop_size=32, batch_size=4, iterations=2, lr=0.01, device="cpu", quiet=True, out=str(out))
    base.update(kw)
    return SegmentConfig(**base)


def _item(dataset, index: int, seed: int) -> dict:
    random.seed(seed)
    torch.manual_seed(seed)
    return dataset[index]


def test_cues_are_seed_cues_and_flip_with_the_image(scenes, cams):
    ds = open_dataset(scenes, "train", train=False)
    cues = CueSet(ds, cams / "cams", crop_size=48, scales=(1.0, 1.0), fg_fraction=0.2, bg_threshold=0.05)
    with np.load(cams / "cams" / f"{ds.samples[3].name}.npz") as npz:
        expected = torch.from_numpy(seed_cues(npz["cams"], npz["classes"]).astype(np.int64))
    assert (expected != 255).any() and (expected == 255).any()
    image, _ = ds.load_raw(3)
    plain = to_input(image, IMAGENET_MEAN, IMAGENET_STD)  # (3, H, W), not flipped
    assert not torch.allclose(plain, plain.flip(-1))
    flips = set()
    for seed in range(8):  # crop 48 of a 48 px image at scale 1: only the flip is random
        item = _item(cues, 3, seed)
        flipped = not torch.allclose(item["image"], plain, atol=1e-5)
        if flipped:
            assert torch.allclose(item["image"], plain.flip(-1), atol=1e-5)
        assert torch.equal(item["label"], expected.flip(-1) if flipped else expected)
        flips.add(flipped)
    assert flips == {True, False}
    assert item["labels"].tolist() == [float(k in ds.samples[3].labels) for k in range(ds.num_classes)]


def test_cues_follow_random_scale_and_crop_like_the_masks(scenes, tmp_path):
    """CAMs equal to the true masks give cues equal to the masks, through the same geometry."""
    from attnguide.tasks.pseudo_labels import _save_npz

    ds = open_dataset(scenes, "train", train=False)
    for i in range(4):
        _, mask = ds.load_raw(i)
        classes = np.array(ds.samples[i].labels, dtype=np.int64)
        _save_npz(label_path(tmp_path, ds.samples[i].name, ".npz"),
                  np.stack([mask == k + 1 for k in classes]).astype(np.float32), classes)
    for i in range(4, len(ds)):  # the others only need to exist
        shutil.copy(label_path(tmp_path, ds.samples[0].name, ".npz"), label_path(tmp_path, ds.samples[i].name, ".npz"))
    cues = CueSet(ds, tmp_path, crop_size=40, scales=(0.6, 1.4), fg_fraction=0.2, bg_threshold=0.05)
    masks = SegmentationSet(ds, None, crop_size=40, scales=(0.6, 1.4))
    for i in range(4):
        for seed in (1, 2, 3):
            a, b = _item(cues, i, seed), _item(masks, i, seed)
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["label"], b["label"])


def test_sec_loss_decreases_on_a_batch(scenes, cams, tmp_path):
    trainer = SegmentTrainer(_cfg(scenes, cams, tmp_path / "run", val_split=""))
    batch = next(iter(trainer.loader))
    trainer.model.train()
    losses = []
    for _ in range(6):
        loss, parts = trainer.loss(batch)
        assert len(parts) == 3 and all(float(p) >= 0 for p in parts)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_sec_run_resumes_like_an_uninterrupted_run(scenes, cams, tmp_path):
    straight = segment(_cfg(scenes, cams, tmp_path / "a", iterations=3))
    (record,) = straight.history
    assert record["step"] == 3 and 0 <= record["val_miou"] <= 1
    assert all(record[f"train_{k}"] >= 0 for k in ("seed", "expand", "constrain"))
    assert record["train_loss"] == pytest.approx(
        record["train_seed"] + record["train_expand"] + record["train_constrain"])

    fit_until_first_save(SegmentTrainer(_cfg(scenes, cams, tmp_path / "b", iterations=3,
                                             checkpoint_every=1)))
    resumed = segment(config_from_options({"resume": str(tmp_path / "b")}))
    assert resumed.history[-1]["step"] == 3
    assert resumed.history[-1]["train_loss"] == pytest.approx(record["train_loss"])
    assert same_weights(straight.last_checkpoint, resumed.last_checkpoint)
    with pytest.raises(AttnGuideError, match="--mode sec, not --mode pseudo"):
        SegmentTrainer(config_from_options({"resume": str(tmp_path / "b"), "mode": "pseudo",
                                            "labels": str(cams)}))


def test_cli_sec_on_deeplab_without_constrain(scenes, cams, tmp_path):
    from attnguide.cli.seg import register

    app = typer.Typer()
    register(app)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "segment", "--mode", "sec", "--data", str(scenes), "--labels", str(cams), "--arch", "deeplab-largefov",
        "--crop-size", "24", "--batch-size", "2", "--iterations", "1", "--constrain-weight", "0",
        "--fg-fraction", "0.3", "--val-split", "", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "iter 1/1" in result.output
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["train_constrain"] == 0 and record["train_seed"] > 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["config"]["mode"] == "sec" and ckpt["config"]["fg_fraction"] == 0.3
    assert not any(k.startswith("model.") for k in ckpt["model"])  # the model's own names


def test_bad_input(scenes, cams, tmp_path):
    with pytest.raises(AttnGuideError, match="no cams/ folder and no .npz file.*--save-cams"):
        SegmentTrainer(_cfg(scenes, scenes, tmp_path / "x"))  # a folder without CAMs
    folder = tmp_path / "pseudo"
    shutil.copytree(cams, folder)
    names = [s.name for s in open_dataset(scenes, "train", train=False).samples]
    label_path(folder / "cams", names[2], ".npz").unlink()
    with pytest.raises(AttnGuideError, match=f"lacks 1 of the 24 CAM files.*{names[2]}.*--save-cams --resume"):
        SegmentTrainer(_cfg(scenes, folder, tmp_path / "x"))
    label_path(folder / "cams", names[2], ".npz").write_bytes(b"not a zip")
    trainer = SegmentTrainer(_cfg(scenes, folder, tmp_path / "x"))
    with pytest.raises(AttnGuideError, match=f"cannot read CAM file .*{names[2]}.npz"):
        trainer.train_set.load(2)
    np.savez(label_path(folder / "cams", names[2], ".npz"), cams=np.zeros((1, 5, 5)), classes=np.zeros(1))
    with pytest.raises(AttnGuideError, match="another data set"):
        trainer.train_set.load(2)
    with pytest.raises(AttnGuideError, match="not on ground truth"):
        _cfg(scenes, "gt", tmp_path / "x").validate()
    with pytest.raises(AttnGuideError, match="--mode must be one of pseudo, sec"):
        _cfg(scenes, cams, tmp_path / "x", mode="seec").validate()
    with pytest.raises(AttnGuideError, match="--fg-fraction must lie in"):
        _cfg(scenes, cams, tmp_path / "x", fg_fraction=1.5).validate()
    with pytest.raises(AttnGuideError, match="--bg-threshold must lie in"):
        _cfg(scenes, cams, tmp_path / "x", bg_threshold=0.5).validate()
    with pytest.raises(AttnGuideError, match="--constrain-weight must be >= 0"):
        _cfg(scenes, cams, tmp_path / "x", constrain_weight=-1).validate()
