"""NEFTune noise kinds by name: each module of this package registers one sampler.

A new kind is one module here, e.g. laplace.py:

    from pipeline.train.noise_kinds import register

    @register("laplace")
    def laplace(like, mag, generator):
        ...  # a tensor shaped like `like`: the noise entries scaled by `mag`

plus conf/noise/laplace.yaml (`kind: laplace`). Modules are found with pkgutil the first time a
kind is looked up, so nothing else names them. `none` (the baseline) is no sampler: no noise.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable

OFF = "none"  # the baseline: no noise, whatever alpha says
SAMPLERS: dict[str, Callable] = {}


def register(name: str):
    """Decorator: `fn(like, mag, generator) -> Tensor` becomes noise kind `name`."""

    def add(fn: Callable) -> Callable:
        if name == OFF or SAMPLERS.get(name, fn) is not fn:
            raise ValueError(f"noise kind {name!r} is already registered ({SAMPLERS.get(name)})")
        SAMPLERS[name] = fn
        return fn

    return add


@functools.cache
def discover() -> None:
    """Import every module of this package once (each registers its kinds)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def names() -> tuple[str, ...]:
    """Every valid noise.kind: the baseline and the registered samplers."""
    discover()
    return (OFF, *sorted(SAMPLERS))


def check_kind(kind: str) -> None:
    """Fail, naming the registered kinds and what to add, when `kind` is unknown."""
    if kind not in names():
        raise ValueError(
            f"noise.kind={kind!r} is unknown; registered kinds: {', '.join(names())}. A new "
            f"kind is pipeline/train/noise_kinds/{kind}.py (a sampler decorated with "
            f"@register({kind!r})) and conf/noise/{kind}.yaml (kind: {kind})"
        )


def sampler(kind: str) -> Callable:
    """The sampler registered as `kind`."""
    check_kind(kind)
    return SAMPLERS[kind]
