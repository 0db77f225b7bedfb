"""docs/cli.md stays in sync with the typer app.

Two checks:

- independent of the generator: every command registered on ``attnguide.cli.main.app``
  (sub-apps included) has a section ``## `attnguide ...` `` in docs/cli.md, and every
  option name its ``--help`` shows appears in that section;
- docs/cli.md is exactly what ``python docs/gen_cli.py`` writes.

When either fails after a command changed, run ``python docs/gen_cli.py``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import typer.main

from attnguide.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
CLI_MD = ROOT / "docs" / "cli.md"
FIX = "docs/cli.md is out of date: run `python docs/gen_cli.py`"


def _commands():
    """(path, command, ctx) of the root and every command, walking click's tree directly."""
    out = []

    def walk(command, path, parent):
        ctx = command.make_context(path[-1], [], parent=parent, resilient_parsing=True)
        out.append((path, command, ctx))
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), (*path, name), ctx)

    walk(typer.main.get_command(app), ("attnguide",), None)
    return out


COMMANDS = _commands()


def _sections() -> dict[str, str]:
    """'attnguide train' -> the text of its section in docs/cli.md."""
    text = CLI_MD.read_text(encoding="utf-8")
    parts = re.split(r"^## `([^`]+)`\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def test_the_app_has_the_expected_commands():
    names = {" ".join(path) for path, _, _ in COMMANDS}
    for expected in ("attnguide train", "attnguide data scenes", "attnguide pseudo-label",
                     "attnguide segment", "attnguide evaluate", "attnguide predict"):
        assert expected in names


@pytest.mark.parametrize("path,command,ctx", COMMANDS, ids=[" ".join(p) for p, _, _ in COMMANDS])
def test_every_command_and_option_is_in_cli_md(path, command, ctx):
    sections = _sections()
    name = " ".join(path)
    assert name in sections, f"command {name!r} has no section in docs/cli.md; {FIX}"
    section = sections[name]
    missing = []
    for param in command.get_params(ctx):
        if param.param_type_name == "option":
            names = [*param.opts, *(getattr(param, "secondary_opts", None) or [])]
        else:  # arguments appear as their metavar (RUN, OUT)
            names = [param.metavar or param.name.upper()]
        missing += [n for n in names if not _mentions(section, n)]
    assert not missing, f"{name}: {missing} not in its section of docs/cli.md; {FIX}"


def test_cli_md_is_what_gen_cli_writes():
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert CLI_MD.read_text(encoding="utf-8") == gen.render(), FIX
