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
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from attnguide.errors import AttnGuideError
from attnguide.models.classifiers import LoadReport  # one report type for every weights file

__all__ = [
    "DeepLabLargeFOV",
    "LoadReport",
    "load_vgg16_weights",
    "create_segmenter",
    "segmenter_names",
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
    """Tensors of a ``.safetensors`` or ``torch.save`` file (``weights_only=True``), nested
    ``state_dict``/``model`` entries unwrapped and a ``module.`` prefix (DataParallel)
    dropped: the same reader as the classifiers' ``--weights``."""
    from attnguide.models.classifiers import read_state_dict

    return {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike,
               source: str) -> LoadReport:
    """Copy the tensors of ``state`` whose names and shapes match ``module``'s; report the rest."""
    own = module.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise AttnGuideError(
            f"{source} has tensors of the wrong shape: {'; '.join(mismatched[:5])}"
        )
    usable = {k: v for k, v in state.items() if k in own}
    if not usable:
        raise AttnGuideError(
            f"{source} has none of the expected parameter names (model has e.g. "
            f"{list(own)[:3]}, file has e.g. {list(state)[:3]}); is it the right architecture?"
        )
    module.load_state_dict(usable, strict=False)
    return LoadReport(
        path=str(path),
        loaded=sorted(usable),
        missing=sorted(k for k in own if k not in usable),
        unexpected=sorted(k for k in state if k not in own),
    )


def load_vgg16_weights(model: DeepLabLargeFOV, path: str | os.PathLike) -> LoadReport:
    """Load VGG16 conv1-conv5 weights (torchvision or timm state dict) into ``model.features``.

    Only ``features.*`` tensors are used; the file's fully connected layers
    (torchvision ``classifier.*``, timm ``pre_logits.*`` / ``head.*``) are
    listed as ``unexpected``, and fc6/fc7/fc8 stay as initialised.

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
        return [DEEPLAB_ARCH]
    return [DEEPLAB_ARCH, *sorted(smp.MODEL_ARCHITECTURES_MAPPING)]


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

    Example:
        >>> model = create_segmenter("unet", "resnet18", num_classes=21)  # doctest: +SKIP
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise AttnGuideError(f"num_classes must be a positive int, got {num_classes!r}")
    key = arch.lower().replace("_", "-")
    if key == DEEPLAB_ARCH:
        if encoder not in (None, "vgg16"):
            raise AttnGuideError(
                f"{DEEPLAB_ARCH} has a fixed VGG16 encoder; pass encoder=None or 'vgg16', "
                f"not {encoder!r} (for other encoders use an smp arch such as 'deeplabv3plus')"
            )
        model = DeepLabLargeFOV(num_classes)
        if encoder_weights_path is not None:
            _warn_missing(load_vgg16_weights(model, encoder_weights_path), encoder_weights_path)
        return model

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
    try:
        model = smp.create_model(
            arch, encoder_name=encoder, encoder_weights=None, classes=num_classes
        )
    except (KeyError, ValueError, RuntimeError) as err:
        raise AttnGuideError(f"smp cannot build {arch!r} with encoder {encoder!r}: {err}") from err
    if encoder_weights_path is not None:
        # tu- encoders wrap the timm model (features_only) in ``.model``, with timm's names
        target = model.encoder.model if encoder.startswith("tu-") else model.encoder
        state = _read_state_dict(encoder_weights_path)
        report = _load_into(target, state, encoder_weights_path,
                            f"encoder weight file {str(encoder_weights_path)!r}")
        _warn_missing(report, encoder_weights_path)
    return model


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
