"""Things of one kind by name (noise kinds, judge kinds, generation engines), each registered by
a module of its own package, found with pkgutil the first time a name is looked up: a new kind
is a new module (and its YAML), never another branch. Standard library only (the generation
worker imports it in an environment without the project's dependencies).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any


class Registry:
    """Entries of one kind of thing, by name.

    `key` names the config key that selects one (for messages), `package` the package whose
    modules register them, `fix(name)` says what to add for an unknown name; `builtin` names are
    valid without an entry (noise: none)."""

    def __init__(
        self,
        key: str,
        plural: str,
        package: str,
        fix: Callable[[str], str],
        error: type[Exception] = ValueError,
        builtin: tuple[str, ...] = (),
    ) -> None:
        self.key, self.plural, self.package, self.fix = key, plural, package, fix
        self.error, self.builtin = error, builtin
        self.entries: dict[str, Any] = {}
        self.discover = functools.cache(self._discover)  # cache_clear() to look again

    def register(self, name: str, instantiate: bool = False) -> Callable:
        """Decorator: the function (or, with `instantiate`, an instance of the class, whose
        `name` is set) becomes entry `name`."""

        def add(obj):
            known = self.entries.get(name)
            same = known is None or (type(known) is obj if instantiate else known is obj)
            if name in self.builtin or not same:
                raise ValueError(f"{self.key} {name!r} is already registered ({known})")
            if instantiate:
                obj.name = name
            self.entries[name] = obj() if instantiate else obj
            return obj

        return add

    def _discover(self) -> None:
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> tuple[str, ...]:
        """Every valid name: the built-in ones, then the registered ones, sorted."""
        self.discover()
        return (*self.builtin, *sorted(self.entries))

    def check(self, name: str) -> None:
        """Fail, naming what is registered and what to add, when `name` is unknown."""
        if name not in self.names():
            raise self.error(
                f"{self.key}={name!r} is unknown; registered {self.plural}: "
                f"{', '.join(self.names())}. {self.fix(name)}"
            )

    def get(self, name: str) -> Any:
        """The entry registered as `name` (check's error when unknown)."""
        self.check(name)
        return self.entries[name]
