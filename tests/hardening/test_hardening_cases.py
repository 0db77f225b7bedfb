"""The ten inputs of issue 19 that slipped through, and the nits: each test fails on the
code before the fix (see the report of issue 19 for before / after)."""

from __future__ import annotations

import copy
import errno
import struct
import zlib

import numpy as np
import pytest
import timm
import torch
from hardening_helpers import get_cell, set_cell
from PIL import Image
from torch import nn

from attnguide import AttnGuideError, GuidedAttention
from attnguide.data import open_dataset, read_rgb
from attnguide.data.io import MAX_PIXELS_ENV
from attnguide.engine import TrainConfig, Trainer
from attnguide.engine.config import config_from_options
from attnguide.models.classifiers import check_model_name, create_model
from attnguide.models.weights import read_state_dict

SIZE = 48  # as in conftest.py


# ---------------------------------------------------------------------- 1. labels cells


def test_1_empty_labels_cell_names_the_line(data):
    set_cell(data, 3, "labels", "")
    with pytest.raises(AttnGuideError, match=r"train\.csv line 3: the 'labels' cell is empty.*'-'"):
        open_dataset(data, "train")


def test_1_no_object_rows_are_an_explicit_opt_in_and_the_mode_says_why(data):
    set_cell(data, 3, "labels", "-")
    set_cell(data, 3, "mask", "")  # the row's mask shows objects
    ds = open_dataset(data, "train")
    assert ds.samples[1].labels == () and ds.multilabel
    assert "train.csv line" in ds.mode_reason


def test_1_one_no_object_row_in_single_label_data_is_said(tmp_path):
    from attnguide.data import make_scenes

    root = make_scenes(tmp_path / "single", n_train=6, n_val=2, n_test=2, image_size=SIZE,
                       min_objects=1, max_objects=1, seed=2)
    ds = open_dataset(root, "train")
    assert not ds.multilabel and "every image of split 'train' has exactly one label" in ds.mode_reason
    set_cell(root, 4, "labels", "-")
    set_cell(root, 4, "mask", "")
    ds = open_dataset(root, "train")
    assert ds.multilabel and "(first: train.csv line 4, no label)" in ds.mode_reason


def test_1_a_mask_with_a_class_missing_from_its_labels_is_refused(data):
    line = next(n for n in range(2, 10) if get_cell(data, n, "mask"))
    mask = np.array(Image.open(data / get_cell(data, line, "mask")))
    shown = {int(v) for v in np.unique(mask) if 0 < v < 255}
    names = (data / "classes.txt").read_text().split()
    other = next(names[k] for k in range(len(names)) if k + 1 not in shown)
    set_cell(data, line, "labels", other)
    with pytest.raises(AttnGuideError, match=rf"train\.csv line {line}\) shows .* but the row's "
                                             rf"labels are \['{other}'\]"):
        open_dataset(data, "train")


def test_1_the_data_mode_and_its_reason_are_printed(data, cli, tmp_path):
    result = cli("train", "--data", data, "--model", "test_resnet", "--image-size", SIZE,
                 "--batch-size", 4, "--epochs", 1, "--guidance", "none", "--val-split", "",
                 "--device", "cpu", "--snapshots", 0, "--layer", "layer2", "--out", tmp_path / "run")
    assert result.code == 0, result.err
    assert "data: multi-label (" in result.err and "see --data-mode" in result.err


# ---------------------------------------------------------------------- 2. 16-bit images


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_2_high_bit_depth_images_are_rescaled_not_clipped(tmp_path, mode):
    ramp = np.linspace(0, 65535, SIZE * SIZE).reshape(SIZE, SIZE)
    if mode == "I;16":
        image = Image.fromarray(ramp.astype(np.uint16))
    elif mode == "I":
        image = Image.fromarray(ramp.astype(np.int32), mode="I")
    else:
        image = Image.fromarray((ramp / 65535).astype(np.float32), mode="F")
    path = tmp_path / ("ramp.png" if mode == "I;16" else "ramp.tif")
    image.save(path)
    rgb = read_rgb(path)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    expected = np.rint(ramp / 65535 * 255)
    assert np.abs(rgb[..., 0].astype(float) - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01  # before: all white


def test_2_an_unmappable_range_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "odd.tif"
    Image.fromarray(np.full((SIZE, SIZE), -5.0, dtype=np.float32), mode="F").save(path)
    with pytest.raises(AttnGuideError, match=r"odd\.tif.*'F' image with values in \[-5, -5\].*8-bit"):
        read_rgb(path, "train.csv line 2")


# ---------------------------------------------------------------------- 3. huge images


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (pixels are never decoded)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


def test_3_a_14000_pixel_image_names_the_file_the_limit_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    path = tmp_path / "huge.png"
    _png_header_only(path, 14000, 14000)
    with pytest.raises(AttnGuideError, match=rf"huge\.png.*14000x14000 = 196000000 pixels.*limit is "
                                             rf"89478485.*{MAX_PIXELS_ENV}=N"):
        read_rgb(path, "train.csv line 2")


def test_3_the_limit_is_raised_or_lowered_by_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    with pytest.raises(AttnGuideError, match=r"small\.png.*limit is 100 pixels"):
        read_rgb(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(SIZE * SIZE))
    assert read_rgb(path).shape == (SIZE, SIZE, 3)


# ---------------------------------------------------------------------- 4. and 5. guide_options


@pytest.mark.parametrize("body, match", [
    ("guide_options: {fil: 0.5}\n", r"guide_options\.fil is not a GuidedAttention argument.*fill"),
    ("guide_options: {fill: wide}\n", r"guide_options\.fill must be a finite number, got 'wide'"),
    ("guide_options: {isolate_batchnorm: 3}\n", r"guide_options\.isolate_batchnorm must be true or false"),
    ("guide_options: {layout: NWHC}\n", r"guide_options\.layout must be one of auto, NCHW"),
    ("guide_options: [fill]\n", r"guide_options must be dict"),
])
def test_4_guide_options_keys_and_types_are_checked(tmp_path, body, match):
    path = tmp_path / "run.yaml"
    path.write_text("data: d\n" + body)
    with pytest.raises(AttnGuideError, match=r"config file run\.yaml: " + match):
        config_from_options({}, path)


def test_4_good_guide_options_reach_guided_attention(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: d\nguide_options: {fill: 0.5, isolate_batchnorm: false}\n")
    cfg = config_from_options({}, path)
    assert cfg.guide_options == {"fill": 0.5, "isolate_batchnorm": False}


@pytest.mark.parametrize("key, option", [("alpha", "--alpha"), ("layer", "--layer"),
                                         ("terms", "--guidance"), ("mask", "--mask")])
def test_5_guide_options_may_not_repeat_a_regular_option(tmp_path, key, option):
    path = tmp_path / "run.yaml"
    path.write_text(f"data: d\nguide_options: {{{key}: 2}}\n")
    with pytest.raises(AttnGuideError, match=rf"config file run\.yaml: guide_options\.{key} "
                                             rf"duplicates the option {option}"):
        config_from_options({"alpha": 0.5}, path)
    with pytest.raises(AttnGuideError, match=rf"guide_options\.{key} duplicates"):
        TrainConfig(data="d", guide_options={key: 2}).validate()  # the library path too


# ---------------------------------------------------------------------- 6. foreign weights


def test_6_weights_of_another_architecture_are_refused_with_the_count(tmp_path):
    path = tmp_path / "efficientnet.pt"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    with pytest.raises(AttnGuideError, match=r"efficientnet\.pt' matches only 1 of the 90 backbone "
                                             r"tensors.*--partial-weights"):
        create_model("test_resnet", 5, weights=path)
    model = create_model("test_resnet", 5, weights=path, partial_weights=True)  # the opt-in
    assert model.get_classifier().out_features == 5


def test_6_matching_weights_still_load_with_the_classifier_resized(tmp_path):
    source = timm.create_model("test_resnet")
    path = tmp_path / "resnet.pt"
    torch.save(source.state_dict(), path)
    model = create_model("test_resnet", 5, weights=path)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)


# ---------------------------------------------------------------------- 7. visualize --device


@pytest.mark.parametrize("device, match", [
    ("tpu9", r"--device 'tpu9' is not a device"),
    pytest.param("cuda", r"--device cuda but no CUDA GPU", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a GPU is present")),
])
def test_7_visualize_checks_the_device_like_every_command(classifier_run, scenes, cli, tmp_path,
                                                          device, match):
    out = tmp_path / "grid.png"
    result = cli("visualize", classifier_run, "--data", scenes, "--images", 1, "--device", device,
                 "--out", out)
    assert result.code == 2 and len(result.lines) == 1, result.err
    assert match.replace("\\", "") in result.err.replace("\\", "") and "Traceback" not in result.err
    assert not out.exists()


# ---------------------------------------------------------------------- 8. NaN images


class BNNet(nn.Module):
    """conv -> BN2d -> ReLU -> conv 'features' -> GAP -> linear -> BN1d -> linear (no timm)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.features = nn.Conv2d(4, 4, 3, padding=1, stride=2)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))

    def forward(self, x):
        return self.head(torch.relu(self.features(self.stem(x))).mean(dim=(2, 3)))


def _buffers(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


def test_8_nan_images_are_refused_before_the_forward_touches_batchnorm():
    model = timm.create_model("test_resnet", num_classes=3)
    guide = GuidedAttention(model, layer="layer2")
    images, labels = torch.randn(2, 3, SIZE, SIZE), torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    guide(images, labels)  # chooses the layer; a normal step
    before = _buffers(model)
    images[1, 0, 3, 4] = float("nan")
    with pytest.raises(AttnGuideError, match=r"1 NaN or infinite value.*unchanged.*skip the batch"):
        guide(images, labels)
    with pytest.raises(AttnGuideError, match="NaN"):
        guide.attention(images)
    after = _buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # before: 28 buffers held NaN


# ---------------------------------------------------------------------- 9. empty batches


def test_9_an_empty_batch_says_so():
    guide = GuidedAttention(timm.create_model("test_resnet", num_classes=3), layer="layer2")
    empty = torch.zeros(0, 3, SIZE, SIZE)
    with pytest.raises(AttnGuideError, match=r"empty batch.*B = 0"):
        guide(empty, torch.zeros(0, 3))
    with pytest.raises(AttnGuideError, match=r"empty batch"):
        guide.attention(empty)


# ---------------------------------------------------------------------- 10. the layer probe


def test_10_the_probe_runs_in_eval_mode_without_touching_running_stats():
    torch.manual_seed(0)
    model = BNNet().train()
    model.head[1].eval()  # a flag of the user's that must survive the probe
    reference = copy.deepcopy(model)
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    guide = GuidedAttention(model, layer=None)
    guide(images, labels)  # probe (batch of one through BatchNorm1d: crashed in train mode)
    assert guide.layer_name == "features"
    reference(images)  # the step's own forward is the only one that may update statistics
    for (name, a), b in zip(model.named_buffers(), reference.buffers()):
        assert torch.equal(a, b), name
    assert model.training and not model.head[1].training and model.stem[1].training


# ---------------------------------------------------------------------- nits


@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan")])
def test_nit_lr_has_one_bound(lr):
    with pytest.raises(AttnGuideError, match=r"--lr must be > 0 \(a peak learning rate"):
        TrainConfig(data="d", lr=lr).validate()


def test_nit_pixel_labels_above_100_percent(data):
    with pytest.raises(AttnGuideError, match=r"'150%' is more than 100%.*at most 100%"):
        open_dataset(data, "train", pixel_labels="150%")


def test_nit_pixel_labels_zero_does_not_claim_the_split_has_no_masks(data, tmp_path):
    cfg = TrainConfig(data=str(data), model="test_resnet", image_size=SIZE, guidance="ext",
                      pixel_labels="0", device="cpu", quiet=True, out=str(tmp_path / "run"))
    with pytest.raises(AttnGuideError, match=r"split 'train' has \d+ masks of which --pixel-labels 0 "
                                             r"selects none"):
        Trainer(cfg)


def test_nit_unknown_model_suggests_its_family():
    with pytest.raises(AttnGuideError) as info:
        check_model_name("resnet_nope")
    suggested = str(info.value).split("did you mean ")[1].rstrip("?").split(", ")
    assert suggested and all(name.startswith("resnet") for name in suggested)


@pytest.mark.parametrize("content, match", [(b"hello, not weights\n", r"it holds text: 'hello"),
                                            (b"", r"it is empty")])
def test_nit_weights_that_are_no_weights_file(tmp_path, content, match):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(AttnGuideError, match=rf"weights\.pt' is not a torch\.save file \({match}"):
        read_state_dict(path)


def test_nit_a_read_only_run_folder_names_the_file_and_the_fix(cli, monkeypatch, tmp_path):
    import attnguide.cli.main as main_module

    def read_only(cfg, reporter):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr(main_module, "run_training", read_only)
    result = cli("train", "--data", tmp_path, "--out", tmp_path / "run")
    assert result.code == 2 and len(result.lines) == 1
    assert "cannot write" in result.err and "config.yaml: Read-only file system" in result.err
    assert "pick a folder you can write to (--out)" in result.err and "Errno" not in result.err


def test_empty_labels_cell_is_unknown_where_labels_are_optional(tmp_path):
    """pseudo-label (predicted classes), predict and evaluate look at images only: an empty
    cell there means "labels unknown", not an error, and does not make a split multi-label."""
    from attnguide.data import make_scenes, open_dataset

    data = make_scenes(tmp_path / "s", n_train=4, n_val=4, n_test=2, image_size=48,
                       min_objects=1, max_objects=1)
    rows = (data / "val.csv").read_text().splitlines()
    first = rows[1].split(",")
    first[1] = ""
    (data / "val.csv").write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    with pytest.raises(AttnGuideError, match="val.csv line 2: the 'labels' cell is empty"):
        open_dataset(data, "val", train=False)
    ds = open_dataset(data, "val", train=False, require_labels=False)
    assert not ds.samples[0].labels_known and ds.samples[0].labels == ()
    assert not ds.multilabel  # the other rows have one label each
