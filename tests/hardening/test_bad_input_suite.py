"""The bad-input suite: every CLI command against inputs it makes broken itself (corrupt,
truncated, empty, huge and wrong-mode images; broken CSVs, class lists and configs;
mismatched weights and checkpoints; bad option values).

Each case asserts: exit code 2, exactly one line on stderr (``error: ...``) that names the
file or option and the fix, no traceback, and nothing written or changed (the data, the
output folder and the run folders read are byte-identical afterwards: no partial output).
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hardening_helpers import set_cell, snapshot
from PIL import Image

SIZE = 48


@dataclass
class Ctx:
    data: Path  # a private copy of the scenes, free to break
    tmp: Path
    classifier: Path  # run folder of attnguide train (read only)
    segmenter: Path  # run folder of attnguide segment (read only)
    env: dict

    @property
    def out(self) -> Path:
        return self.tmp / "out"


CASES: dict[str, Callable[[Ctx], tuple[list, list[str]]]] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


# ---------------------------------------------------------------------- breaking files


def corrupt(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())


def header_only_png(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


def write_mask(path: Path, values: np.ndarray, fmt: str = "PNG") -> None:
    Image.fromarray(values.astype(np.uint8), mode="L").save(path, format=fmt)


def config(ctx: Ctx, text: str, name: str = "run.yaml") -> Path:
    path = ctx.tmp / name
    path.write_text(text)
    return path


def train(ctx: Ctx, *more) -> list:
    return ["train", "--data", ctx.data, "--model", "test_resnet", "--image-size", SIZE,
            "--batch-size", 4, "--epochs", 1, "--val-split", "", "--device", "cpu", "--quiet",
            "--snapshots", 0, "--layer", "layer2", "--out", ctx.out, *more]


# ---------------------------------------------------------------------- train: data


@case("train-empty-labels-cell")
def _(ctx):
    set_cell(ctx.data, 3, "labels", "")
    return train(ctx), ["train.csv line 3", "'labels' cell is empty", "'-'"]


@case("train-unknown-class")
def _(ctx):
    set_cell(ctx.data, 2, "labels", "zebra")
    return train(ctx), ["train.csv line 2", "zebra", "classes.txt"]


@case("train-mask-contradicts-labels")
def _(ctx):
    set_cell(ctx.data, 4, "labels", "boat")  # its mask shows a triangle
    return train(ctx), ["masks/train_00002.png", "train.csv line 4", "['triangle']", "add the mask's classes"]


@case("train-corrupt-image")
def _(ctx):
    corrupt(ctx.data / "images" / "train_00003.png")
    return train(ctx), ["train_00003.png", "train.csv line 5", "cannot decode", "Replace the file"]


@case("train-empty-image-file")
def _(ctx):
    (ctx.data / "images" / "train_00001.png").write_bytes(b"")
    return train(ctx), ["train_00001.png", "cannot decode"]


@case("train-huge-image-header")
def _(ctx):
    header_only_png(ctx.data / "images" / "train_00000.png", 14000, 14000)
    return train(ctx), ["train_00000.png", "14000x14000", "ATTNGUIDE_MAX_IMAGE_PIXELS"]


@case("train-image-above-a-lowered-limit")
def _(ctx):
    ctx.env["ATTNGUIDE_MAX_IMAGE_PIXELS"] = "1000"
    return train(ctx), ["train_00000.png", "limit is 1000 pixels", "ATTNGUIDE_MAX_IMAGE_PIXELS=N"]


@case("train-bad-pixel-limit-variable")
def _(ctx):
    ctx.env["ATTNGUIDE_MAX_IMAGE_PIXELS"] = "lots"
    return train(ctx), ["ATTNGUIDE_MAX_IMAGE_PIXELS='lots'", "pixels"]


@case("train-mask-wrong-size")
def _(ctx):
    write_mask(ctx.data / "masks" / "train_00004.png", np.zeros((10, 12)))
    return train(ctx), ["train_00004.png", "12x10", "image's size"]


@case("train-mask-values-beyond-the-classes")
def _(ctx):
    values = np.zeros((SIZE, SIZE))
    values[:4, :4] = 9
    write_mask(ctx.data / "masks" / "train_00004.png", values)
    return train(ctx), ["train_00004.png", "[9]", "5 classes"]


@case("train-mask-saved-as-jpeg")
def _(ctx):
    write_mask(ctx.data / "masks" / "train_00004.png", np.zeros((SIZE, SIZE)), fmt="JPEG")
    return train(ctx), ["train_00004.png", "JPEG", "lossless PNG"]


@case("train-mask-16-bit")
def _(ctx):
    Image.fromarray(np.full((SIZE, SIZE), 300, np.uint16)).save(ctx.data / "masks" / "train_00004.png")
    return train(ctx), ["train_00004.png"]


@case("train-missing-image")
def _(ctx):
    (ctx.data / "images" / "train_00005.png").unlink()
    return train(ctx), ["train_00005.png", "does not exist"]


@case("train-csv-missing-column")
def _(ctx):
    path = ctx.data / "train.csv"
    path.write_text(path.read_text().replace("image,labels,", "image,classes,", 1))
    return train(ctx), ["train.csv", "lacks column", "'labels'"]


@case("train-csv-duplicate-row")
def _(ctx):
    path = ctx.data / "train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")
    return train(ctx), ["train.csv line 10", "already listed at train.csv line 2"]


@case("train-classes-start-with-background")
def _(ctx):
    path = ctx.data / "classes.txt"
    path.write_text("background\n" + path.read_text())
    return train(ctx), ["classes.txt", "'background'", "leave background out"]


@case("train-classes-empty")
def _(ctx):
    (ctx.data / "classes.txt").write_text("\n")
    return train(ctx), ["classes.txt lists no class"]


@case("train-no-data-folder")
def _(ctx):
    return train(ctx, "--data", ctx.tmp / "nothing"), ["nothing", "does not exist"]


@case("train-split-missing")
def _(ctx):
    return train(ctx, "--train-split", "trian"), ["trian.csv", "splits found"]


@case("train-single-mode-on-multi-label-data")
def _(ctx):
    return train(ctx, "--data-mode", "single"), ["mode='single'", "exactly one label"]


# ---------------------------------------------------------------------- train: options, configs


@case("train-config-broken-yaml")
def _(ctx):
    return train(ctx, "--config", config(ctx, "epochs: [1\n")), ["run.yaml", "not valid YAML"]


@case("train-config-not-a-mapping")
def _(ctx):
    return train(ctx, "--config", config(ctx, "- 1\n- 2\n")), ["run.yaml", "mapping of option: value"]


@case("train-config-unknown-option")
def _(ctx):
    return train(ctx, "--config", config(ctx, "epoch: 3\n")), ["run.yaml", "'epoch'", "did you mean"]


@case("train-config-bad-type")
def _(ctx):
    return train(ctx, "--config", config(ctx, "batch_size: many\n")), ["run.yaml", "batch_size must be int"]


@case("train-config-toml-broken")
def _(ctx):
    return train(ctx, "--config", config(ctx, "epochs = = 2\n", "run.toml")), ["run.toml", "not valid TOML"]


@case("train-guide-options-unknown-key")
def _(ctx):
    path = config(ctx, "guide_options: {fil: 0.5}\n")
    return train(ctx, "--config", path), ["config file run.yaml: guide_options.fil", "takes check_finite, fill"]


@case("train-guide-options-bad-value")
def _(ctx):
    path = config(ctx, "guide_options: {fill: wide}\n")
    return train(ctx, "--config", path), ["config file run.yaml: guide_options.fill must be a finite number"]


@case("train-guide-options-repeat-an-option")
def _(ctx):
    path = config(ctx, "guide_options: {alpha: 2}\n")
    return train(ctx, "--config", path, "--alpha", 0.5), ["guide_options.alpha duplicates the option --alpha"]


@case("train-weights-other-architecture")
def _(ctx):
    path = ctx.tmp / "efficientnet.pt"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    return train(ctx, "--weights", path), ["efficientnet.pt", "matches only 1 of the 90", "--partial-weights"]


@case("train-weights-text-file")
def _(ctx):
    path = ctx.tmp / "notes.pt"
    path.write_text("these are my notes\n")
    return train(ctx, "--weights", path), ["notes.pt", "holds text", "torch.save"]


@case("train-weights-truncated")
def _(ctx):
    path = ctx.tmp / "cut.pt"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    path.write_bytes(path.read_bytes()[:3000])
    return train(ctx, "--weights", path), ["cut.pt", "is not a torch.save file"]


@case("train-weights-missing")
def _(ctx):
    return train(ctx, "--weights", ctx.tmp / "missing.pt"), ["missing.pt", "does not exist"]


@case("train-weights-and-pretrained")
def _(ctx):
    return train(ctx, "--weights", ctx.tmp / "w.pt", "--pretrained"), ["--weights PATH or --pretrained"]


@case("train-lr-zero")
def _(ctx):
    return train(ctx, "--lr", 0), ["--lr must be > 0", "got 0.0"]


@case("train-lr-negative")
def _(ctx):
    return train(ctx, "--lr", -1), ["--lr must be > 0", "got -1.0"]


@case("train-pixel-labels-above-100-percent")
def _(ctx):
    return train(ctx, "--guidance", "ext", "--pixel-labels", "150%"), ["'150%'", "at most 100%"]


@case("train-pixel-labels-zero-with-ext")
def _(ctx):
    return train(ctx, "--guidance", "ext", "--pixel-labels", 0), ["has 8 masks of which --pixel-labels 0 selects none"]


@case("train-pixel-labels-more-than-masks")
def _(ctx):
    return train(ctx, "--guidance", "ext", "--pixel-labels", 50), ["pixel_labels=50", "only 8"]


@case("train-pixel-labels-word")
def _(ctx):
    return train(ctx, "--guidance", "ext", "--pixel-labels", "lots"), ["'lots' is not understood", "'10%'"]


@case("train-unknown-model")
def _(ctx):
    return train(ctx, "--model", "resnet_nope"), ["'resnet_nope'", "did you mean resnet"]


@case("train-unknown-guidance")
def _(ctx):
    return train(ctx, "--guidance", "gain"), ["gain"]


@case("train-bad-device")
def _(ctx):
    return train(ctx, "--device", "tpu9"), ["--device 'tpu9' is not a device", "cpu"]


@case("train-epochs-zero")
def _(ctx):
    return train(ctx, "--epochs", 0), ["--epochs must be at least 1"]


@case("train-batch-size-word")
def _(ctx):
    return train(ctx, "--batch-size", "big"), ["'--batch-size'", "valid integer", "--help"]


@case("train-unknown-option")
def _(ctx):
    return train(ctx, "--epoch", 2), ["--epoch", "--help"]


@case("train-out-holds-a-run")
def _(ctx):
    return train(ctx, "--out", ctx.classifier), ["already holds a run", "--resume", "--overwrite"]


@case("train-resume-missing")
def _(ctx):
    return train(ctx, "--resume", ctx.tmp / "nothing"), ["nothing"]


@case("train-resume-text-checkpoint")
def _(ctx):
    run = ctx.tmp / "fake"
    run.mkdir()
    (run / "last.pt").write_text("not a checkpoint\n")
    return ["train", "--resume", run, "--quiet"], ["last.pt"]


@case("train-resume-a-segmenter")
def _(ctx):
    return ["train", "--resume", ctx.segmenter, "--quiet"], ["segmenter"]


# ---------------------------------------------------------------------- pseudo-label


def pseudo(ctx: Ctx, run, *more) -> list:
    return ["pseudo-label", run, "--data", ctx.data, "--out", ctx.out, "--device", "cpu",
            "--quiet", *more]


@case("pseudo-label-run-missing")
def _(ctx):
    return pseudo(ctx, ctx.tmp / "norun"), ["norun"]


@case("pseudo-label-checkpoint-is-text")
def _(ctx):
    run = ctx.tmp / "fake"
    run.mkdir()
    (run / "best.pt").write_text("not a checkpoint\n")
    (run / "last.pt").write_text("not a checkpoint\n")
    return pseudo(ctx, run), ["fake"]


@case("pseudo-label-a-segmenter-run")
def _(ctx):
    return pseudo(ctx, ctx.segmenter), ["segmenter"]


@case("pseudo-label-bad-scales")
def _(ctx):
    return pseudo(ctx, ctx.classifier, "--scales", "1,x"), ["--scales", "'1,x'"]


@case("pseudo-label-bad-device")
def _(ctx):
    return pseudo(ctx, ctx.classifier, "--device", "tpu9"), ["--device 'tpu9'"]


@case("pseudo-label-corrupt-image")
def _(ctx):
    corrupt(ctx.data / "images" / "train_00002.png")
    return pseudo(ctx, ctx.classifier), ["train_00002.png", "cannot decode"]


@case("pseudo-label-unknown-split")
def _(ctx):
    return pseudo(ctx, ctx.classifier, "--split", "trian"), ["trian"]


# ---------------------------------------------------------------------- segment


def segment(ctx: Ctx, *more) -> list:
    return ["segment", "--data", ctx.data, "--labels", "gt", "--arch", "unet", "--encoder",
            "resnet18", "--crop-size", 32, "--batch-size", 2, "--iterations", 1, "--val-split", "",
            "--device", "cpu", "--quiet", "--out", ctx.out, *more]


@case("segment-labels-folder-missing")
def _(ctx):
    return segment(ctx, "--labels", ctx.tmp / "nolabels"), ["nolabels"]


@case("segment-bad-device")
def _(ctx):
    return segment(ctx, "--device", "tpu9"), ["--device 'tpu9'"]


@case("segment-crop-size-zero")
def _(ctx):
    return segment(ctx, "--crop-size", 0), ["--crop-size"]


@case("segment-unknown-arch")
def _(ctx):
    return segment(ctx, "--arch", "unetx"), ["unetx"]


@case("segment-resume-a-classifier")
def _(ctx):
    return ["segment", "--resume", ctx.classifier, "--quiet"], ["classifier"]


@case("segment-corrupt-image")
def _(ctx):
    corrupt(ctx.data / "images" / "train_00006.png")
    return segment(ctx), ["train_00006.png", "cannot decode"]


# ---------------------------------------------------------------------- evaluate


def predictions(ctx: Ctx) -> Path:
    """A folder of good predictions of the val split (its masks)."""
    pred = ctx.tmp / "pred"
    (pred / "images").mkdir(parents=True)  # named as the images are listed: images/val_00000
    for mask in sorted((ctx.data / "masks").glob("val_*.png")):
        shutil.copy(mask, pred / "images" / mask.name)
    return pred


def evaluate(ctx: Ctx, pred, *more) -> list:
    return ["evaluate", "--pred", pred, "--data", ctx.data, "--split", "val",
            "--json", ctx.out / "metrics.json", *more]


@case("evaluate-pred-folder-missing")
def _(ctx):
    return evaluate(ctx, ctx.tmp / "nopred"), ["nopred"]


@case("evaluate-corrupt-prediction")
def _(ctx):
    pred = predictions(ctx)
    corrupt(pred / "images" / "val_00001.png")
    return evaluate(ctx, pred), ["val_00001.png"]


@case("evaluate-prediction-wrong-size")
def _(ctx):
    pred = predictions(ctx)
    write_mask(pred / "images" / "val_00002.png", np.zeros((8, 8)))
    return evaluate(ctx, pred), ["val_00002.png"]


@case("evaluate-prediction-missing")
def _(ctx):
    pred = predictions(ctx)
    (pred / "images" / "val_00003.png").unlink()
    return evaluate(ctx, pred), ["val_00003"]


# ---------------------------------------------------------------------- predict


def predict(ctx: Ctx, images, *more) -> list:
    return ["predict", ctx.segmenter, "--images", images, "--out", ctx.out, "--device", "cpu",
            "--quiet", *more]


@case("predict-corrupt-image")
def _(ctx):
    path = ctx.tmp / "photo.png"
    corrupt(path)
    return predict(ctx, path), ["photo.png", "cannot decode"]


@case("predict-truncated-image")
def _(ctx):
    path = ctx.tmp / "cut.png"
    data = (ctx.data / "images" / "test_00001.png").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return predict(ctx, path), ["cut.png"]


@case("predict-huge-image")
def _(ctx):
    path = ctx.tmp / "huge.png"
    header_only_png(path, 14000, 14000)
    return predict(ctx, path), ["huge.png", "14000x14000", "ATTNGUIDE_MAX_IMAGE_PIXELS"]


@case("predict-images-missing")
def _(ctx):
    return predict(ctx, ctx.tmp / "nothing.png"), ["nothing.png"]


@case("predict-a-classifier-run")
def _(ctx):
    return ["predict", ctx.classifier, "--images", ctx.data / "images" / "test_00001.png",
            "--out", ctx.out, "--device", "cpu", "--quiet"], ["classifier"]


@case("predict-bad-device")
def _(ctx):
    return predict(ctx, ctx.data / "images" / "test_00001.png", "--device", "tpu9"), ["--device 'tpu9'"]


# ---------------------------------------------------------------------- visualize, plot


def visualize(ctx: Ctx, *more) -> list:
    return ["visualize", ctx.classifier, "--data", ctx.data, "--out", ctx.out / "grid.png", *more]


@case("visualize-bad-device")
def _(ctx):
    return visualize(ctx, "--device", "tpu9"), ["--device 'tpu9' is not a device"]


@case("visualize-cuda-without-a-gpu")
def _(ctx):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    return visualize(ctx, "--device", "cuda"), ["--device cuda but no CUDA GPU", "--device cpu"]


@case("visualize-bad-indices")
def _(ctx):
    return visualize(ctx, "--indices", "a,b"), ["--indices", "'a,b'"]


@case("visualize-images-zero")
def _(ctx):
    return visualize(ctx, "--images", 0), ["--images must be at least 1"]


@case("visualize-images-and-indices")
def _(ctx):
    return visualize(ctx, "--images", 2, "--indices", "0"), ["either --images N or --indices"]


@case("visualize-run-missing")
def _(ctx):
    return ["visualize", ctx.tmp / "norun", "--data", ctx.data, "--out", ctx.out / "g.png"], ["norun"]


@case("visualize-corrupt-image")
def _(ctx):
    corrupt(ctx.data / "images" / "val_00000.png")
    return visualize(ctx, "--indices", "0", "--device", "cpu"), ["val_00000.png", "cannot decode"]


@case("plot-no-metrics")
def _(ctx):
    run = ctx.tmp / "empty_run"
    run.mkdir()
    return ["plot", run, "--out", ctx.out / "curves.png"], ["metrics.jsonl"]


# ---------------------------------------------------------------------- export


@case("export-run-missing")
def _(ctx):
    return ["export", ctx.tmp / "norun", ctx.out], ["norun"]


@case("export-a-segmenter")
def _(ctx):
    return ["export", ctx.segmenter, ctx.out], ["segmenter"]


@case("export-checkpoint-is-text")
def _(ctx):
    path = ctx.tmp / "fake.pt"
    path.write_text("not a checkpoint\n")
    return ["export", path, ctx.out], ["fake.pt"]


@case("export-bad-prefer")
def _(ctx):
    return ["export", ctx.classifier, ctx.out, "--prefer", "newest"], ["--prefer", "newest"]


# ---------------------------------------------------------------------- data scenes, demo


@case("data-scenes-unknown-bias")
def _(ctx):
    return ["data", "scenes", ctx.out, "--bias", "sideways"], ["sideways"]


@case("data-scenes-too-small")
def _(ctx):
    return ["data", "scenes", ctx.out, "--image-size", 10], ["image_size", "44"]


@case("demo-bad-scale")
def _(ctx):
    return ["demo", ctx.out, "--scale", -1, "--quiet"], ["--scale"]


# ---------------------------------------------------------------------- the test


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, data, tmp_path, classifier_run, segmenter_run, cli, monkeypatch):
    ctx = Ctx(data=data, tmp=tmp_path, classifier=classifier_run, segmenter=segmenter_run, env={})
    argv, expected = CASES[name](ctx)
    for key, value in ctx.env.items():
        monkeypatch.setenv(key, value)
    roots = (tmp_path, classifier_run, segmenter_run)
    before = snapshot(*roots)
    result = cli(*argv)
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err + result.out
    assert len(result.lines) == 1 and result.lines[0].startswith("error: "), result.err
    for text in expected:
        assert text in result.lines[0], (text, result.lines[0])
    after = snapshot(*roots)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:5]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temp files left"


def _command(name: str) -> str:
    for command in ("pseudo-label", "data-scenes"):
        if name.startswith(command):
            return command.replace("-", " ") if command == "data-scenes" else command
    return name.split("-")[0]


def test_the_suite_covers_every_command():
    from attnguide.cli.main import app

    commands = {c.name for c in app.registered_commands} | {"data scenes"}
    covered = {_command(name) for name in CASES}
    assert commands <= covered, commands - covered
    assert len(CASES) >= 60
