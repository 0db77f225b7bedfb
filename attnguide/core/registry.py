"""A tiny name -> callable registry whose errors list the valid names."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from attnguide.errors import AttnGuideError


class Registry:
    """Maps names to callables; `get` also accepts a callable and returns it unchanged.

    Example:
        >>> METHODS = Registry("CAM method")
        >>> @METHODS.register("double")
        ... def double(x):
        ...     return 2 * x
        >>> METHODS.get("double")(3)
        6
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return add

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name_or_fn: str | Callable[..., Any]) -> Callable[..., Any]:
        if callable(name_or_fn):
            return name_or_fn
        if isinstance(name_or_fn, str) and name_or_fn in self._items:
            return self._items[name_or_fn]
        close = difflib.get_close_matches(str(name_or_fn), self.names(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise AttnGuideError(
            f"unknown {self.kind} {name_or_fn!r}.{hint} Valid names: {', '.join(self.names())}; "
            f"or pass your own callable."
        )
