"""What every command module of the CLI shares: where messages go, and logging."""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from attnguide.engine.options import read_config_mapping
from attnguide.engine.progress import make_console
from attnguide.errors import AttnGuideError


def console() -> Console:
    """Messages, progress and errors: stderr (stdout stays for results)."""
    return make_console()


def stdout() -> Console:
    """Results a user may pipe (tables)."""
    return Console(highlight=False, soft_wrap=True)


def setup_logging(quiet: bool = False) -> None:
    """Send the ``attnguide`` logger (weights reports, ...) to stderr through rich."""
    logger = logging.getLogger("attnguide")
    for handler in [h for h in logger.handlers if getattr(h, "_attnguide_cli", False)]:
        logger.removeHandler(handler)
    handler = RichHandler(console=console(), show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._attnguide_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def with_config(command: str):
    """Give a hand-written typer command ``--config FILE`` with the rules of the
    dataclass commands (:mod:`attnguide.engine.options`): options at the top level of a
    YAML/TOML file or under a table named ``command``; the command line wins over the
    file, the file over the defaults; an unknown key is an error naming close matches.
    """

    def decorate(fn):
        signature = inspect.signature(fn)
        # a required option may come from the file: typer sees it as optional, we check
        required = {}
        for name, param in signature.parameters.items():
            info = param.default
            if getattr(info, "default", None) is ...:
                info.default = None
                decls = getattr(info, "param_decls", None) or ()
                flag = next((d for d in decls if d.startswith("--")), None)
                required[name] = flag or getattr(info, "metavar", None) or name.upper()
        config = inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--config", "-c",
                                 help="YAML or TOML file of options (the command line wins)"))

        context = inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        @functools.wraps(fn)
        def wrapper(*args: Any, _ctx: typer.Context, config: Path | None = None, **kwargs: Any):
            if config is not None:
                kwargs.update(_from_file(_ctx, config, command))
            missing = [shown for name, shown in required.items() if kwargs.get(name) is None]
            if missing:
                raise AttnGuideError(f"missing {', '.join(missing)}: give it on the command line "
                                     "or in the --config file")
            return fn(*args, **kwargs)

        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), config, context])
        return wrapper

    return decorate


def _from_file(ctx: typer.Context, path: Path, command: str) -> dict[str, Any]:
    """The values of ``path`` for the parameters not given on the command line."""
    params = {p.name: p for p in ctx.command.params if p.name and p.name != "config"}
    out = {}
    for key, value in read_config_mapping(path, command).items():
        name = str(key).replace("-", "_")
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise AttnGuideError(f"config file {path.name}: unknown option {key!r}{hint}")
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            continue  # the command line wins
        try:
            out[name] = params[name].process_value(ctx, value)
        except typer.BadParameter as e:
            raise AttnGuideError(f"config file {path.name}: {name}: {e.message}") from None
    return out
