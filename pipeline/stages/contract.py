"""The one contract every stage module keeps, and the data that crosses it.

A stage is a module with `check(cfg)` (cheap: runs for every stage before anything is trained, so
bad input fails first) and `run(cfg, ctx, call) -> StageResult` (reads only the results in
`call`, writes only its own stage directory through `ctx.store`, returns its metrics). plan.py
walks stages through this contract; stages never import each other or the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.judging.judges import Reference
from pipeline.store.store import StageResult, Store

__all__ = ["ArmPair", "ArmSpec", "Call", "Context", "Stage", "StageResult"]


@dataclass(frozen=True)
class ArmSpec:
    """One model to train: a noise setting and a seed."""

    name: str
    noise: Any  # a noise config node
    seed: int
    baseline: bool


@dataclass(frozen=True)
class ArmPair:
    """One seed of a comparison: the baseline's and the treated arm's results by stage name
    (alpaca_eval, analysis and, where it ran, openllm)."""

    seed: int
    base: dict[str, StageResult]
    treated: dict[str, StageResult]


@dataclass(frozen=True)
class Call:
    """What a stage's `run` is asked to do: for which arm, on which upstream results."""

    arm: ArmSpec
    upstream: dict[str, StageResult]
    variant: str | None = None  # a length_control.variants name (Table 5)
    reference: Reference | None = None  # judge against this instead of generate.reference
    pairs: tuple[ArmPair, ...] = ()  # compare: the arm's seeds, each beside the baseline's


@dataclass(frozen=True)
class Context:
    """What every stage of a run shares: where results are kept and where the Trainer logs."""

    store: Store
    cache: Store
    report_to: list[str] = field(default_factory=list)  # the Trainer's loggers


class Stage(Protocol):
    """A stage module (pipeline/stages/<name>.py) as plan.py uses it."""

    def check(self, cfg: Any) -> None: ...

    def run(self, cfg: Any, ctx: Context, call: Call) -> StageResult: ...
