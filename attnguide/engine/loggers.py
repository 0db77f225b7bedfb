"""Experiment loggers fed by the training engine: ``--logger tensorboard,wandb``.

One interface, :class:`RunLogger`, with ``log(values, step)`` and ``close()``; the engine
calls it through two callbacks: after every optimizer step ``train_loss_step`` (the mean
loss of that step's images) and ``lr``, and after every epoch each number of the epoch's
``metrics.jsonl`` line under the same key (``train_loss``, ``train_loss_am``,
``val_accuracy``, ``val_cam_miou``, ``epoch``, ...). The x-axis is always the optimizer
step. These are the names :class:`attnguide.integrations.lightning.GuidedModule` logs to a
Lightning logger, so a metric is called the same in ``metrics.jsonl``, TensorBoard, W&B
and Lightning.

Back ends (each an optional extra, imported only when asked for):

- ``tensorboard``: event files in ``RUN/tensorboard`` (``pip install attnguide[tensorboard]``).
- ``wandb``: a Weights & Biases run, offline unless ``WANDB_MODE`` says otherwise (the
  files go to ``RUN/wandb``, or to ``WANDB_DIR``; upload later with ``wandb sync``); run
  name = the run folder's name, config = the run's options, project ``--wandb-project``.
  A resumed run continues the same W&B run (its id is kept in ``RUN/wandb/run_id``).
  ``pip install attnguide[wandb]``.

Example:
    >>> log = open_loggers("none", "runs/x", {})
    >>> log is None
    True
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from attnguide.errors import AttnGuideError

LOGGERS = ("tensorboard", "wandb")
"""The back ends ``--logger`` accepts (a comma list; ``none`` for none)."""


def parse_loggers(spec: str | Iterable[str] | None, tensorboard: bool = False) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` -> ``("tensorboard", "wandb")``; ``"none"``/empty -> ``()``.

    ``tensorboard=True`` (the ``--tensorboard`` flag, kept as an alias) adds ``tensorboard``.
    """
    if spec is None:
        parts: list[str] = []
    elif isinstance(spec, str):
        parts = [p.strip().lower() for p in spec.replace(" ", ",").split(",") if p.strip()]
    else:
        parts = [str(p).strip().lower() for p in spec]
    parts = [p for p in parts if p != "none"]
    for name in parts:
        if name not in LOGGERS:
            raise AttnGuideError(f"--logger {name!r} is not a logger; use tensorboard, wandb, "
                                 "both as tensorboard,wandb, or none")
    if tensorboard and "tensorboard" not in parts:
        parts.insert(0, "tensorboard")
    return tuple(dict.fromkeys(parts))


_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def require_loggers(spec: str | Iterable[str] | None, tensorboard: bool = False) -> tuple[str, ...]:
    """:func:`parse_loggers`, and an error naming the extra when a back end's package is
    missing (checked before a run starts, so a run folder is not begun in vain)."""
    names = parse_loggers(spec, tensorboard)
    for name in names:
        module, extra = _PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise AttnGuideError(f"--logger {name} needs the {module} package: "
                                 f"pip install 'attnguide[{extra}]' (or drop --logger {name})")
    return names


def epoch_values(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` record under their own keys; lists, flags, None and
    ``step`` (the x-axis itself) left out."""
    return {key: float(val) for key, val in record.items()
            if isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val)
            and key != "step"}


class RunLogger:
    """A logger of scalar metrics; subclasses implement :meth:`log` (and :meth:`close`).

    As an engine callback: :meth:`step` after each optimizer step, :meth:`on_epoch_end`
    after each epoch (main process only)."""

    def __init__(self) -> None:
        self._seen: tuple[int, float, float] | None = None  # (epoch, loss sum, images) at the last step

    def log(self, values: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ engine callbacks

    def step(self, loop) -> None:
        """``train_loss_step`` (this step's mean loss, from the epoch's running sums) and ``lr``."""
        loss, images = float(loop.sums[0]), float(loop.sums[loop.count_index])
        if loop.batch == 1:  # the epoch's first step: its sums started from zero
            before: tuple[float, float] | None = (0.0, 0.0)
        elif self._seen is not None and self._seen[0] == loop.epoch:
            before = self._seen[1:]
        else:  # the first step after resuming mid-epoch: the step's share is unknown
            before = None
        values = {"lr": float(loop.scheduler.get_last_lr()[0])}
        if before is not None and images > before[1]:
            values["train_loss_step"] = (loss - before[0]) / (images - before[1])
        self._seen = (loop.epoch, loss, images)
        self.log(values, loop.step)

    def on_epoch_end(self, loop, record: dict[str, Any]) -> None:
        self.log(epoch_values(record), int(record["step"] if "step" in record else loop.step))


class TensorBoardLogger(RunLogger):
    """Scalars in TensorBoard event files under ``folder``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise AttnGuideError("--logger tensorboard needs the tensorboard package: "
                                 "pip install 'attnguide[tensorboard]'") from None
        self.folder = Path(folder)
        self.writer = SummaryWriter(str(self.folder))

    def log(self, values: Mapping[str, float], step: int) -> None:
        for key, val in values.items():
            self.writer.add_scalar(key, val, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(RunLogger):
    """A Weights & Biases run (offline unless ``WANDB_MODE`` is set); see the module doc."""

    def __init__(self, run_dir: str | os.PathLike, config: Mapping[str, Any] | None = None, *,
                 project: str = "attnguide", resume: bool = False) -> None:
        super().__init__()
        try:
            import wandb
        except ImportError:
            raise AttnGuideError("--logger wandb needs the wandb package: "
                                 "pip install 'attnguide[wandb]'") from None
        run_dir = Path(run_dir)
        folder = run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        settings = {"mode": os.environ.get("WANDB_MODE") or "offline"}
        try:
            self.run = wandb.init(project=project, name=run_dir.name, config=dict(config or {}),
                                  dir=os.environ.get("WANDB_DIR") or str(folder), id=run_id,
                                  resume="allow" if run_id else None, reinit="create_new",
                                  **settings)
        except Exception as err:  # wandb raises its own error types (bad mode, no login, ...)
            raise AttnGuideError(f"--logger wandb could not start a W&B run: {err}; check WANDB_MODE "
                                 "(offline works without an account) or use --logger tensorboard") from None
        id_file.write_text(self.run.id + "\n")

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


class MultiLogger(RunLogger):
    """Several loggers as one (``--logger tensorboard,wandb``)."""

    def __init__(self, loggers: list[RunLogger]) -> None:
        super().__init__()
        self.loggers = loggers

    def log(self, values: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log(values, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_loggers(spec: str | Iterable[str] | None, run_dir: str | os.PathLike,
                 config: Mapping[str, Any] | None = None, *, tensorboard: bool = False,
                 project: str = "attnguide", resume: bool = False) -> RunLogger | None:
    """The logger(s) ``spec`` names for a run folder (see :func:`parse_loggers`); None for none."""
    names = parse_loggers(spec, tensorboard)
    loggers: list[RunLogger] = []
    try:
        for name in names:
            if name == "tensorboard":
                loggers.append(TensorBoardLogger(Path(run_dir) / "tensorboard"))
            else:
                loggers.append(WandbLogger(run_dir, config, project=project, resume=resume))
    except BaseException:
        for logger in loggers:
            logger.close()
        raise
    if not loggers:
        return None
    return loggers[0] if len(loggers) == 1 else MultiLogger(loggers)
