"""Segmenters: DeepLab-LargeFOV (DeepLab v1, the network of SEC and GAIN) and smp models.

DeepLab-LargeFOV (Chen et al., ICLR 2015) is VGG16 made dense:

==========  ==========================================  ==========
block       layers                                      stride
==========  ==========================================  ==========
conv1-3     VGG16 convs, each block then max-pool 3x3   2, 4, 8
            stride 2 padding 1
conv4       VGG16 convs, max-pool 3x3 stride 1 pad 1    8
conv5       VGG16 convs with dilation 2, same pool      8
fc6         3x3 conv, dilation 12, 1024 channels, ReLU  8
fc7         1x1 conv, 1024 channels, ReLU               8
fc8         1x1 conv to ``num_classes`` (after dropout) 8
==========  ==========================================  ==========

fc6 and fc7 are followed by dropout 0.5. A ``(B, 3, H, W)`` input gives
``ceil(H / 8) x ceil(W / 8)`` logits (41x41 for the 321x321 crops of SEC).
The conv layers carry torchvision's VGG16 names (``features.0`` ...
``features.28``), so a torchvision or timm VGG16 file loads into them.

Every architecture is behind :data:`SEGMENTERS` with one contract,
:class:`SegmenterSpec` (``segmenter_spec(arch)``): build, optimizer groups for
``head_lr_mult``, the input multiple, logits at the input size and SEC's
stride-8 logits, so the segment loop, evaluation and ``predict`` never ask
which network they hold. (A little over 400 lines: the network, its weights
and the smp factory are one architecture family each and read best together.)
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from attnguide.core.registry import Registry
from attnguide.errors import AttnGuideError
from attnguide.models.weights import LoadReport, load_weights, read_state_dict

__all__ = [
    "SEGMENTERS",
    "DeepLabLargeFOV",
    "LoadReport",
    "SegmenterSpec",
    "Stride8Logits",
    "create_segmenter",
    "input_multiple",
    "load_vgg16_weights",
    "predict_logits",
    "segmenter_names",
    "segmenter_spec",
]

logger = logging.getLogger(__name__)

DEEPLAB_ARCH = "deeplab-largefov"
_VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _vgg16_features() -> nn.Sequential:
    """VGG16 conv1-conv5 with DeepLab-LargeFOV pooling and dilation; output stride 8."""
    layers: list[nn.Module] = []
    in_channels = 3
    for block, widths in enumerate(_VGG16_BLOCKS):
        dilation = 2 if block == 4 else 1
        for width in widths:
            layers.append(nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation))
            layers.append(nn.ReLU(inplace=True))
            in_channels = width
        stride = 2 if block < 3 else 1
        layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
    return nn.Sequential(*layers)


class DeepLabLargeFOV(nn.Module):
    """DeepLab-LargeFOV segmenter (DeepLab v1), output stride 8.

    ``forward(x)`` returns logits ``(B, num_classes, H, W)`` bilinearly
    upsampled to the input size. SEC computes its losses on the stride-8
    logits instead: ``model.classifier(model.forward_features(x))``.

    DeepLab trains ``classifier`` (fc8) with 10x the base learning rate;
    :meth:`param_groups` builds the two optimizer groups.

    Args:
        num_classes: output classes, background included (21 for VOC).
        dropout: dropout probability after fc6 and fc7 (DeepLab: 0.5).

    Example:
        >>> model = DeepLabLargeFOV(num_classes=21)
        >>> model(torch.zeros(1, 3, 65, 65)).shape
        torch.Size([1, 21, 65, 65])
        >>> model.forward_features(torch.zeros(1, 3, 65, 65)).shape
        torch.Size([1, 1024, 9, 9])
    """

    output_stride = 8

    def __init__(self, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise AttnGuideError(f"num_classes must be a positive int, got {num_classes!r}")
        self.features = _vgg16_features()
        self.fc6 = nn.Conv2d(512, 1024, 3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(1024, num_classes, 1)  # fc8
        nn.init.normal_(self.classifier.weight, std=0.01)  # DeepLab: gaussian std 0.01
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → fc7 activations ``(B, 1024, ceil(H/8), ceil(W/8))`` (after dropout)."""
        x = self.features(x)
        x = self.dropout(F.relu(self.fc6(x), inplace=True))
        return self.dropout(F.relu(self.fc7(x), inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → logits ``(B, num_classes, H, W)``, bilinear from stride 8."""
        logits = self.classifier(self.forward_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Optimizer groups: backbone + fc6/fc7 at ``lr``, fc8 at ``head_lr_mult * lr``."""
        head = list(self.classifier.parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in self.parameters() if id(p) not in head_ids]
        return [{"params": body, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """:func:`~attnguide.models.weights.read_state_dict` with a ``module.`` prefix
    (DataParallel) dropped, so that ``features.*`` is found under it too."""
    return {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike,
               source: str) -> LoadReport:
    """:func:`~attnguide.models.weights.load_weights` with the encoders' policy: a tensor
    of the wrong shape refuses the file (an encoder has none that may differ); not logged."""
    report = load_weights(module, state, on_mismatch="raise", report=False, source=source)
    report.path = str(path)
    return report


def load_vgg16_weights(model: DeepLabLargeFOV, path: str | os.PathLike) -> LoadReport:
    """Load VGG16 conv1-conv5 weights (torchvision or timm state dict) into ``model.features``.

    Only ``features.*`` tensors are used; the file's fully connected layers
    (torchvision ``classifier.*``, timm ``pre_logits.*`` / ``head.*``) are
    listed as ``unexpected``, and fc6/fc7/fc8 stay as initialised. A
    ``features.*`` tensor of another shape refuses the file.

    Args:
        model: a :class:`DeepLabLargeFOV`.
        path: ``.pth`` / ``.pt`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``.

    Returns:
        :class:`LoadReport` with names relative to ``model``.
    """
    if not isinstance(model, DeepLabLargeFOV):
        raise AttnGuideError(
            f"load_vgg16_weights needs a DeepLabLargeFOV, got {type(model).__name__}"
        )
    state = _read_state_dict(path)
    features = {
        k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
    }
    others = sorted(k for k in state if not k.startswith("features."))
    report = _load_into(model.features, features, path, f"VGG16 file {str(path)!r}")
    return LoadReport(
        path=str(path),
        loaded=[f"features.{k}" for k in report.loaded],
        missing=[f"features.{k}" for k in report.missing],
        unexpected=[f"features.{k}" for k in report.unexpected] + others,
    )


def _import_smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:
        raise AttnGuideError(
            "segmentation models need segmentation-models-pytorch: pip install 'attnguide[seg]'"
        ) from err
    return smp


def segmenter_names() -> list[str]:
    """Valid ``arch`` names for :func:`create_segmenter` (smp's only if it is installed)."""
    try:
        smp = _import_smp()
    except AttnGuideError:
        return SEGMENTERS.names()
    return [*SEGMENTERS.names(), *sorted(smp.MODEL_ARCHITECTURES_MAPPING)]


def _check_smp_encoder(smp, encoder: str) -> None:
    if encoder.startswith("tu-"):
        import timm

        name = encoder[3:].split(".")[0]  # "tu-resnet18.a1_in1k" → "resnet18"
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5)
            raise AttnGuideError(
                f"unknown timm encoder {encoder!r}: 'tu-' must be followed by a timm model "
                f"name (see timm.list_models()); close matches: {close}"
            )
        return
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        close = difflib.get_close_matches(encoder, names, n=5)
        raise AttnGuideError(
            f"unknown encoder {encoder!r}; close matches: {close}. smp encoders: "
            f"{', '.join(sorted(names))}; or any timm model as 'tu-<name>'"
        )


def create_segmenter(
    arch: str,
    encoder: str | None,
    num_classes: int,
    encoder_weights_path: str | os.PathLike | None = None,
    decoder_channels: int | tuple[int, ...] | None = None,
) -> nn.Module:
    """Build a segmenter whose ``forward(x)`` gives ``(B, num_classes, H, W)`` logits.

    ``arch="deeplab-largefov"`` gives :class:`DeepLabLargeFOV` (``encoder``
    must be None or ``"vgg16"``). Any other ``arch`` is a
    segmentation_models_pytorch architecture (``unet``, ``deeplabv3plus``,
    ...) built by ``smp.create_model(arch, encoder_name=encoder,
    encoder_weights=None, classes=num_classes)``; ``encoder`` is an smp
    encoder name or ``"tu-<timm model>"``.

    Nothing is downloaded. ``encoder_weights_path`` is a local state-dict
    file loaded into the encoder: a VGG16 file for DeepLab-LargeFOV, the
    encoder's own state dict (e.g. a torchvision ResNet) for smp encoders, a
    timm model's state dict for ``tu-`` encoders. Keys the file lacks are
    warned about; a file that matches nothing is an error.

    ``decoder_channels`` sets the width of an smp decoder, passed on as smp's
    ``decoder_channels``: one number per decoder stage for ``unet`` /
    ``unetplusplus`` / ``manet`` (smp's default ``(256, 128, 64, 32, 16)``), a single
    number for ``deeplabv3`` / ``deeplabv3plus`` / ``pan`` / ``upernet``. None keeps
    the architecture's default; an architecture without the setting is an error.

    Example:
        >>> model = create_segmenter("unet", "resnet18", num_classes=21)  # doctest: +SKIP
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise AttnGuideError(f"num_classes must be a positive int, got {num_classes!r}")
    return segmenter_spec(arch).build(encoder, num_classes, encoder_weights_path, decoder_channels)


# ---------------------------------------------------------------------- the uniform contract


def main_output(out: torch.Tensor | tuple | list) -> torch.Tensor:
    """The logits of a forward pass (smp models with an auxiliary head return a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def input_multiple(model: nn.Module) -> int:
    """The multiple H and W must have: the smp encoder's output stride, else 1."""
    if getattr(model, "requires_divisible_input_shape", False) and hasattr(model, "encoder"):
        return int(getattr(model.encoder, "output_stride", 32))
    return 1


def predict_logits(model: nn.Module, x: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Logits ``(B, N, H, W)`` of normalised images ``(B, 3, H, W)``, padding H and W
    with zeros (the mean colour) up to ``multiple`` and cropping the result."""
    height, width = x.shape[-2:]
    ph = math.ceil(height / multiple) * multiple - height
    pw = math.ceil(width / multiple) * multiple - width
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return main_output(model(x))[..., :height, :width]


class SegmenterSpec:
    """What the training loop, evaluation and ``predict`` need of one segmenter
    architecture, the same for every entry of :data:`SEGMENTERS`.

    The default methods fit any model whose ``forward(x)`` gives full-size logits
    (smp models); an architecture overrides what it does differently.

    Attributes:
        arch: the name it was looked up by. default_encoder: the encoder when none is given.
    """

    default_encoder: str | None = "resnet50"

    def __init__(self, arch: str) -> None:
        self.arch = arch

    def encoder(self, encoder: str | None) -> str | None:
        """The encoder a run uses: ``encoder``, else :attr:`default_encoder`."""
        return encoder or self.default_encoder

    def build(self, encoder: str | None, num_classes: int, weights: str | os.PathLike | None = None,
              decoder_channels: int | tuple[int, ...] | None = None) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def param_groups(self, model: nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
        """Base LR for everything, ``head_lr_mult * lr`` for the last classifier layer
        (an smp model's ``segmentation_head``)."""
        head = getattr(model, "segmentation_head", None)
        head_params = list(head.parameters()) if head is not None else []
        ids = {id(p) for p in head_params}
        body = [p for p in model.parameters() if id(p) not in ids]
        groups = [{"params": body, "lr": lr}]
        if head_params:
            groups.append({"params": head_params, "lr": lr * head_lr_mult})
        return groups

    def input_multiple(self, model: nn.Module) -> int:
        """The multiple the input's H and W must have (the output stride where it matters)."""
        return input_multiple(model)

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits ``(B, N, H, W)`` at the input size, any H and W."""
        return predict_logits(model, x, self.input_multiple(model))

    def stride8_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> the logits ``(B, N, ceil(S/8), ceil(S/8))`` SEC's losses use:
        the full-size logits average-pooled by 8."""
        return F.avg_pool2d(main_output(model(x)), 8, ceil_mode=True)


SEGMENTERS = Registry("segmenter")
"""Segmenter architectures by name: ``deeplab-largefov``; every other name is looked up
among smp's architectures (:func:`segmenter_spec`)."""


@SEGMENTERS.register(DEEPLAB_ARCH)
class DeepLabSpec(SegmenterSpec):
    """DeepLab-LargeFOV: a fixed VGG16 encoder, fc8 at 10x LR, SEC's logits from fc8."""

    default_encoder = None

    def build(self, encoder, num_classes, weights=None, decoder_channels=None):
        if decoder_channels is not None:
            raise AttnGuideError(f"{DEEPLAB_ARCH} has a fixed decoder (fc6-fc8); drop decoder_channels "
                                 "(--decoder-channels) or use an smp arch such as 'unet'")
        if encoder not in (None, "vgg16"):
            raise AttnGuideError(
                f"{DEEPLAB_ARCH} has a fixed VGG16 encoder; pass encoder=None or 'vgg16', "
                f"not {encoder!r} (for other encoders use an smp arch such as 'deeplabv3plus')"
            )
        model = DeepLabLargeFOV(num_classes)
        if weights is not None:
            _warn_missing(load_vgg16_weights(model, weights), weights)
        return model

    def param_groups(self, model, lr, head_lr_mult):
        return model.param_groups(lr, head_lr_mult)

    def input_multiple(self, model):
        return 1  # any size: fc8 is upsampled to the input

    def stride8_logits(self, model, x):
        return model.classifier(model.forward_features(x))  # fc8 on the stride-8 features


class SmpSpec(SegmenterSpec):
    """An architecture of segmentation_models_pytorch (``unet``, ``deeplabv3plus``, ...)."""

    def build(self, encoder, num_classes, weights=None, decoder_channels=None):
        arch = self.arch
        smp = _import_smp()
        if arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
            close = difflib.get_close_matches(arch.lower(), segmenter_names(), n=3)
            raise AttnGuideError(
                f"unknown segmenter arch {arch!r}; close matches: {close}. "
                f"Valid: {', '.join(segmenter_names())}"
            )
        if not encoder:
            raise AttnGuideError(f"arch {arch!r} needs an encoder, e.g. 'resnet34' or 'tu-resnet18'")
        _check_smp_encoder(smp, encoder)
        width = {} if decoder_channels is None else {"decoder_channels": decoder_channels}
        model_class = smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()]
        if width and "decoder_channels" not in inspect.signature(model_class).parameters:
            # smp passes unknown keywords on to the encoder, which may ignore them
            raise AttnGuideError(
                f"smp's {arch!r} has no decoder_channels setting; drop --decoder-channels (it applies to "
                "unet, unetplusplus, manet, deeplabv3, deeplabv3plus, pan and upernet)")
        try:
            model = smp.create_model(
                arch, encoder_name=encoder, encoder_weights=None, classes=num_classes, **width
            )
        except (KeyError, ValueError, RuntimeError, TypeError, AssertionError) as err:
            if width:
                raise AttnGuideError(
                    f"smp cannot build {arch!r} with decoder_channels {decoder_channels!r} ({err}): give "
                    "one width per decoder stage for unet, unetplusplus and manet (e.g. 64,32,16,8,4), "
                    "one number for deeplabv3, deeplabv3plus, pan and upernet") from err
            raise AttnGuideError(f"smp cannot build {arch!r} with encoder {encoder!r}: {err}") from err
        if weights is not None:
            # tu- encoders wrap the timm model (features_only) in ``.model``, with timm's names
            target = model.encoder.model if encoder.startswith("tu-") else model.encoder
            state = _read_state_dict(weights)
            report = _load_into(target, state, weights, f"encoder weight file {str(weights)!r}")
            _warn_missing(report, weights)
        return model


def segmenter_spec(arch: str) -> SegmenterSpec:
    """The :class:`SegmenterSpec` of ``arch`` (``deeplab-largefov``, ``deeplab_largefov``,
    or an smp architecture, checked when the model is built)."""
    key = arch.lower().replace("_", "-")
    if key in SEGMENTERS:
        return SEGMENTERS.get(key)(key)
    return SmpSpec(arch)


class Stride8Logits(nn.Module):
    """``(B, 3, S, S)`` -> the stride-8 logits ``(B, N, ceil(S/8), ceil(S/8))`` of SEC's
    losses (:meth:`SegmenterSpec.stride8_logits`), as a module that DDP can wrap. Holds no
    weights of its own (checkpoints keep the wrapped model's)."""

    def __init__(self, model: nn.Module, spec: SegmenterSpec) -> None:
        super().__init__()
        self.model, self.spec = model, spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.stride8_logits(self.model, x)


def _warn_missing(report: LoadReport, path: str | os.PathLike) -> None:
    logger.info(
        "loaded %d tensors from %s; %d unused", len(report.loaded), path, len(report.unexpected)
    )
    if report.missing:
        warnings.warn(
            f"{str(path)!r} left {len(report.missing)} encoder tensors at their initial values, "
            f"e.g. {report.missing[:5]}",
            stacklevel=3,
        )
