"""One options system for every command: dataclasses with commented defaults.

An options class is a dataclass whose field comments are the help text and whose
``# --- section`` comments group the fields in ``--help``::

    @dataclass
    class SegmentConfig(Options):
        COMMAND: ClassVar[str] = "segment"

        # --- data
        data: str = ""  # data set folder
        crop_size: int = 320  # side of the random training crops

From such a class this module makes, in one place:

- the help and the section of each field (:func:`option_fields`, parsed once per class);
- values converted to the field's type, with errors that name the option
  (:func:`coerce`), from YAML/TOML files (:func:`read_config_file`: the options at the
  top level or under a table named after the command, ``[segment]``);
- the merge, always in one order (:func:`resolve`)::

      defaults < a resumed run's saved config < the --config file < the command line

- the typer options of the command (:func:`typer_parameters`, used by :mod:`attnguide.cli`),
  one per field, default None meaning "not given", plus ``--config``;
- the saved, repeatable YAML of a run (:func:`save_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from attnguide.errors import AttnGuideError
from attnguide.io.atomic import atomic_write
from attnguide.io.checkpoints import read_checkpoint, resolve_checkpoint


class Options:
    """Base of the options dataclasses. Class attributes (not options):

    COMMAND: the command's name, also the table a config file may nest its options in.
    AUTO_IS_NONE: optional fields whose None means "decided by the run"; they accept
        the word ``auto`` and show it as their default.
    POSITIONAL: fields that are positional arguments on the command line (``RUN``).
    BOOL_WORDS: word fields that were booleans once: name -> (word for true, word for
        false), so config files of older runs still read.
    """

    COMMAND: ClassVar[str] = ""
    AUTO_IS_NONE: ClassVar[frozenset[str]] = frozenset()
    POSITIONAL: ClassVar[tuple[str, ...]] = ()
    BOOL_WORDS: ClassVar[dict[str, tuple[str, str]]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class OptionField:
    """What the options system knows of one field."""

    name: str
    type: type  # the field's type without None: bool, int, float, str, dict, tuple
    optional: bool  # None allowed
    default: Any
    help: str
    section: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@functools.cache
def option_fields(cls: type) -> dict[str, OptionField]:
    """Field name -> :class:`OptionField` of an options dataclass, in field order.

    The help is the comment after the field's default (or ``metadata["help"]``), the
    section the nearest ``# --- name`` comment above it.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    helps: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = "Options"
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("# ---"):
            current = text[5:].strip()
            current = current[:1].upper() + current[1:]
            continue
        name = text.split(":", 1)[0].strip()
        if ":" in text and name in names and not text.startswith("#"):
            sections[name] = current
            if "#" in text:
                helps[name] = text.split("#", 1)[1].strip()
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out[f.name] = OptionField(f.name, tp, optional, default,
                                  f.metadata.get("help", helps.get(f.name, "")),
                                  sections.get(f.name, "Options"))
    return out


def _base_type(tp: Any) -> tuple[type, bool]:
    """(the non-None type, whether None is allowed) of an annotation."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        inner, optional = non_none[0], len(non_none) < len(args)
        return (typing.get_origin(inner) or inner), optional
    return (typing.get_origin(tp) or tp), False


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def coerce(cls: type, name: str, value: Any, source: str) -> Any:
    """Convert a value from a config file or the command line to the field's type."""
    f = option_fields(cls)[name]
    tp, optional = f.type, f.optional
    if name in cls.AUTO_IS_NONE and isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")
                         and optional):
        if optional:
            return None
        raise AttnGuideError(f"{source}: {name} cannot be empty")
    if name in cls.BOOL_WORDS and isinstance(value, bool):
        return cls.BOOL_WORDS[name][0 if value else 1]
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # YAML reads 1e-3 as a string: accept it
        if tp is str:
            if isinstance(value, (dict, list, bool)):
                raise ValueError
            return str(value)
        if tp is dict:
            if not isinstance(value, Mapping):
                raise ValueError
            return dict(value)
        if tp is tuple:  # "1.0,0.5" or a list; the class's validate() reads the items
            if isinstance(value, (list, tuple)):
                return tuple(value)
            if isinstance(value, str):
                return value
            raise ValueError
    except (TypeError, ValueError):
        pass
    else:
        return value
    want = getattr(tp, "__name__", str(tp))
    alternative = " or auto" if name in cls.AUTO_IS_NONE else " or null" if optional else ""
    raise AttnGuideError(f"{source}: {name} must be {want}{alternative}, got {value!r}")


def normalize_keys(cls: type, raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Accept ``batch-size`` and ``batch_size``; reject unknown keys with close matches."""
    fields = option_fields(cls)
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise AttnGuideError(f"{source}: unknown option {key!r}{hint}")
        out[name] = coerce(cls, name, value, source)
    return out


def read_config_file(cls: type, path: str | Path) -> dict[str, Any]:
    """Options from a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file: at the top
    level, or under one table named after the command (``[segment]``, ``train:``)."""
    return normalize_keys(cls, read_config_mapping(path, cls.COMMAND), f"config file {Path(path).name}")


def read_config_mapping(path: str | Path, command: str = "") -> dict[str, Any]:
    """The raw ``option: value`` mapping of a YAML or TOML config file, unwrapped from a
    single table named after ``command`` when the file has one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            raw = tomllib.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except ImportError as e:
        raise AttnGuideError(f"reading {path.name} needs {e.name}: pip install tomli") from None
    except Exception as e:  # yaml.YAMLError, tomllib.TOMLDecodeError
        first = str(e).strip().splitlines()
        raise AttnGuideError(f"config file {str(path)!r} is not valid {path.suffix[1:].upper()}: "
                             f"{' '.join(first)[:200]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise AttnGuideError(f"config file {str(path)!r} must hold a mapping of option: value")
    tables = {command, command.replace("-", "_")} - {""}
    if len(raw) == 1 and next(iter(raw)) in tables and isinstance(next(iter(raw.values())), Mapping):
        raw = next(iter(raw.values()))
    return dict(raw)


def resolve(cls: type, overrides: Mapping[str, Any] | None = None,
            config_file: str | Path | None = None, base: Mapping[str, Any] | None = None):
    """An instance of ``cls`` from defaults < ``base`` (a resumed run's saved config) <
    ``config_file`` < ``overrides`` (the options given on the command line; None values
    are "not given")."""
    fields = option_fields(cls)
    merged: dict[str, Any] = {}
    if base:
        merged.update({k: v for k, v in base.items() if k in fields})
        if "resume" in fields and fields["resume"].type is not bool:
            merged["resume"] = None  # a resumed run's own resume option is not inherited
    if config_file is not None:
        merged.update(read_config_file(cls, config_file))
    if overrides:
        merged.update(normalize_keys(cls, {k: v for k, v in overrides.items() if v is not None},
                                     "command line"))
    for key in list(merged):
        merged[key] = coerce(cls, key, merged[key], "config")
    return cls(**merged)


def given_in(name: str, overrides: Mapping[str, Any] | None, config_file: str | Path | None,
             cls: type) -> bool:
    """Whether option ``name`` was given on the command line or in the config file."""
    if (overrides or {}).get(name) is not None:
        return True
    return config_file is not None and name in read_config_file(cls, config_file)


def save_config(cfg: Options, path: str | Path, *, repeat: str) -> None:
    """Write the resolved options as YAML; ``repeat`` is the command that repeats the
    run with it (``attnguide train --config config.yaml``), written as a header."""
    import yaml

    header = (f"# attnguide {cfg.COMMAND}: the resolved options of this run.\n"
              f"# Repeat it with: {repeat}\n")
    values = cfg.to_dict()
    if "resume" in values:
        values["resume"] = False if isinstance(values["resume"], bool) else None  # do not resume it
    body = yaml.safe_dump(_plain(values), sort_keys=False, default_flow_style=False)
    atomic_write(path, (header + body).encode())


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------- command line


def typer_parameters(cls: type) -> list[inspect.Parameter]:
    """The typer options of a command: one per field (default None = "not given"; a
    dict field is config-file only), positional ``POSITIONAL`` fields, and ``--config``."""
    import typer
    from rich.markup import escape

    params = []
    for name, f in option_fields(cls).items():
        tp, default = f.type, f.default
        if tp is dict:  # config file only
            continue
        if tp is tuple:  # "1.0,0.5,1.5,2.0"
            tp, default = str, ",".join(str(v) for v in default)
        if name in cls.AUTO_IS_NONE:  # a number or the word auto, read by coerce()
            tp, default = str, "auto"
        if name in cls.POSITIONAL:
            option = typer.Argument(None, metavar=name.upper(), help=escape(f.help),
                                    show_default=False)
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            annotation=tp | None, default=option))
            continue
        shown = "" if default in ("", None) else f" [default: {default}]"
        if tp is bool:
            decls = [f"{f.flag}/--no-{f.flag[2:]}"]
            shown = f" [default: {'on' if default else 'off'}]"
        else:
            decls = [f.flag]
        option = typer.Option(None, *decls, help=escape(f.help + shown), show_default=False,
                              rich_help_panel=f.section)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        annotation=tp | None, default=option))
    section = option_fields(cls)["out"].section if "out" in option_fields(cls) else "Options"
    params.append(inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
        default=typer.Option(None, "--config", "-c", rich_help_panel=section,
                             help="YAML or TOML file of options (the command line wins)")))
    # positional arguments first, as Python requires
    return sorted(params, key=lambda p: p.kind != inspect.Parameter.POSITIONAL_OR_KEYWORD)


# ---------------------------------------------------------------------- resuming


def from_command_line(cls: type, options: Mapping[str, Any] | None = None,
                      config_file: str | Path | None = None, *, kind: str | None = None):
    """The options of a command from the command line (only those given) and a
    ``--config`` file. With ``resume`` (a run folder or checkpoint of ``kind``) the resumed
    run's saved options are the base, and ``out`` defaults to the checkpoint's folder.

    Precedence: defaults < resumed run's options < config file < command line.
    """
    first = resolve(cls, options, config_file)
    resume = getattr(first, "resume", None)
    if not resume or isinstance(resume, bool):
        return first
    path = resolve_checkpoint(resume, prefer="last")
    base = dict(read_checkpoint(path, kind).get("config") or {})
    given = {name for name in option_fields(cls) if given_in(name, options, config_file, cls)}
    base = cls.resumed_base(base, given) if hasattr(cls, "resumed_base") else base
    cfg = resolve(cls, options, config_file, base=base)
    cfg.resume = resume
    if "out" not in given:
        cfg.out = str(path.parent)  # continue in the checkpoint's own run folder
    return cfg
