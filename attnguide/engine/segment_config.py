"""`SegmentConfig`: every option of ``attnguide segment``, with commented defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnguide.engine import options
from attnguide.engine.options import Options, from_command_line
from attnguide.errors import AttnGuideError
from attnguide.io.checkpoints import SEGMENTER
from attnguide.wsss.crf import parse_crf_params, require_crf

SCHEDULES = ("poly", "cosine", "step")
OPTIMIZERS = ("adamw", "sgd")
CLASS_WEIGHTS = ("none", "balanced")
MODES = ("pseudo", "sec")
SEC_PARTS = ("seed", "expand", "constrain")  # metrics.jsonl: train_seed, train_expand, train_constrain
AMP_DTYPES = ("auto", "bf16", "fp16")
DEEPLAB = "deeplab-largefov"


@dataclass
class SegmentConfig(Options):
    """Options of ``attnguide segment`` (field comments are the CLI help)."""

    COMMAND = "segment"  # (class attributes, not options: see engine.options.Options)

    # --- data
    data: str = ""  # data set folder (images, classes, image-level labels and the val masks)
    labels: str = ""  # folder of pseudo-label PNGs (attnguide pseudo-label --out, or its crf/), or "gt" (upper bound); --mode sec: the pseudo-label --out folder holding cams/
    mode: str = "pseudo"  # pseudo (cross-entropy on the label PNGs) or sec (SEC's seed + expand + constrain losses on the CAMs of 'pseudo-label --save-cams')
    train_split: str = "train"  # split to train on (its images must all have a label PNG, or CAMs with --mode sec)
    val_split: str = "val"  # split with masks for the per-epoch mIoU ("" = none)
    crop_size: int = 320  # side of the random training crops (DeepLab v1: 321; most smp archs: a multiple of 16 or 32)
    scale_range: str = "0.5,1.5"  # random rescaling factor range "MIN,MAX" before the crop
    workers: int = 0  # data loading worker processes

    # --- model
    arch: str = "deeplabv3plus"  # deeplab-largefov or any smp architecture (unet, deeplabv3plus, ...)
    encoder: str | None = None  # smp encoder or tu-<timm model> (default resnet50; vgg16 for deeplab-largefov)
    weights: str | None = None  # local encoder weights file (VGG16 for deeplab-largefov)
    decoder_channels: str | None = None  # widths of the smp decoder: one per stage for unet/unetplusplus/manet (e.g. 64,32,16,8,4; smp's default 256,128,64,32,16), one number for deeplabv3(plus)/pan/upernet (default: the arch's)

    # --- optimisation (defaults: AdamW, warm-up, poly; the DeepLab paper's SGD recipe is benchmarks/voc2012/configs/segment-largefov.yaml)
    epochs: int | None = None  # epochs (default 10 when --iterations is not given)
    iterations: int | None = None  # total iterations instead of epochs (DeepLab/SEC: 8000)
    batch_size: int = 8  # GLOBAL batch size (split over DDP processes)
    optimizer: str = "adamw"  # adamw or sgd (DeepLab / SEC: sgd with --momentum 0.9)
    lr: float = 1e-3  # peak learning rate of the decoder (DeepLab / SEC with sgd: 1e-3)
    encoder_lr_mult: float | None = None  # learning-rate factor of the encoder (default: 0.1 when --weights loads a pretrained encoder, else 1)
    head_lr_mult: float = 1.0  # learning-rate factor of the last classifier layer (DeepLab: 10)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-2  # weight decay (AdamW: decoupled; DeepLab with sgd: 5e-4)
    schedule: str = "poly"  # per-iteration LR schedule: poly (1 - t/T)^power, cosine or step
    poly_power: float = 0.9  # exponent of the poly schedule
    step_size: int = 0  # step schedule: iterations between drops (0 = T // 4; DeepLab 2000 of 8000)
    step_gamma: float = 0.1  # step schedule factor
    warmup_iterations: int | None = None  # linear LR warm-up from 0 over this many iterations (default: 5% of the run; 0 = none, as DeepLab)
    class_weights: str = "none"  # cross-entropy class weights: none, or balanced (inverse square root of each class's pixel share in the training labels)
    label_smoothing: float = 0.0  # label smoothing of the cross-entropy (--mode pseudo), in [0, 1)
    amp: bool = False  # autocast: bf16 on CPU; fp16 (with a grad scaler) or bf16 on CUDA
    amp_dtype: str = "auto"  # auto (CPU bf16, CUDA fp16), bf16 or fp16

    # --- seed, expand, constrain (--mode sec)
    fg_fraction: float = 0.2  # foreground cue of a class: pixels above this fraction of the class's max attention (GAIN, SEC: 0.2)
    bg_threshold: float = 0.05  # background cue: pixels where every class's attention is below this fraction of its max (GAIN used a saliency network instead)
    fg_decay: float = 0.996  # GWRP decay of the expand loss for the image's classes (SEC: 0.996)
    bg_decay: float = 0.999  # GWRP decay of the expand loss for the background (SEC: 0.999)
    constrain_weight: float = 1.0  # weight of the constrain-to-boundary loss, a dense CRF per image and iteration (slow on CPU; 0 drops it and the CRF)

    # --- evaluation
    crf_eval: bool = False  # also report val mIoU after dense-CRF post-processing (val_miou_crf)
    crf_params: str = "deeplab"  # CRF preset irn, psa or deeplab (DeepLab-v1), then overrides
    crf_workers: int = 0  # CRF worker processes for crf_eval and the constrain loss of --mode sec

    # --- run
    out: str = "runs/segment"  # run folder: segment.yaml, metrics.jsonl, last.pt, best.pt
    resume: str | None = None  # run folder or checkpoint to continue from
    overwrite: bool = False  # start afresh in an --out folder that already holds a run
    checkpoint_every: int = 200  # also write last.pt every N iterations (0 = after each epoch only)
    seed: int = 0  # seed of weights, data order and augmentation
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1, ...
    quiet: bool = False  # no progress bar and no per-epoch lines

    @property
    def scales(self) -> tuple[float, float]:
        parts = [p for p in str(self.scale_range).replace(" ", ",").split(",") if p]
        try:
            low, high = (float(p) for p in parts)
        except ValueError:
            raise AttnGuideError(f"--scale-range must be MIN,MAX such as 0.5,1.5, got {self.scale_range!r}") from None
        if not 0 < low <= high:
            raise AttnGuideError(f"--scale-range needs 0 < MIN <= MAX, got {self.scale_range!r}")
        return low, high

    @property
    def decoder_widths(self) -> int | tuple[int, ...] | None:
        """``decoder_channels`` as smp takes it: None, one int, or a tuple of ints."""
        if self.decoder_channels is None or str(self.decoder_channels).strip() == "":
            return None
        parts = [p for p in str(self.decoder_channels).replace(" ", ",").split(",") if p]
        try:
            widths = tuple(int(p) for p in parts)
        except ValueError:
            widths = ()
        if not widths or min(widths) < 1:
            raise AttnGuideError(f"--decoder-channels must be positive integers such as 64,32,16,8,4 "
                                 f"(or one number), got {self.decoder_channels!r}")
        return widths[0] if len(widths) == 1 else widths

    def validate(self) -> SegmentConfig:
        if not self.data:
            raise AttnGuideError("pass the data set with --data PATH")
        if not self.labels:
            raise AttnGuideError("pass --labels DIR (pseudo-label PNGs) or --labels gt (ground truth)")
        if self.mode not in MODES:
            raise AttnGuideError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "sec":
            self._validate_sec()
        if self.schedule not in SCHEDULES:
            raise AttnGuideError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise AttnGuideError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise AttnGuideError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}, "
                                 f"got {self.class_weights!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise AttnGuideError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.warmup_iterations is not None and self.warmup_iterations < 0:
            raise AttnGuideError(f"--warmup-iterations must be >= 0, got {self.warmup_iterations}")
        if self.encoder_lr_mult is not None and self.encoder_lr_mult < 0:
            raise AttnGuideError(f"--encoder-lr-mult must be >= 0, got {self.encoder_lr_mult}")
        if self.amp_dtype not in AMP_DTYPES:
            raise AttnGuideError(f"--amp-dtype must be one of {', '.join(AMP_DTYPES)}, got {self.amp_dtype!r}")
        if self.epochs is not None and self.iterations is not None:
            raise AttnGuideError("pass either --epochs or --iterations, not both")
        for name in ("epochs", "iterations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AttnGuideError(f"--{name} must be at least 1, got {value}")
        for name in ("batch_size", "crop_size"):
            if getattr(self, name) < 1:
                raise AttnGuideError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("workers", "crf_workers", "checkpoint_every", "step_size"):
            if getattr(self, name) < 0:
                raise AttnGuideError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise AttnGuideError(f"--lr must be > 0, got {self.lr}")
        for name in ("head_lr_mult", "momentum", "weight_decay", "poly_power", "step_gamma"):
            if getattr(self, name) < 0:
                raise AttnGuideError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        self.scales  # noqa: B018 - parse check
        self.decoder_widths  # noqa: B018 - parse check
        if self.crf_eval:
            parse_crf_params(self.crf_params)
            require_crf("--crf-eval")
        return self

    def _validate_sec(self) -> None:
        if self.labels.lower() == "gt":
            raise AttnGuideError("--mode sec trains on the CAMs of 'attnguide pseudo-label --save-cams', "
                                 "not on ground truth: pass --labels PSEUDO_DIR, or --mode pseudo with --labels gt")
        if not 0.0 < self.fg_fraction < 1.0:
            raise AttnGuideError(f"--fg-fraction must lie in (0, 1), got {self.fg_fraction}")
        if not 0.0 <= self.bg_threshold <= self.fg_fraction:
            raise AttnGuideError(f"--bg-threshold must lie in [0, --fg-fraction {self.fg_fraction}], "
                                 f"got {self.bg_threshold}")
        for name in ("fg_decay", "bg_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AttnGuideError(f"--{name.replace('_', '-')} must lie in [0, 1], got {getattr(self, name)}")
        if self.constrain_weight < 0:
            raise AttnGuideError(f"--constrain-weight must be >= 0, got {self.constrain_weight}")
        if self.constrain_weight > 0:
            try:
                import pydensecrf.densecrf  # noqa: F401
            except ImportError:
                raise AttnGuideError(
                    "the constrain loss of --mode sec needs pydensecrf, which is not installed: pip "
                    "install 'attnguide[crf]' (the pydensecrf2 package), or pass --constrain-weight 0 "
                    "to train with the seed and expand losses only") from None


    def encoder_factor(self) -> float:
        """The encoder's LR factor: ``encoder_lr_mult``, else 0.1 with pretrained ``weights``, else 1."""
        if self.encoder_lr_mult is not None:
            return self.encoder_lr_mult
        return 0.1 if self.weights else 1.0

    def warmup(self, total: int) -> int:
        """Warm-up iterations of a run of ``total``: ``warmup_iterations``, else 5% of it."""
        if self.warmup_iterations is not None:
            return self.warmup_iterations
        return round(0.05 * total)

    @classmethod
    def resumed_base(cls, base: dict[str, Any], given: set[str]) -> dict[str, Any]:
        """A resumed run's saved options, less the length it no longer has: a new
        ``--epochs`` replaces the saved ``iterations`` and the other way round. A run saved
        before the optimiser options existed trained with SGD, no warm-up and one encoder
        learning rate: it resumes so, whatever today's defaults are."""
        if "optimizer" not in base:
            base.update(optimizer="sgd", warmup_iterations=0, encoder_lr_mult=1.0)
        if "epochs" in given:
            base.pop("iterations", None)
        if "iterations" in given:
            base.pop("epochs", None)
        return base


def config_from_options(overrides: dict[str, Any] | None = None,
                        config_file: str | Path | None = None) -> SegmentConfig:
    """A config from the options given (None = not given) and a ``--config`` file; with
    ``resume`` the resumed run's saved config is the base and ``out`` defaults to its
    folder (precedence as for ``train``: :func:`attnguide.engine.options.from_command_line`)."""
    return from_command_line(SegmentConfig, overrides, config_file, kind=SEGMENTER)


def save_config(cfg: SegmentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (``attnguide segment --config`` reads it back)."""
    options.save_config(cfg, path, repeat="attnguide segment --config segment.yaml")
