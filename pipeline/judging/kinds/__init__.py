"""Judge kinds by name (judge.kind): each module of this package registers one JudgeKind.

A new kind is one module here, e.g. mykind.py:

    from pipeline.judging.kinds import JudgeKind, register

    @register("mykind")
    class MyKind(JudgeKind):
        def validate(self, judge_cfg): ...                                 # cheap, before work
        def annotator_args(self, judge_cfg, work, cache, fn_completions): ...  # (config, kwargs)

plus conf/judge/<name>.yaml (`kind: mykind`). Modules are found with pkgutil the first time a
kind is looked up, so nothing else names them.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

from pipeline.judging.alpaca_import import JudgeError

KINDS: dict[str, JudgeKind] = {}


class JudgeKind:
    """How one kind of judge is checked, built into alpaca_eval's annotator and keyed."""

    name = "?"  # set by @register

    def validate(self, judge_cfg) -> None:
        """Fail (JudgeError) before any training or generation when this judge cannot run."""

    def annotator_args(self, judge_cfg, work: Path, cache, fn_completions) -> tuple[Path, dict]:
        """(alpaca_eval annotator config file, extra PairwiseAnnotator arguments)."""
        raise NotImplementedError

    def prepare(self, annotator, judge_cfg) -> None:
        """Adjust the built annotator in memory (e.g. hand it an API key)."""

    def model(self, judge_cfg):
        """The model config this judge loads on this machine (prefetch fetches it), or None."""
        return None

    def key_params(self, judge_cfg) -> dict:
        """What besides the judge config enters its stage keys (e.g. a local model's device)."""
        return {}


def register(name: str):
    """Class decorator: an instance of the JudgeKind subclass becomes judge kind `name`."""

    def add(cls: type) -> type:
        if name in KINDS and type(KINDS[name]) is not cls:
            raise ValueError(f"judge kind {name!r} is already registered ({KINDS[name]})")
        cls.name = name
        KINDS[name] = cls()
        return cls

    return add


@functools.cache
def discover() -> None:
    """Import every module of this package once (each registers its kinds)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def names() -> tuple[str, ...]:
    """Every registered judge.kind."""
    discover()
    return tuple(sorted(KINDS))


def judge_kind(name: str) -> JudgeKind:
    """The kind registered as `name`; unknown: JudgeError naming the kinds and what to add."""
    if name not in names():
        raise JudgeError(
            f"judge.kind={name!r} is unknown; registered kinds: {', '.join(names())}. A new kind "
            f"is pipeline/judging/kinds/{name}.py (a JudgeKind subclass decorated with "
            f"@register({name!r})) and conf/judge/<judge name>.yaml (kind: {name})"
        )
    return KINDS[name]
