"""Registries of trusted types: a file names a type, code decides what that name builds.

Nothing is ever imported from a string read from a file. A name resolves to a type that code in this
process registered (a built-in, a class decorated with ``register``), reached by its registered name, an
alias, or a dotted path through modules already imported (e.g. a package's re-export); or to an entry
point of the registry's group declared by an installed package. Anything else is an
:class:`UnknownTypeError`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import TypeVar

T = TypeVar("T", bound=type)


class UnknownTypeError(ValueError):
    """A file names a type that no code registered."""


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


class Registry:
    """Name → type, filled by code (:meth:`register`) and by the entry points of ``group``.

    Args:
        kind: what the types are, for messages (e.g. ``"generator network"``).
        group: the entry-point group installed packages declare their types in.
        how: how a user registers a type, for messages.
    """

    def __init__(self, kind: str, group: str, how: str) -> None:
        self.kind = kind
        self.group = group
        self.how = how
        self._types: dict[str, type] = {}
        self._aliases: dict[str, str] = {}

    def register(self, cls: T | None = None, *, name: str | None = None, aliases: Iterable[str] = ()) -> T | Callable:
        """Register ``cls`` under ``name`` (default: its qualified name); usable as a decorator.

        A class of the same qualified name replaces an earlier one (a redefined class, e.g. in a notebook);
        another class under a taken name is an error.

        ``aliases`` are further names that resolve to it (e.g. where it lived before a rename); the
        qualified name always does.
        """

        def add(cls: T) -> T:
            key = name or qualified_name(cls)
            known = self._types.get(key)
            if known is not None and qualified_name(known) != qualified_name(cls):  # a redefinition replaces
                raise ValueError(f"{self.kind} name {key!r} is already registered for {qualified_name(known)}")
            self._types[key] = cls
            for alias in (qualified_name(cls), *aliases):
                if alias != key:
                    self._aliases[alias] = key
            return cls

        return add if cls is None else add(cls)

    def names(self) -> list[str]:
        """Registered names (entry points not loaded yet are not listed)."""
        return sorted(self._types)

    def name_of(self, cls: type) -> str:
        """The name ``cls`` is registered under (what files record)."""
        for key, value in self._types.items():
            if value is cls:
                return key
        raise UnknownTypeError(f"{self.kind} {qualified_name(cls)} is not registered; {self.how}")

    def get(self, name: object) -> type:
        """The type registered as ``name`` (or one of its aliases); imports nothing a file named."""
        if not isinstance(name, str) or not name:
            raise UnknownTypeError(f"{self.kind} name must be a non-empty string, got {name!r}")
        key = self._aliases.get(name, name)
        if key in self._types:
            return self._types[key]
        cls = self._from_imported(name) or self._from_entry_points(name)
        if cls is None:
            raise UnknownTypeError(
                f"unknown {self.kind} {name!r} (nothing was imported); {self.how}. Registered: {self.names()}"
            )
        return cls

    def _from_imported(self, name: str) -> type | None:
        """A registered type reached by ``module.attr`` through a module that is already imported."""
        module, _, attr = name.rpartition(".")
        found = getattr(sys.modules.get(module), attr, None)
        return found if isinstance(found, type) and found in self._types.values() else None

    def _from_entry_points(self, name: str) -> type | None:
        """Load the entry point of ``group`` named ``name`` (or whose target is ``name``), if one is installed."""
        for point in entry_points(group=self.group):
            if name in (point.name, point.value.replace(":", ".")):
                cls = point.load()
                self.register(cls, name=point.name)
                return cls
        return None


GENERATORS = Registry(
    "generator network",
    "a2vgen.generators",
    "decorate its class with @a2vgen.nn.register_generator in code you import, or declare it in the "
    "entry-point group 'a2vgen.generators' of an installed package",
)
register_generator = GENERATORS.register
