"""``attnguide predict``: a trained segmenter's label maps (and colour overlays).

Images go through the network at their own size, padded (bottom/right) to a
multiple of the encoder's output stride where the architecture needs it (smp
models); logits are cropped back, so each label map has its image's size.

Files::

    OUT/<name>.png              label map, VOC palette (0 bg, c + 1 class c)
    OUT/overlay/<name>.png      with overlay: the label colours over the image
    OUT/crf/<name>.png          with crf: dense-CRF post-processed label map

    OUT/predict.json            what the run did: images, written, skipped, seconds,
                                processes, config (checkpoint, overlay, crf, ...)

``<name>`` is the image's file stem for ``images``, the sample name for a data
set split (``data`` + ``split``), so ``attnguide evaluate --pred OUT`` can
score a split's predictions.

Every file is written atomically. ``resume`` skips an image whose files all
exist, after removing the temporary files a killed writer left
(:func:`attnguide.io.atomic.clean_stale`), and refuses a folder predicted by
another checkpoint or with other CRF settings. Under ``torchrun --nproc_per_node
N -m attnguide predict ...`` each process predicts every N-th image from its rank
(a disjoint slice; the files are byte-identical to one process's) and rank 0
writes ``predict.json`` for the whole run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnguide.constants import BACKGROUND, IMAGENET_MEAN, IMAGENET_STD
from attnguide.data import open_dataset
from attnguide.data.io import read_rgb
from attnguide.data.segmentation import label_path, to_input
from attnguide.engine.distributed import (
    all_reduce_max,
    all_reduce_sum,
    gather_objects,
    resolve_device,
    setup_distributed,
    shard,
)
from attnguide.errors import AttnGuideError
from attnguide.io.atomic import clean_stale
from attnguide.io.checkpoints import SEGMENTER, read_checkpoint, resolve_checkpoint
from attnguide.io.labels import save_label_png, save_overlay
from attnguide.models.segmenters import (  # noqa: F401 - input_multiple, predict_logits re-exported
    create_segmenter,
    input_multiple,
    predict_logits,
    segmenter_spec,
)
from attnguide.tasks.common import check_class_lists, make_console, progress_bar, write_json
from attnguide.wsss.crf import CRFPool, parse_crf_params, require_crf
from attnguide.wsss.crf_jobs import refine_scores

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
REPORT_FILE = "predict.json"
# settings that change the files; a resumed run must use the same ones
_PREDICT_SETTINGS = ("checkpoint", "crf_params")


class Predictions(list):
    """What :func:`predict` returns: the label-map files written now (a list of Paths,
    the images' order) with the run's counts as attributes: ``images`` (all images),
    ``skipped`` (found done with ``resume``), ``seconds`` (wall time), ``processes``."""

    images: int = 0
    skipped: int = 0
    seconds: float = 0.0
    processes: int = 1


@dataclass
class Segmenter:
    """A segmenter trained by ``attnguide segment``, in eval mode.

    Attributes:
        model: the network, ``forward(x (B, 3, H, W)) -> (B, N, H, W)`` logits.
        class_names: ``N`` names, background first.
        arch, encoder: as given to ``create_segmenter``.
        mean, std: input normalisation. checkpoint: the file read.
    """

    model: nn.Module
    class_names: list[str]
    arch: str
    encoder: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    checkpoint: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def pad_multiple(self) -> int:
        return segmenter_spec(self.arch).input_multiple(self.model)

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``uint8 (H, W, 3)`` -> label map ``uint8 (H, W)`` and probabilities ``(N, H, W)``."""
        device = next(self.model.parameters()).device
        x = to_input(image, self.mean, self.std, device)[None]
        logits = segmenter_spec(self.arch).logits(self.model, x)  # (1, N, H, W)
        probs = logits[0].float().softmax(0).cpu().numpy()
        return probs.argmax(0).astype(np.uint8), probs


def load_segmenter(run: str | Path, device: str | torch.device = "cpu", prefer: str = "best") -> Segmenter:
    """Load a run folder (``best.pt``, else ``last.pt``) or checkpoint of ``attnguide segment``."""
    path = resolve_checkpoint(run, prefer)
    ckpt = read_checkpoint(path, SEGMENTER)
    model = create_segmenter(ckpt["arch"], ckpt.get("encoder"), len(ckpt["class_names"]),
                             decoder_channels=ckpt.get("decoder_channels"))  # None: older runs
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    norm = ckpt.get("normalize") or {}
    return Segmenter(model=model, class_names=list(ckpt["class_names"]), arch=ckpt["arch"],
                     encoder=ckpt.get("encoder"), mean=tuple(norm.get("mean", IMAGENET_MEAN)),
                     std=tuple(norm.get("std", IMAGENET_STD)), checkpoint=str(path),
                     config=dict(ckpt.get("config") or {}))


def list_images(images: str | Path | list[str | Path]) -> list[tuple[str, Path]]:
    """``(name, path)`` of image files: a folder (its images, sorted) and/or files."""
    items = [images] if isinstance(images, (str, Path)) else list(images)
    if not items:
        raise AttnGuideError("no images given: pass a folder or image files with --images")
    out: list[tuple[str, Path]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise AttnGuideError(
                    f"folder {str(path)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            out += [(p.stem, p) for p in found]
        elif path.is_file():
            out.append((path.stem, path))
        else:
            raise FileNotFoundError(f"image or folder {str(path)!r} does not exist")
    seen: dict[str, Path] = {}
    for name, path in out:
        if name in seen:
            raise AttnGuideError(
                f"{seen[name]} and {path} would both be written as {name}.png; "
                "pass them in separate runs or rename one")
        seen[name] = path
    return out


def predict(run: str | Path, out: str | Path, images=None, *, data: str | None = None,
            split: str = "val", overlay: bool = False, crf: bool = False, crf_params: str = "deeplab",
            workers: int = 0, resume: bool = False, device: str = "auto", quiet: bool = False,
            console=None) -> Predictions:
    """Write label maps of ``images`` (folder or files) or of a data set split.

    Args:
        run: segmenter run folder or checkpoint.
        out: output folder (see the module doc for the layout).
        images: a folder, a file, or a list of them; or None with ``data``.
        data, split: predict every image of a data set split instead.
        overlay: also write colour overlays to ``OUT/overlay/``.
        crf: also write dense-CRF post-processed maps to ``OUT/crf/`` (DeepLab-v1
            parameters by default, ``crf_params``), ``workers`` processes.
        resume: skip images whose files (label map, overlay, CRF map as asked) exist.

    Returns:
        The label-map files written (under torchrun: by all processes), a
        :class:`Predictions` list that also carries the counts.
    """
    if (images is None) == (data is None):
        raise AttnGuideError("pass either --images DIR_OR_FILES or --data PATH (with --split)")
    params = parse_crf_params(crf_params) if crf else None
    if crf:
        require_crf("--crf")
    console = console or make_console()
    where = resolve_device(device)
    info = setup_distributed(where)
    try:
        seg = load_segmenter(run, where)
        if data is not None:
            ds = open_dataset(data, split, train=False, require_labels=False)
            check_class_lists(seg.class_names[1:], ds.class_names, f"segmenter {seg.checkpoint}",
                              f"data set {ds.root}")
            if seg.class_names[0] != BACKGROUND:  # pragma: no cover - written by segment
                raise AttnGuideError(f"{seg.checkpoint}: first class must be background")
            items = [(s.name, s.image_path) for s in ds.samples]
        else:
            items = list_images(images)
        out = Path(out)
        config = {"checkpoint": str(Path(seg.checkpoint).resolve()), "arch": seg.arch,
                  "encoder": seg.encoder, "images": None if images is None else
                  [str(p) for p in ([images] if isinstance(images, (str, Path)) else images)],
                  "data": data, "split": split if data is not None else None, "overlay": overlay,
                  "crf": crf, "crf_params": asdict(params) if params else None}
        _check_report(out, config, resume)
        if info.is_main:
            clean_stale(out)  # temporary files of a killed run (never a running writer's)
        result = _predict_slice(seg, out, [items[i] for i in shard(len(items), info)], overlay=overlay,
                                params=params, workers=workers, resume=resume, console=console,
                                quiet=quiet or not info.is_main)
        written = [p for part in gather_objects([str(p) for p in result], info) for p in part]
        counts = all_reduce_sum(torch.tensor([result.skipped], dtype=torch.int64), info)
        seconds = all_reduce_max(torch.tensor([result.seconds], dtype=torch.float64), info)
        order = {str(label_path(out, name)): k for k, (name, _) in enumerate(items)}
        merged = Predictions(Path(p) for p in sorted(written, key=order.__getitem__))
        merged.images, merged.skipped = len(items), int(counts[0])
        merged.seconds, merged.processes = float(seconds[0]), info.world_size
        if info.is_main:
            write_json(out / REPORT_FILE, {
                "images": merged.images, "written": len(merged), "skipped": merged.skipped,
                "seconds": merged.seconds,
                "images_per_s": len(merged) / merged.seconds if merged.seconds > 0 else None,
                "processes": merged.processes, "config": config})
        info.barrier()  # predict.json is there when any process returns
        return merged
    finally:
        info.close()


def _predict_slice(seg: Segmenter, out: Path, items: list[tuple[str, Path]], *, overlay: bool, params,
                   workers: int, resume: bool, console, quiet: bool) -> Predictions:
    """Predict ``items`` (this process's share) into ``out``."""
    written = Predictions()
    values = np.arange(len(seg.class_names), dtype=np.uint8)
    start = time.perf_counter()
    with CRFPool(workers if params else 0) as pool, progress_bar(len(items), "predict", console, quiet) as advance:
        jobs = []
        for name, path in items:
            target = label_path(out, name)
            files = [target]
            if overlay:
                files.append(label_path(out / "overlay", name))
            if params:
                files.append(label_path(out / "crf", name))
            if resume and all(f.is_file() for f in files):
                written.skipped += 1
                advance()
                continue
            image = read_rgb(path)
            label, probs = seg.predict(image)
            save_label_png(target, label)
            written.append(target)
            if overlay:
                save_overlay(files[1], image, label)
            if params:
                jobs.append((image, probs.astype(np.float32), values, params, str(files[-1])))
                if len(jobs) >= max(8, 4 * workers):
                    pool.map(refine_scores, jobs)
                    jobs = []
            advance()
        if jobs:
            pool.map(refine_scores, jobs)
    written.seconds = time.perf_counter() - start
    return written


def _check_report(out: Path, config: dict[str, Any], resume: bool) -> None:
    """Refuse to resume into a folder predicted by another checkpoint or CRF settings."""
    path = out / REPORT_FILE
    if not (resume and path.is_file()):
        return
    try:
        before = json.loads(path.read_text()).get("config") or {}
    except (ValueError, AttributeError):
        before = {}
    changed = [k for k in _PREDICT_SETTINGS if k in before and before[k] != config.get(k)
               and not (k == "crf_params" and (before[k] is None or config.get(k) is None))]
    if changed:
        shown = "; ".join(f"{k} {before[k]!r} -> {config.get(k)!r}" for k in changed)
        raise AttnGuideError(
            f"{out} holds predictions made with other settings ({shown}); --resume needs the same "
            "segmenter and CRF options, or write to another --out")
