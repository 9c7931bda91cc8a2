"""Things of one kind by name (noise kinds, judge kinds, generation engines), each registered by
a module of its own package, found with pkgutil the first time a name is looked up: a new kind
is a new module (and its YAML), never another branch. Standard library only at import (the
generation worker imports it in an environment without the project's dependencies; only
`settings`, which the worker never calls, imports OmegaConf).

A kind's own settings: its class declares `Settings`, a dataclass (every field typed, with a
default and a comment, like the schema) next to its code; the config gives them under
`<section>.settings` (judge.settings, noise.settings, generate.settings), which the schema leaves
open at composition (any key, also on the command line, without `+`), and `settings(section)`
checks them against the selected kind's dataclass and types them in place.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any


@dataclass
class NoSettings:
    """The settings of a kind that has none of its own (the default `Settings`)."""


class Registry:
    """Entries of one kind of thing, by name.

    `key` names the config key that selects one (`<section>.<field>`: judge.kind, noise.kind,
    generate.engine), `package` the package whose modules register them, `fix(name)` says what
    to add for an unknown name; `builtin` names are valid without an entry (noise: none) and
    have no settings."""

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
        self.section, _, self.field = key.rpartition(".")  # judge.kind: judge, kind
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

    def settings_type(self, name: str) -> type:
        """The dataclass of `name`'s own settings: its class's `Settings` (NoSettings if none)."""
        self.check(name)
        return getattr(self.entries.get(name), "Settings", NoSettings)

    def settings(self, section) -> Any:
        """`section.settings` as the typed settings of the kind `section` selects.

        The kind's Settings dataclass with what the config gives merged in: every field has a
        value (a YAML gives only what differs from the defaults) and its declared type. Stored
        back in place where the section has a settings node, so every later reader and writer
        (models.devices.resolve_precision writes a judge model's dtype) shares one node; typed
        once, it is returned as it is. A section built in code without settings (the baseline
        arm's noise) gets the defaults. An unknown key or a value of the wrong type fails
        (`error`) naming the kind, the full key and the settings the kind has."""
        from omegaconf import DictConfig, OmegaConf
        from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

        name = section[self.field]
        cls = self.settings_type(name)
        given = section.get("settings")
        if isinstance(given, DictConfig) and OmegaConf.get_type(given) is cls:
            return given
        if given is not None and not isinstance(given, (DictConfig, dict)):
            raise self.error(
                f"{self.section}.settings={given!r}: the settings of {self.key}={name!r} are a "
                f"mapping of its {cls.__qualname__} fields ({cls.__module__})"
            )
        try:
            typed = OmegaConf.merge(OmegaConf.structured(cls), given or {})
        except OmegaConfBaseException as err:
            unknown = isinstance(err, (ConfigKeyError, ConfigAttributeError))
            raise self.error(self._settings_error(name, cls, err, unknown)) from None
        if "settings" not in section or OmegaConf.is_readonly(section):
            return typed
        section.settings = typed
        return section.settings

    def _settings_error(self, name: str, cls: type, err, unknown: bool) -> str:
        """`<section>.settings.<key>`: what is wrong (`unknown`: a key the dataclass does not
        have), the kind, its settings, a close name."""
        where = f"{self.section}.settings.{err.full_key}"
        owner = err.object_type if is_dataclass(err.object_type) else cls
        valid = [f.name for f in fields(owner)]
        declared = f"{owner.__qualname__} in {owner.__module__}"
        kind = f"{self.key}={name!r}"
        said = str(err).splitlines()[0]
        if unknown:
            if not valid:
                return f"{where}: {kind} has no settings of its own ({declared})"
            close = difflib.get_close_matches(str(err.key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return (
                f"{where}: {kind} has no setting {str(err.key)!r}{hint}; its settings "
                f"({declared}): {', '.join(valid)}"
            )
        # A str where the module has `from __future__ import annotations`, else the type itself.
        types = {f.name: getattr(f.type, "__name__", f.type) for f in fields(owner)}
        wanted = types.get(str(err.key), "?")
        return f"{where}: {said}; {kind} declares {err.key}: {wanted} ({declared})"
