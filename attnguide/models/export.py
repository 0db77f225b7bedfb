"""Model folders in the Hugging Face Hub convention: ``attnguide export RUN DIR``.

A folder holds::

    config.json         format/version, architecture (timm name), classes, multilabel, layer,
                        guidance and the attention settings, image size, normalisation,
                        the multi-label decision threshold chosen on val (or null),
                        the run's training options
    model.safetensors   the bare timm model's state dict
    README.md           a model card: data, guidance, metrics from metrics.jsonl, usage
    attention.png       the run's last attention snapshot, when it has one

:func:`attnguide.models.trained.load_model` reads such a folder as it reads a run, so
the maps of the loaded folder equal the run's. Everything works offline; pushing the
folder to the Hub is ``huggingface_hub.upload_folder(folder_path=DIR, repo_id=...)``
(not a dependency of attnguide).

Example:
    >>> export_model("runs/scenes", "models/scenes")          # best.pt, else last.pt
    >>> trained = load_model("models/scenes")
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from attnguide.constants import IMAGENET_MEAN, IMAGENET_STD
from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write
from attnguide.io.checkpoints import CLASSIFIER, read_checkpoint, resolve_checkpoint

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "checkpoint_threshold", "export_model", "is_model_folder",
           "read_model_folder"]

FOLDER_FORMAT = "attnguide-model"
FOLDER_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PICTURE_NAME = "attention.png"
GUIDE_KEYS = ("cam", "mask", "threshold", "sharpness", "alpha", "omega", "am_score", "freeze_bn",
              "detach_weights", "fill", "area_weight", "rrr_weight")


def checkpoint_threshold(ckpt: dict[str, Any]) -> float | None:
    """The multi-label decision threshold of a classifier checkpoint: the
    ``val_decision_threshold`` of the last epoch it has seen (None without a validation split,
    for single-label runs and for runs older than the key)."""
    history = ckpt.get("history") or []
    value = history[-1].get("val_decision_threshold") if history else None
    return None if value is None else float(value)


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with a ``config.json`` and a ``model.safetensors``."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def read_model_folder(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json as a dict, the state dict) of a model folder; errors name the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not is_model_folder(path):
        raise AttnGuideError(f"{path} is not a model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                             "(write one with `attnguide export RUN DIR`)")
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AttnGuideError(f"{path / CONFIG_NAME} is not valid JSON ({error}); export the run again") from None
    if config.get("format") != FOLDER_FORMAT:
        raise AttnGuideError(f"{path / CONFIG_NAME} is not an attnguide model config (format "
                             f"{config.get('format')!r}, expected {FOLDER_FORMAT!r})")
    if int(config.get("version", 0)) > FOLDER_VERSION:
        raise AttnGuideError(f"{path / CONFIG_NAME} has version {config['version']}, newer than this "
                             f"attnguide reads ({FOLDER_VERSION}); upgrade attnguide")
    for key in ("architecture", "classes", "multilabel", "image_size"):
        if key not in config:
            raise AttnGuideError(f"{path / CONFIG_NAME} lacks {key!r}; export the run again")
    return config, load_file(str(path / WEIGHTS_NAME))


def _metrics(run_dir: Path | None) -> list[dict[str, Any]]:
    if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
        return []
    records = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _card(config: dict[str, Any], records: list[dict[str, Any]], source: str, picture: bool) -> str:
    train = config["training"]
    name = Path(source).parent.name or "attnguide-model"
    lines = [
        "---",
        "library_name: attnguide",
        "tags: [image-classification, guided-attention, gain, timm]",
        "pipeline_tag: image-classification",
        "---",
        "",
        f"# {name}: {config['architecture']} with {config['guidance']} guided attention",
        "",
        f"A timm `{config['architecture']}` classifier trained with attnguide (GAIN guided attention, "
        f"guidance `{config['guidance']}`), exported from `{source}`.",
        "",
        "## Model",
        "",
        f"- classes ({len(config['classes'])}, {'multi-label, sigmoid' if config['multilabel'] else 'single-label, softmax'}): "
        + ", ".join(config["classes"]),
        f"- attention layer: `{config['layer']}`; CAM `{config['guide'].get('cam')}`",
        f"- input: {config['image_size']} px, normalised with mean {config['normalize']['mean']} "
        f"and std {config['normalize']['std']}",
        "",
        "## Training",
        "",
        f"- data: `{train.get('data')}` (train split `{train.get('train_split')}`, validation "
        f"`{train.get('val_split') or 'none'}`), pixel labels: {train.get('pixel_labels') or 'all with a mask'}",
        f"- guidance `{config['guidance']}`: alpha {train.get('alpha')}, omega {train.get('omega')}, "
        f"{train.get('warmup_epochs')} warm-up epochs of {train.get('epochs')}",
        f"- optimizer {train.get('optimizer')}, lr {train.get('lr')}, batch size {train.get('batch_size')}, "
        f"seed {train.get('seed')}",
        "",
        "## Metrics",
        "",
    ]
    if records:
        # best.pt holds the last epoch marked best; any other checkpoint: the epoch it stopped at
        best = records[-1]
        if Path(source).name == "best.pt":
            best = next((r for r in reversed(records) if r.get("best")), best)
        keys = [k for k, v in best.items() if k.startswith("val_") and isinstance(v, (int, float))
                and not isinstance(v, bool)] or ["train_loss"]
        lines += [f"From the run's metrics.jsonl, epoch {best.get('epoch')} (the epoch of the exported "
                  f"`{Path(source).name}`):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(best.get(k))} |" for k in keys]
    else:
        lines.append("The run folder had no metrics.jsonl.")
    if picture:
        lines += ["", f"![attention maps of validation images]({PICTURE_NAME})"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from attnguide.models.trained import load_model",
        "",
        'trained = load_model("path/to/this/folder")',
        "guide = trained.guide()                     # GuidedAttention with the trained settings",
        "probs = trained.predict(images)             # (B, C) from normalised (B, 3, S, S) images",
        "maps = guide.attention(images, resize=True, normalize=True)   # (B, 1, S, S)",
        "```",
        "",
    ]
    return "\n".join(lines)


def export_model(run_or_checkpoint: str | os.PathLike, out: str | os.PathLike, *, prefer: str = "best",
                 overwrite: bool = False) -> Path:
    """Write the model folder of an ``attnguide train`` run (see the module doc).

    Args:
        run_or_checkpoint: a run folder (its ``best.pt``, else ``last.pt``) or a checkpoint.
        out: the folder to write; refused when it holds files, unless ``overwrite``.
        prefer: ``"best"`` or ``"last"`` for a run folder.

    Returns:
        ``out`` as a Path.
    """
    from safetensors.torch import save

    if prefer not in ("best", "last"):
        raise AttnGuideError(f"--prefer must be best or last, got {prefer!r}")
    path = resolve_checkpoint(run_or_checkpoint, prefer)
    ckpt = read_checkpoint(path, CLASSIFIER)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AttnGuideError(f"{out} is a file; give a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise AttnGuideError(f"{out} already holds files; pick an empty folder or pass --overwrite")
    train = dict(ckpt.get("config") or {})
    norm = ckpt.get("normalize") or {}
    config = {
        "format": FOLDER_FORMAT,
        "version": FOLDER_VERSION,
        "architecture": ckpt["model_name"],
        "classes": list(ckpt["class_names"]),
        "multilabel": bool(ckpt["multilabel"]),
        "layer": ckpt.get("layer"),
        "guidance": train.get("guidance", "unknown"),
        "guide": {k: train[k] for k in GUIDE_KEYS if k in train},
        "image_size": int(ckpt.get("image_size") or train.get("image_size") or 224),
        "normalize": {"mean": list(norm.get("mean", IMAGENET_MEAN)), "std": list(norm.get("std", IMAGENET_STD))},
        "epoch": ckpt.get("epoch"),
        "decision_threshold": checkpoint_threshold(ckpt),
        "training": train,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt["model"].items()}
    run_dir = path.parent
    snapshots = sorted((run_dir / "snapshots").glob("epoch_*.png")) if (run_dir / "snapshots").is_dir() else []
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, save(state, metadata={"format": FOLDER_FORMAT}))
    atomic_write(out / CONFIG_NAME, (json.dumps(config, indent=2, allow_nan=True) + "\n").encode())
    if snapshots:
        shutil.copyfile(snapshots[-1], out / PICTURE_NAME)
    card = _card(config, _metrics(run_dir), str(path), picture=bool(snapshots))
    atomic_write(out / CARD_NAME, card.encode())
    return out
