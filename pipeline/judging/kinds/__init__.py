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

from pathlib import Path

from pipeline.judging.alpaca_import import JudgeError
from pipeline.registry import Registry


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


REGISTRY = Registry(
    "judge.kind",
    "kinds",
    __name__,
    lambda name: (
        f"A new kind is pipeline/judging/kinds/{name}.py (a JudgeKind subclass "
        f"decorated with @register({name!r})) and conf/judge/<judge name>.yaml (kind: {name})"
    ),
    error=JudgeError,
)
KINDS = REGISTRY.entries
discover = REGISTRY.discover


def register(name: str):
    """Class decorator: an instance of the JudgeKind subclass becomes judge kind `name`."""
    return REGISTRY.register(name, instantiate=True)


def names() -> tuple[str, ...]:
    """Every registered judge.kind."""
    return REGISTRY.names()


def judge_kind(name: str) -> JudgeKind:
    """The kind registered as `name`; unknown: JudgeError naming the kinds and what to add."""
    return REGISTRY.get(name)
