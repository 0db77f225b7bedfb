"""`TrainConfig`: every option of ``attnguide train``, with commented defaults.

Precedence (lowest to highest): the defaults below, the config saved in the
checkpoint given to ``--resume``, a YAML or TOML ``--config`` file, options
given on the command line. The resolved config is saved as ``config.yaml`` in
the run folder; ``attnguide train --config RUN/config.yaml`` repeats a run.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from attnguide.core.checks import FREEZE_BN, resolve_freeze_bn
from attnguide.core.guidance import (  # noqa: F401 - the guidance words belong to the options
    AUTO_GUIDANCE,
    AVOID_SOURCES,
    GUIDANCE_PARTS,
    SWAP_SOURCES,
    guidance_parts,
    needs_masks,
    parse_annotation_kinds,
    resolve_guidance,
    resolve_swap_source,
)
from attnguide.core.guide import GuidedAttention
from attnguide.core.layers import LAYOUTS
from attnguide.engine import options
from attnguide.engine.loggers import require_loggers
from attnguide.engine.options import Options
from attnguide.errors import AttnGuideError
from attnguide.io.checkpoints import CLASSIFIER

AUTO_LABELLED_SHARE = 0.5
"""What ``--labelled-share auto`` becomes with a swap term (0 without): half of every batch
pixel-labelled, so the swap has partners in every step (RESULTS.md, "10 % masks")."""
EXT_CLASSES = ("target", "all")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "poly", "step", "constant")
AMP_DTYPES = ("auto", "bf16", "fp16")
DATA_MODES = ("auto", "multi", "single")
BEST_METRICS = ("auto", "val_accuracy", "val_map", "val_cam_miou", "val_attention_inside", "train_loss")


@dataclass
class TrainConfig(Options):
    """Options of one training run. Field comments are the CLI's help text."""

    COMMAND = "train"  # (class attributes, not options: see engine.options.Options)
    AUTO_IS_NONE = frozenset({"labelled_share"})
    # freeze_bn was true/false in older runs: the words GuidedAttention reads those booleans as
    BOOL_WORDS = {"freeze_bn": (resolve_freeze_bn(True), resolve_freeze_bn(False))}

    # --- data
    data: str = ""  # data set folder: a folder data set (classes.txt + CSVs) or VOC 2012
    train_split: str = "train"  # split to train on (CSV stem, or VOC list such as train_aug)
    val_split: str = "val"  # split evaluated after each epoch ("" = no evaluation)
    data_mode: str = "auto"  # labels: auto (single-label iff one label per row), multi, single
    image_size: int = 96  # side S of the S x S training images
    pixel_labels: str | None = None  # images whose masks feed L_e: all (None), a count N, or "10%"
    labelled_share: float | None = None  # share of each batch that is pixel-labelled, in [0, 1]: the labelled images recur, and an epoch lasts until every image was shown once (more steps per epoch); auto: 0.5 with a swap term, which needs labelled partners in the batch, else 0. Only with a guidance that uses masks
    workers: int = 0  # data loading worker processes (0 = in the main process)

    # --- model
    model: str = "resnet18"  # any timm model name (timm.list_models())
    weights: str | None = None  # local weights file (.pt/.pth/.safetensors); classifier re-sized
    partial_weights: bool = False  # accept --weights that match less than half of the backbone (the rest stays random)
    pretrained: bool = False  # ask timm's hub for weights (needs network; else use --weights)
    layer: str | None = "auto"  # attention layer: auto (deepest stage with >= 7x7 cells), a dotted name, or none (last stage)

    # --- guided attention (GAIN)
    guidance: str = "auto"  # auto (self without pixel masks, ext+swap with them); none; self (L_cl + alpha L_am); ext (+ omega L_e); rrr (input gradients); bg (background invariance); swap (background swap); bg_null (the background alone names no class); energy, box_l1, box_swap (boxes); point (clicks); avoid (avoid regions); or joined: ext+swap, self+energy (am = self). ext, rrr, bg, swap, bg_null need masks (or scribbles); auto adds energy+box_swap (in place of swap), point, avoid for boxes, points, avoid named by --annotations
    warmup_epochs: int = 1  # classification-only epochs before L_am is switched on
    alpha: float = 1.0  # weight of the attention-mining loss L_am (paper: 1)
    omega: float = 10.0  # weight of the pixel-mask loss L_e of GAIN_ext (paper: 10)
    cam: str = "gradcam"  # CAM method: gradcam, gradcampp, xgradcam, layercam, hirescam, cam
    mask: str = "soft_threshold"  # erasing mask T(A): soft_threshold (paper) or hard_threshold
    mask_threshold: float = 0.5  # threshold of T(A) = sigmoid(sharpness * (A - threshold))
    mask_sharpness: float = 10.0  # sharpness of T(A) (the paper's other "omega")
    am_score: str = "auto"  # score in L_am: auto (sigmoid multi-label, softmax single), sigmoid, softmax, logit
    freeze_bn: str = "auto"  # which extra forwards of a guided step run BatchNorm in eval mode: all, erased (only images with regions blanked out: GAIN's erased images, the objects alone; the background swap's composed pictures run in training mode), none, or auto (none with a background swap, else all)
    detach_weights: bool = False  # no second-order gradient through the CAM weights (cheaper)
    max_pairs_per_image: int | None = None  # cap on (image, class) pairs per image (None = all)
    area_weight: float = 0.0  # weight of a penalty on the erased area (0 = off)
    ext_classes: str = "target"  # L_e on the positive classes' attention (target, the paper) or every class's, absent ones too (all)
    rrr_weight: float = 1.0  # weight of input-gradient (RRR) supervision on pixel-labelled images (with --guidance rrr or ext+rrr)
    bg_weight: float = 1.0  # weight of background invariance on pixel-labelled images (with --guidance bg or ext+bg)
    bg_null_weight: float = 1.0  # weight of bg_null (the background alone names no class; --guidance ...+bg_null)
    swap_weight: float = 1.0  # weight of the background swap (with --guidance swap or ext+swap; box_swap for boxes)
    swap_source: str = "auto"  # objects to swap: masks (pixel-labelled images only), attention (also every other image, cut out by its own attention; with box_swap, the attention inside the boxes), or auto (masks, which worked better)
    annotations: str = "auto"  # annotation kinds that feed the terms: auto (every kind of the training split that --guidance uses) or a ','-joined list of masks, scribbles, boxes, points, avoid (CSV columns mask, scribble, boxes, points, avoid; VOC: boxes from Annotations/*.xml, read only when named)
    annotated: str | None = None  # images whose boxes, points and avoid regions feed the terms: same (None: the --pixel-labels draw, among images with any chosen kind), or a draw of their own, all, a count N or "10%" (then --pixel-labels counts masks and scribbles only: 200 masks beside every image's boxes is --pixel-labels 200 --annotated all)
    energy_weight: float = 1.0  # weight of the energy loss on boxes, 1 - share of attention inside the class's boxes (with --guidance energy, e.g. self+energy)
    box_l1_weight: float = 1.0  # weight of the L1 loss on attention outside the boxes (with --guidance box_l1)
    point_weight: float = 1.0  # weight of the point loss, the attention peak near each click (with --guidance point)
    point_sigma: float = 0.05  # spread of a click's Gaussian, as a share of the image's shorter side
    avoid_weight: float = 1.0  # weight of the share of attention inside avoid regions (with --guidance avoid)
    avoid_source: str = "attention"  # what must not look at avoid regions: attention (CAMs of the positive classes) or input_grad (RRR's input gradient, no CAM)
    guide_options: dict[str, Any] = field(default_factory=dict)  # more GuidedAttention kwargs without an option of their own: fill, isolate_batchnorm, layout, check_finite (config file only)

    # --- optimisation
    epochs: int = 10  # training epochs
    steps: int | None = None  # total optimizer steps: the run ends there and the LR schedule spans them (None = epochs x steps per epoch). Gives an unguided baseline the step count of a guided run (see --labelled-share)
    batch_size: int = 32  # GLOBAL batch size (split evenly over DDP processes)
    optimizer: str = "sgd"  # sgd (momentum, nesterov off) or adamw
    lr: float = 0.01  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # weight decay (decoupled for AdamW)
    schedule: str = "cosine"  # per-iteration LR schedule: cosine, poly, step, constant
    lr_warmup_steps: int = 0  # linear LR warm-up iterations (not the classification warm-up)
    poly_power: float = 0.9  # exponent of the poly schedule (1 - t/T)^p
    step_epochs: int = 0  # step schedule: multiply by step_gamma every N epochs (0 = epochs // 3)
    step_gamma: float = 0.1  # step schedule factor
    min_lr: float = 0.0  # floor of the cosine and poly schedules
    clip_grad: float = 0.0  # clip the gradient norm to this value (0 = off)
    amp: bool = False  # autocast: bf16 on CPU; fp16 (with a grad scaler) or bf16 on CUDA
    amp_dtype: str = "auto"  # auto (CPU bf16, CUDA fp16), bf16 or fp16

    # --- evaluation
    cam_threshold: float = 0.15  # background score for CAM mIoU (attention min-max normalised; IRN's 0.15)
    best_metric: str = "auto"  # metric that picks best.pt: auto (val_map / val_accuracy), or a metrics.jsonl key
    snapshots: int = 8  # attention pictures of N fixed val images after each epoch, RUN/snapshots/epoch_XXX.png (0 = off; needs matplotlib)

    # --- run
    out: str = "runs/train"  # run folder: config.yaml, metrics.jsonl, last.pt, best.pt
    resume: str | None = None  # run folder or checkpoint to continue from (bit-exact on CPU)
    overwrite: bool = False  # start afresh in an --out folder that already holds a run
    checkpoint_every: int = 200  # also write last.pt every N iterations (0 = only after each epoch)
    seed: int = 0  # seed of weights, data order, augmentation and the pixel-label draw
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, ...
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only)
    tensorboard: bool = False  # TensorBoard logs in RUN/tensorboard (the same as --logger tensorboard)
    logger: str = "none"  # experiment loggers fed each step and epoch: tensorboard (RUN/tensorboard), wandb (offline unless WANDB_MODE says otherwise; RUN/wandb), both as tensorboard,wandb, or none
    wandb_project: str = "attnguide"  # W&B project of --logger wandb
    quiet: bool = False  # no progress bar and no per-epoch lines

    def validate(self) -> TrainConfig:
        """Check choices and ranges; return self."""
        guidance_parts(self.guidance)
        _choice("ext_classes", self.ext_classes, EXT_CLASSES)
        _choice("swap_source", self.swap_source, SWAP_SOURCES)
        _choice("avoid_source", self.avoid_source, AVOID_SOURCES)
        _choice("freeze_bn", self.freeze_bn, FREEZE_BN)
        parse_annotation_kinds(self.annotations)
        if not self.point_sigma > 0:
            raise AttnGuideError(f"--point-sigma must be > 0 (e.g. 0.05), got {self.point_sigma}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("amp_dtype", self.amp_dtype, AMP_DTYPES)
        _choice("data_mode", self.data_mode, DATA_MODES)
        if not self.data:
            raise AttnGuideError("no data set: pass --data PATH (or data: in the --config file)")
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise AttnGuideError(f"{_opt(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "workers", "checkpoint_every", "lr_warmup_steps", "step_epochs"):
            if getattr(self, name) < 0:
                raise AttnGuideError(f"{_opt(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("alpha", "omega", "weight_decay", "clip_grad", "min_lr", "area_weight",
                     "rrr_weight", "bg_weight", "bg_null_weight", "swap_weight", "energy_weight",
                     "box_l1_weight", "point_weight", "avoid_weight"):
            if getattr(self, name) < 0:
                raise AttnGuideError(f"{_opt(name)} must be >= 0, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise AttnGuideError(f"--steps must be at least 1 (or left out for --epochs), got {self.steps}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise AttnGuideError(f"--lr must be > 0 (a peak learning rate such as 0.01), got {self.lr}")
        check_guide_options(self.guide_options, "TrainConfig")
        require_loggers(self.logger, self.tensorboard)
        if self.labelled_share is not None and not 0 <= self.labelled_share <= 1:
            raise AttnGuideError(f"--labelled-share must lie in [0, 1], got {self.labelled_share}")
        if not 0 <= self.cam_threshold <= 1:
            raise AttnGuideError(f"--cam-threshold must lie in [0, 1], got {self.cam_threshold}")
        if self.weights and self.pretrained:
            raise AttnGuideError("pass either --weights PATH or --pretrained, not both")
        if self.best_metric not in BEST_METRICS and not self.best_metric.startswith("val_"):
            raise AttnGuideError(f"--best-metric must be one of {', '.join(BEST_METRICS)} or a val_* key")
        parts = guidance_parts(self.guidance)
        if "ext" in parts and self.omega == 0:
            raise AttnGuideError("--guidance ext with --omega 0 is GAIN_self: use --guidance self")
        for part in ("bg", "bg_null", "swap", "rrr", "energy", "box_l1", "point", "avoid", "box_swap"):
            weight = "swap" if part == "box_swap" else part
            if part in parts and getattr(self, f"{weight}_weight") == 0:
                raise AttnGuideError(f"--guidance {part} with {_opt(weight + '_weight')} 0 adds nothing: "
                                     "give a weight > 0")
        return self


# GuidedAttention arguments that a regular option sets (guide_options may not repeat them)
_SET_BY = {"terms": "--guidance and the *-weight options", "mask": "--mask, --mask-threshold, "
           "--mask-sharpness"}
_LAYOUT_WORDS = tuple(LAYOUTS)


def guide_option_types() -> dict[str, type]:
    """The keys ``guide_options`` accepts and their types: the `GuidedAttention` arguments
    that no regular option sets."""
    params = inspect.signature(GuidedAttention.__init__).parameters
    out = {}
    for name, p in params.items():
        if name in ("self", "model") or name in _SET_BY or name in FIELDS:
            continue
        out[name] = type(p.default) if not isinstance(p.default, str) else str
    return out


def check_guide_options(values: Any, source: str) -> None:
    """Raise naming ``source`` (``config file FILE``) when ``guide_options`` has an unknown
    key, a key that duplicates a regular option, or a value of the wrong type."""
    if not isinstance(values, Mapping):
        raise AttnGuideError(f"{source}: guide_options must be a mapping such as {{fill: 0.5}}, "
                             f"got {values!r}")
    allowed = guide_option_types()
    for key, value in values.items():
        where = f"{source}: guide_options.{key}"
        if key in FIELDS or key in _SET_BY:
            option = _SET_BY.get(key) or _opt(key)
            raise AttnGuideError(f"{where} duplicates the option {option}: set it there "
                                 f"({key}: ... at the top level of the config file), not in guide_options")
        if key not in allowed:
            raise AttnGuideError(f"{where} is not a GuidedAttention argument; guide_options "
                                 f"takes {', '.join(sorted(allowed))}")
        want = allowed[key]
        if key == "layout":
            ok, words = value in _LAYOUT_WORDS, f"one of {', '.join(_LAYOUT_WORDS)}"
        elif want is bool:
            ok, words = isinstance(value, bool), "true or false"
        elif want is float:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value))
            words = "a finite number"
        else:
            ok, words = isinstance(value, want), want.__name__
        if not ok:
            raise AttnGuideError(f"{where} must be {words}, got {value!r}")


def resolve_auto(cfg: TrainConfig, has_masks: bool, kinds=()) -> str | None:
    """Resolve ``cfg``'s auto options in place once the training split is known (with pixel
    masks or not, the other annotation kinds it has); return the line that says what
    ``--guidance auto`` became (None when it was not auto)."""
    note = None
    if cfg.guidance == "auto":
        cfg.guidance = resolve_guidance("auto", has_masks, kinds)
        note = f"--guidance auto: {cfg.guidance}"
    parts = guidance_parts(cfg.guidance)
    cfg.swap_source = resolve_swap_source(cfg.swap_source)
    swap = bool(parts & {"swap", "box_swap"})
    if cfg.labelled_share is None:
        cfg.labelled_share = AUTO_LABELLED_SHARE if swap else 0.0
    auto_bn = cfg.freeze_bn == "auto"
    cfg.freeze_bn = resolve_freeze_bn(cfg.freeze_bn, swap)
    if note and "swap" in parts:
        note += (f" (swap source {cfg.swap_source}; at least {cfg.labelled_share:.0%} of every batch "
                 "pixel-labelled" + (f"; --freeze-bn {cfg.freeze_bn}" if auto_bn else "") + ")")
    return note


def _opt(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise AttnGuideError(f"{_opt(name)} must be one of {', '.join(choices)}, got {value!r}")


FIELDS = {f.name: f for f in fields(TrainConfig)}


def field_help() -> dict[str, str]:
    """Field name -> the comment after its default in this file (the CLI help)."""
    return {name: f.help for name, f in options.option_fields(TrainConfig).items() if f.help}


def coerce(name: str, value: Any, source: str) -> Any:
    """Convert a value from a config file or the command line to the field's type."""
    return options.coerce(TrainConfig, name, value, source)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML or TOML file, at the top level or under ``train``."""
    return options.read_config_file(TrainConfig, path)


def resolve_config(overrides: Mapping[str, Any] | None = None, config_file: str | Path | None = None,
                   base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Merge defaults < ``base`` (a resumed run's config) < ``config_file`` < ``overrides``."""
    return options.resolve(TrainConfig, overrides, config_file, base)


def config_from_options(overrides: Mapping[str, Any] | None = None,
                        config_file: str | Path | None = None) -> TrainConfig:
    """The config of a run from command-line options (only those given) and a ``--config``
    file; with ``resume`` the resumed run's saved config is the base (see
    :func:`attnguide.engine.options.from_command_line`)."""
    # the kind here (a segmenter's options would not fit); the model and class list are
    # checked by the trainer (engine.state)
    if config_file is not None:  # name the file in guide_options errors
        raw = options.read_config_file(TrainConfig, config_file).get("guide_options")
        if raw is not None:
            check_guide_options(raw, f"config file {Path(config_file).name}")
    return options.from_command_line(TrainConfig, overrides, config_file, kind=CLASSIFIER)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (``attnguide train --config`` reads it back)."""
    options.save_config(cfg, path, repeat="attnguide train --config config.yaml")
