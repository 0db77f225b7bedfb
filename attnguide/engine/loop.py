"""The one training-loop skeleton of ``attnguide train`` and ``attnguide segment``.

:class:`Loop` owns what every run does the same way; a subclass says only what
differs (how a batch becomes a loss, how it evaluates, what its checkpoint adds)::

    set-up      device, DDP process group, reporter, autocast dtype, seeds
                (:meth:`Loop.setup`, :meth:`Loop.wrap_ddp`, :meth:`Loop.make_scaler`)
    fit         run folder (refused when it holds a run, unless resumed or
                --overwrite), saved options, resume, then epochs until
                :meth:`Loop.finished`
    iteration   batch -> :meth:`Loop.train_step` -> (loss, images, logged values);
                zero_grad; (scaled) backward; clip; optimizer and scheduler step
    epoch end   running sums all-reduced -> :meth:`Loop.epoch_record` (+ evaluation),
                best.pt by ``best_metric``, metrics.jsonl (atomic), last.pt, then the
                callbacks' ``on_epoch_end(loop, record)`` on the main process

``last.pt`` is also written every ``checkpoint_every`` iterations; a checkpoint
holds :meth:`Loop.loop_state` (see :mod:`attnguide.engine.state`), so a resumed
run continues bit-exactly on CPU.

best.pt: an epoch for which :meth:`Loop.full_epoch` is false (the classifier's
warm-up epochs) is kept only until the first full epoch, which outranks it
whatever the metrics; among full epochs the metric decides (lower for a
``*loss*`` metric, higher otherwise; NaN and None never win).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from attnguide.constants import IMAGENET_MEAN, IMAGENET_STD
from attnguide.engine import state as loop_state
from attnguide.engine.distributed import DistInfo, all_reduce_sum, resolve_device, setup_distributed
from attnguide.engine.progress import Reporter
from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write, clean_stale
from attnguide.io.checkpoints import read_checkpoint, resolve_checkpoint, save_checkpoint
from attnguide.io.runs import check_run_folder


@dataclass
class RunResult:
    """What a training run returns (``train`` and ``segment`` alike).

    Attributes:
        run_dir: the run folder. history: the metrics.jsonl records.
        best_metric / best_value: the metric that picked best.pt and its value.
    """

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: str = ""
    best_value: float | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"


class Callback(Protocol):
    """Called on the main process after each epoch's record is in metrics.jsonl."""

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> object: ...


def autocast_dtype(device: torch.device, amp: bool, amp_dtype: str) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` / ``--amp-dtype`` (auto, fp16, bf16) on ``device``,
    or None without ``--amp``. auto: fp16 on CUDA, bf16 elsewhere."""
    if not amp:
        return None
    if amp_dtype == "fp16" or (amp_dtype == "auto" and device.type == "cuda"):
        if device.type != "cuda":
            raise AttnGuideError("--amp-dtype fp16 needs CUDA; on CPU use --amp-dtype bf16")
        return torch.float16
    return torch.bfloat16


def better(metric: str, new: float | None, old: float | None) -> bool:
    """Whether ``new`` beats ``old`` on ``metric`` (lower wins for a loss); NaN/None never win."""
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return False
    if old is None or (isinstance(old, float) and math.isnan(old)):
        return True
    return new < old if "loss" in metric else new > old


class Loop:
    """The skeleton; see the module doc. A subclass builds (in its ``__init__``, after
    :meth:`setup`) ``model``, ``module`` (what a step calls, DDP-wrapped), ``optimizer``,
    ``scheduler``, ``scaler``, ``sampler``, ``loader``, ``steps_per_epoch``, ``epochs``,
    ``sums`` and ``best_metric``, and implements :meth:`train_step` and
    :meth:`epoch_record`.

    Attributes useful to callers: ``model`` (the bare model), ``optimizer``,
    ``scheduler``, ``run_dir``, ``history``, ``callbacks``.
    """

    config_name = "config.yaml"
    """The saved options' file in the run folder."""
    count_index = 1
    """Where the image count sits in ``sums`` (``sums[0]`` is the loss)."""
    total_steps: int | None = None
    """Iterations of the whole run, or None: the loop runs whole epochs only."""
    full_epoch_default = True
    """What an old checkpoint's best.pt that does not say counts as (see :meth:`full_epoch`)."""

    # ------------------------------------------------------------------ set-up

    def __init__(self, cfg, reporter: Reporter | None = None, callbacks: Iterable[Callback] = ()) -> None:
        """Validate ``cfg``, :meth:`setup`, then the subclass's ``_build(cfg)``; a failure
        while building closes the process group it opened."""
        cfg = cfg.validate()
        try:
            self.setup(cfg, reporter)
            self._build(cfg)
        except BaseException:
            if hasattr(self, "dist"):
                self.dist.close()
            raise
        self.callbacks = list(callbacks)

    def _build(self, cfg) -> None:
        raise NotImplementedError

    def setup(self, cfg, reporter: Reporter | None) -> None:
        """Device, process group, reporter, run folder, autocast dtype and seeds from
        ``cfg`` (``device``, ``quiet``, ``out``, ``amp``, ``amp_dtype``, ``seed``)."""
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist: DistInfo = setup_distributed(self.device)
        self.reporter = reporter or Reporter(quiet=cfg.quiet)
        if not self.dist.is_main:
            self.reporter = Reporter(self.reporter.console, silent=True)
        self.run_dir = Path(cfg.out)
        self.amp_dtype = autocast_dtype(self.device, cfg.amp, cfg.amp_dtype)
        loop_state.seed_everything(cfg.seed)
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_guided = False  # whether best.pt comes from a full (not warm-up) epoch
        self.resume_state: dict[str, Any] | None = None
        self.resume_path: Path | None = None
        self.callbacks: list[Callback] = []

    def read_resume(self, kind: str) -> dict[str, Any] | None:
        """Refuse a run folder that holds a run unless resumed or ``overwrite``; with
        ``cfg.resume`` read its checkpoint (last.pt first), of ``kind``."""
        cfg = self.cfg
        check_run_folder(self.run_dir, resume=cfg.resume, overwrite=getattr(cfg, "overwrite", False))
        if not cfg.resume:
            return None
        if self.dist.is_main and self.run_dir.is_dir():
            clean_stale(self.run_dir)  # a killed run's half-written files (never a live writer's)
        self.resume_path = resolve_checkpoint(cfg.resume, prefer="last")
        return read_checkpoint(self.resume_path, kind)

    def wrap_ddp(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel under torchrun, else itself."""
        if not self.dist.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            module, device_ids=[self.device] if self.device.type == "cuda" else None)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 autocast, else None."""
        return torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def autocast(self):
        """The autocast context of the run (a no-op without ``--amp``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ what subclasses say

    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int, list[torch.Tensor]]:
        """One batch -> (loss to backpropagate, its number of images, the values whose
        per-image sums ``sums`` keeps, ``sums``' layout)."""
        raise NotImplementedError  # pragma: no cover

    def epoch_record(self, sums: list[float], elapsed: float) -> dict[str, Any]:
        """The epoch's metrics.jsonl record from the all-reduced ``sums`` (evaluation
        included, on the main process); ``best`` is added by the loop."""
        raise NotImplementedError  # pragma: no cover

    def checkpoint_extras(self) -> dict[str, Any]:
        """What a checkpoint holds beyond :meth:`loop_state`: kind, model description, config."""
        return {}

    def write_config(self) -> None:
        """Save the resolved options into the run folder (main process)."""

    def resumed_message(self) -> str:
        return (f"resumed from {self.resume_path} at epoch {self.epoch + 1}, "
                f"batch {self.batch}/{self.steps_per_epoch}, step {self.step}")

    def finished(self) -> bool:
        """Whether the run is done (checked before each epoch)."""
        if self.total_steps is not None:
            return self.step >= self.total_steps
        return self.epoch >= self.epochs

    def epoch_guided(self) -> bool:
        """Shown on the progress bar: whether the current epoch is a full one."""
        return True

    def full_epoch(self, record: dict[str, Any]) -> bool:
        """Whether the epoch of ``record`` outranks every epoch for which this is false."""
        return True

    def on_fit_start(self) -> None:
        """After resuming, before the first epoch (main and other processes)."""

    def on_step(self) -> None:
        """After each iteration."""

    def on_fit_end(self) -> None:
        """In ``fit``'s finally: release what ``on_fit_start`` or the steps opened."""

    def bar_loss(self, loss: torch.Tensor) -> float:
        """The loss the progress bar shows: the epoch's running mean."""
        return float(self.sums[0] / self.sums[self.count_index])

    def epoch_line(self, record: dict[str, Any]) -> None:
        self.reporter.epoch_line(record, self.epochs)

    # ------------------------------------------------------------------ state

    def loop_state(self) -> dict[str, Any]:
        """What :func:`attnguide.engine.state.restore_loop_state` restores, and best.pt's rank."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": loop_state.rng_state(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "epoch_sums": self.sums.cpu().tolist(),
            "history": self.history,
            "best": {"metric": self.best_metric, "value": self.best_value, "guided": self.best_guided},
        }

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: the loop state, the subclass's extras, the normalisation."""
        extras = self.checkpoint_extras()
        return {**({"kind": extras.pop("kind")} if "kind" in extras else {}), **self.loop_state(),
                **extras, "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                "config": {**self.cfg.to_dict(), "resume": None}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loop_state.restore_loop_state(self, state)
        best = state.get("best") or {}
        if best.get("metric") == self.best_metric:
            self.best_value = best.get("value")
            self.best_guided = bool(best.get("guided", self.full_epoch_default))

    def save(self, *names: str) -> None:
        """Write the checkpoint to each of ``names`` in the run folder (main process)."""
        if self.dist.is_main:
            save_checkpoint(self.state_dict(), *[self.run_dir / n for n in names])

    # ------------------------------------------------------------------ running

    def fit(self) -> RunResult:
        """Train until :meth:`finished`; see the module doc."""
        try:
            if self.dist.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self.write_config()
            if self.resume_state is not None:
                self.load_state_dict(self.resume_state)
                self.resume_state = None
                self.reporter.info(self.resumed_message())
                if self.dist.is_main:  # metrics of the epochs the checkpoint has seen
                    self._write_metrics()
            elif self.dist.is_main:
                atomic_write(self.run_dir / "metrics.jsonl", b"")
            self.on_fit_start()
            while not self.finished():
                self._train_epoch()
                record = self._end_epoch()
                self.epoch_line(record)
        finally:
            self.on_fit_end()
            self.reporter.end_epoch()
            self.dist.close()
        return RunResult(self.run_dir, self.history, self.best_metric, self.best_value)

    def _train_epoch(self) -> None:
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, self.batch)
        if self.batch == 0:
            self.sums.zero_()
        self.model.train()
        todo = self.steps_per_epoch
        if self.total_steps is not None:
            todo = min(todo, self.batch + self.total_steps - self.step)
        self.reporter.start_epoch(self.epoch, self.epochs, todo, self.batch, self.epoch_guided())
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0
        for batch in self.loader:
            loss, n, values = self.train_step(batch)
            self._optimize(loss)
            self.step += 1
            self.batch += 1
            self._epoch_images += n
            with torch.no_grad():
                self.sums += torch.stack([v.detach().double() for v in values]) * n
            elapsed = time.perf_counter() - self._epoch_start
            if self.reporter.bar:
                ips = self._epoch_images * self.dist.world_size / max(elapsed, 1e-9)
                self.reporter.update(self.bar_loss(loss), ips)
            self.on_step()
            last = self.total_steps is not None and self.step >= self.total_steps
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not last:
                self.save("last.pt")
            if last:
                break
        self.reporter.end_epoch()

    def _optimize(self, loss: torch.Tensor) -> None:
        clip = getattr(self.cfg, "clip_grad", 0)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.scheduler.step()

    def _end_epoch(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._epoch_start
        sums = all_reduce_sum(self.sums.clone(), self.dist).tolist()
        record = self.epoch_record(sums, elapsed)
        value = record.get(self.best_metric)
        full = self.full_epoch(record)
        if full and not self.best_guided:
            self.best_value = None
        improved = (self.dist.is_main and (full or not self.best_guided)
                    and better(self.best_metric, value, self.best_value))
        if improved:
            self.best_value, self.best_guided = value, full
        record["best"] = bool(improved)
        self.history.append(record)
        self.epoch += 1
        self.batch = 0
        self.sums.zero_()
        if self.dist.is_main:
            self._write_metrics()
            self.save("last.pt", *(["best.pt"] if improved else []))
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
        self.dist.barrier()
        return record

    def images_per_s(self, elapsed: float) -> float:
        """Images per second of the current epoch, over all processes."""
        return self._epoch_images * self.dist.world_size / max(elapsed, 1e-9)

    def _write_metrics(self) -> None:
        lines = "".join(json.dumps(r, allow_nan=True) + "\n" for r in self.history)
        atomic_write(self.run_dir / "metrics.jsonl", lines.encode())
