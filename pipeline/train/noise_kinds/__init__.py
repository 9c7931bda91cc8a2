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

from collections.abc import Callable

from pipeline.registry import Registry

OFF = "none"  # the baseline: no noise, whatever alpha says
REGISTRY = Registry(
    "noise.kind",
    "kinds",
    __name__,
    lambda kind: (
        f"A new kind is pipeline/train/noise_kinds/{kind}.py (a sampler decorated with "
        f"@register({kind!r})) and conf/noise/{kind}.yaml (kind: {kind})"
    ),
    builtin=(OFF,),
)
SAMPLERS = REGISTRY.entries
discover = REGISTRY.discover


def register(name: str):
    """Decorator: `fn(like, mag, generator) -> Tensor` becomes noise kind `name`."""
    return REGISTRY.register(name)


def names() -> tuple[str, ...]:
    """Every valid noise.kind: the baseline and the registered samplers."""
    return REGISTRY.names()


def check_kind(kind: str) -> None:
    """Fail, naming the registered kinds and what to add, when `kind` is unknown."""
    REGISTRY.check(kind)


def sampler(kind: str) -> Callable:
    """The sampler registered as `kind`."""
    return REGISTRY.get(kind)
