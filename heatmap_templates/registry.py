"""Named entries of one kind of option: the single plug-in style of hmt.

Every option that grows (CAM methods, scores, head kinds, similarities, normalisations,
registration methods, per-class statistics, backbones, preprocessing modes) is a
:class:`Registry`. Adding one is registering one entry in the module that owns the registry; the
CLI's choices and help text and the parametrised tests are generated from the registry, and an
unknown name is an :class:`~heatmap_templates.errors.OptionError` listing the choices.

Example::

    NORMALISATIONS = Registry("normalisation", parameter="normalisation")

    @NORMALISATIONS.register("minmax", help="scale each map to [0, 1]")
    def _minmax(flat): ...

    NORMALISATIONS["minmax"]       # the function
    NORMALISATIONS.names()         # ("minmax", ...), in registration order
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from heatmap_templates.errors import OptionError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered name -> entry mapping with one-line help per entry (see the module docstring)."""

    def __init__(self, what: str, *, parameter: str) -> None:
        self.what = what
        self.parameter = parameter
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, *, help: str) -> Callable[[T], T]:
        """Decorator adding ``entry`` under ``name``; a name may be registered once."""

        def add(entry: T) -> T:
            self.add(name, entry, help=help)
            return entry

        return add

    def add(self, name: str, entry: T, *, help: str) -> None:
        """Register ``entry`` under ``name`` (for entries that are not decorated functions)."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        self._help[name] = help

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise OptionError(self.parameter, name, self.what, self.names()) from None

    def check(self, name: str) -> str:
        """``name`` when registered, else the OptionError listing the choices."""
        self[name]
        return name

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order."""
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def help_text(self, lead: str) -> str:
        """CLI help: ``lead`` then every choice with its one-line help, e.g. "CAM method: gradcam (...), ..."."""
        return f"{lead}: " + "; ".join(f"{name} ({self._help[name]})" if self._help[name] else name for name in self._entries)
