"""The stage plan of one experiment point, declared once as data, and the one walker that runs it.

Every step names its stage module and its SCOPE, what it runs once for:
  arm      each model trained: the noise-off baseline and (unless it is the baseline) the
           configured noise, for every seed; the chain finetune -> generate -> judge -> ...
  variant  each Table-5 length-control variant of each baseline (the baseline's finetune,
           generating with the variant's setting)
  pair     each +NEFT arm judged head to head against the baseline of its seed
  effect   each +NEFT arm against the baseline, its seeds paired (the compare stage)
  point    once: the training data's Table-4 row, the judge's calibration
`run_plan` walks the scopes in that order, each over its units, and returns a PlanResult. Every
stage module exposes `check(cfg)` (cheap; all run before any expensive work) and
`run(cfg, ctx, call) -> StageResult`. A new stage is its module and one Step below (and a
TableSpec to show it: pipeline/README.md, "Extending").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import OmegaConf

from pipeline.judging.judges import reference_from_stage
from pipeline.logs import get_logger, stage_line
from pipeline.models.devices import resolve_precision
from pipeline.results.points import Arm, Comparison, Effect, StageRef, Variant
from pipeline.stages import (
    alpaca_eval_stage,
    analysis,
    compare,
    finetune,
    generate,
    judge_calibration,
    openllm,
    overfit,
)
from pipeline.stages.contract import ArmPair, ArmSpec, Call, Context, Stage
from pipeline.stages.kind_settings import check_kind_settings
from pipeline.store.store import StageResult
from pipeline.train.noise import noise_label, noise_params

LOG = get_logger("plan")


class Scope(Enum):
    """What a step runs once for (the module docstring); walked in this order."""

    arm = "arm"
    variant = "variant"
    pair = "pair"
    effect = "effect"
    point = "point"


def _always(_cfg) -> bool:
    return True


@dataclass(frozen=True)
class Step:
    stage: str  # name under which the result is kept (a chain's upstream, a point's stages)
    module: Stage  # pipeline.stages.<module> (stages/contract.py)
    scopes: tuple[Scope, ...]  # what it runs once for
    enabled: Callable[[Any], bool] = _always  # does this config run it?
    off: str = ""  # why a config that does not run it does not (the console's skipped line)


ARM, VARIANT, PAIR, EFFECT, POINT = Scope
STEPS = (
    Step("finetune", finetune, (ARM,)),
    Step("generate", generate, (ARM, VARIANT)),
    Step("alpaca_eval", alpaca_eval_stage, (ARM, VARIANT)),
    Step("analysis", analysis, (ARM, VARIANT)),
    Step("openllm", openllm, (ARM,), lambda cfg: len(cfg.openllm.tasks) > 0, "openllm=none"),
    Step("overfit", overfit, (ARM,), lambda cfg: cfg.overfit.enabled, "overfit=none"),
    Step(
        "head_to_head",
        alpaca_eval_stage,
        (PAIR,),
        lambda cfg: cfg.head_to_head,
        "head_to_head=false",
    ),
    # +NEFT minus base with CIs that count the seeds (stats.seed_interval)
    Step("compare", compare, (EFFECT,)),
    Step("train_analysis", analysis, (POINT,)),  # Table 4's training-data row
    Step(
        "judge_calibration",
        judge_calibration,
        (POINT,),
        judge_calibration.enabled,
        "calibration.enabled=false, or no calibration pairs here (see above)",
    ),
)


def steps_of(scope: Scope) -> tuple[Step, ...]:
    return tuple(s for s in STEPS if scope in s.scopes)


def arm_specs(cfg) -> list[ArmSpec]:
    """The baseline and (unless it is the baseline) the configured noise, for every seed."""
    off = OmegaConf.create({"kind": "none", "alpha": 0.0, "length": cfg.noise.length})
    settings = [off] if noise_params(cfg.noise)["kind"] == "none" else [off, cfg.noise]
    seeds = list(cfg.seeds) if cfg.seeds else [cfg.finetune.seed]
    return [
        ArmSpec(noise_label(noise_params(n)), n, seed, i == 0)
        for seed in seeds
        for i, n in enumerate(settings)
    ]


# experiment.name is one directory under paths.results: no separator, no `..` or hidden name, no
# newline or other character a shell or a file browser would mangle, not empty ('' wrote the
# tables into paths.results itself, beside every other study).
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def check_experiment_name(name) -> None:
    if not isinstance(name, str) or EXPERIMENT_NAME.fullmatch(name) is None:
        raise ValueError(
            f"experiment.name={name!r}: names one directory under paths.results, so it must be "
            "letters, digits, '.', '_' or '-', not start with a dot and not be empty; e.g. "
            "experiment.name=my_study"
        )


def check_seeds(cfg) -> None:
    """Each seed trains one model per arm: a seed given twice would count the same stage twice
    in every mean and sd over seeds (0.00 spread, n = 2, one model)."""
    seeds = list(cfg.seeds or [])
    repeated = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if repeated is not None:
        distinct = list(dict.fromkeys(seeds))
        example = distinct if len(distinct) > 1 else [repeated, repeated + 1]
        raise ValueError(
            f"seeds={seeds}: seed {repeated} is given twice, and one seed trains one model (a "
            "repeat counts it twice in every mean and sd over seeds); give distinct seeds, "
            f"e.g. seeds=[{','.join(str(s) for s in example)}]"
        )


def check_all(cfg) -> None:
    """The point's name, the kinds' settings and the seeds; resolve precision (`auto` -> the
    dtype that runs here, before any key is computed); then every stage's cheap check, before
    anything is trained."""
    check_experiment_name(cfg.experiment.name)  # first: nothing may be written under a bad one
    check_kind_settings(cfg)  # each kind's settings typed: every check below reads them
    check_seeds(cfg)
    resolve_precision(cfg)
    for module in dict.fromkeys(s.module for s in STEPS):  # cheap, so disabled ones too
        module.check(cfg)


def _ref(result: StageResult) -> StageRef:
    return StageRef(key=result.key, metrics=result.metrics)


def _say(stage: str, label: str, result: StageResult) -> None:
    LOG.info("%s", stage_line(stage, label, result))


def _arm_identity(spec: ArmSpec) -> dict:
    """What the W&B runs of an arm's stages record of it (pipeline/tracking/identity.py)."""
    return {"arm": spec.name, "noise": noise_params(spec.noise), "seed": spec.seed}


def _identified(ctx: Context, **identity):
    """Every W&B run opened meanwhile records `identity` in its config."""
    tracker = getattr(ctx.store, "tracker", None)  # none: no store (a walk that plans only)
    return tracker.identity(**identity) if tracker is not None else nullcontext()


@dataclass
class PlanResult:
    """Everything one point's plan computed, by scope, each stage as a StageRef."""

    arms: list[Arm] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    point_stages: dict[str, StageRef] = field(default_factory=dict)
    # Each arm's StageResults by stage name: what later scopes take their inputs from.
    by_arm: dict[ArmSpec, dict[str, StageResult]] = field(default_factory=dict)


@dataclass(frozen=True)
class Unit:
    """One thing a scope runs its steps for: the stages' Call, a label for the console, and
    where its results go in the PlanResult."""

    call: Call
    label: str
    keep: Callable[[PlanResult, dict[str, StageResult]], None]
    identity: dict = field(default_factory=dict)  # what its stages' W&B runs measured


def _refs(results: dict[str, StageResult]) -> dict[str, StageRef]:
    return {k: _ref(v) for k, v in results.items()}


def _arm_units(cfg, done: PlanResult) -> Iterator[Unit]:
    several = len(cfg.seeds or []) > 1
    for spec in arm_specs(cfg):

        def keep(done: PlanResult, results, spec=spec) -> None:
            done.by_arm[spec] = results
            done.arms.append(
                Arm(
                    name=spec.name,
                    baseline=spec.baseline,
                    seed=spec.seed,
                    noise=noise_params(spec.noise),
                    stages=_refs(results),
                )
            )

        label = f"{spec.name}, seed {spec.seed}" if several else spec.name
        yield Unit(Call(spec, {}), label, keep, _arm_identity(spec))


def _baselines(done: PlanResult) -> list[ArmSpec]:
    return [s for s in done.by_arm if s.baseline]


def _variant_units(cfg, done: PlanResult) -> Iterator[Unit]:
    if not cfg.length_control.enabled:
        return
    for base in _baselines(done):
        for name in cfg.length_control.variants:
            setting = OmegaConf.to_container(cfg.length_control.variants[name], resolve=True)

            def keep(done: PlanResult, results, name=name, seed=base.seed, setting=setting):
                done.variants.append(
                    Variant(name=name, seed=seed, setting=setting, stages=_refs(results))
                )

            upstream = {"finetune": done.by_arm[base]["finetune"]}
            identity = {**_arm_identity(base), "variant": name}
            yield Unit(Call(base, upstream, variant=name), f"{base.name}, {name}", keep, identity)


def _pair_units(cfg, done: PlanResult) -> Iterator[Unit]:
    for base in _baselines(done):
        reference = reference_from_stage(done.by_arm[base]["generate"], "base")
        for spec in (s for s in done.by_arm if not s.baseline and s.seed == base.seed):

            def keep(done: PlanResult, results, spec=spec, base=base) -> None:
                done.comparisons.append(
                    Comparison(
                        arm=spec.name, baseline=base.name, seed=spec.seed, stages=_refs(results)
                    )
                )

            upstream = {"generate": done.by_arm[spec]["generate"]}
            call = Call(spec, upstream, reference=reference)
            yield Unit(call, f"{spec.name} vs {base.name}", keep, _arm_identity(spec))


def _effect_units(cfg, done: PlanResult) -> Iterator[Unit]:
    """Per non-baseline arm: its seeds, each paired with the baseline of that seed."""
    for name in dict.fromkeys(s.name for s in done.by_arm if not s.baseline):
        pairs = []
        for spec in (s for s in done.by_arm if s.name == name):
            base = next(s for s in _baselines(done) if s.seed == spec.seed)
            b, t = done.by_arm[base], done.by_arm[spec]
            shared = [k for k in compare.COMPARED if k in b and k in t]
            pairs.append(ArmPair(spec.seed, {k: b[k] for k in shared}, {k: t[k] for k in shared}))

        def keep(done: PlanResult, results, name=name, pairs=pairs) -> None:
            done.effects.append(
                Effect(
                    arm=name, baseline="base", seeds=[p.seed for p in pairs], stages=_refs(results)
                )
            )

        spec = next(s for s in done.by_arm if s.name == name)
        identity = {**_arm_identity(spec), "seed": None}  # its seeds pooled
        yield Unit(Call(spec, {}, pairs=tuple(pairs)), f"{name} vs base", keep, identity)


def _point_units(cfg, done: PlanResult) -> Iterator[Unit]:
    def keep(done: PlanResult, results) -> None:
        done.point_stages.update(_refs(results))

    yield Unit(Call(arm_specs(cfg)[0], {}), "point", keep)


UNITS = {
    ARM: _arm_units,
    VARIANT: _variant_units,
    PAIR: _pair_units,
    EFFECT: _effect_units,
    POINT: _point_units,
}


def _walk(cfg, ctx: Context, steps: tuple[Step, ...], unit: Unit) -> dict[str, StageResult]:
    """The steps of one unit in order, each reading what the ones before it returned; the
    unit's own results (not the upstream it was given)."""
    call, done = unit.call, dict(unit.call.upstream)
    for step in steps:
        here = Call(call.arm, done, call.variant, call.reference, call.pairs)
        with _identified(ctx, **unit.identity, step=step.stage):
            result = step.module.run(cfg, ctx, here)
        _say(step.stage, unit.label, result)
        done[step.stage] = result
    return {k: v for k, v in done.items() if k not in call.upstream}


def run_plan(cfg, ctx: Context) -> PlanResult:
    """Run every stage of one point, scope by scope (arms first, the point last); a scope none
    of whose steps this config runs has no units (no head-to-head record without the step)."""
    done = PlanResult()
    for scope in Scope:
        # Asked once per run: some steps say why they do not run (an uncalibrated judge).
        on = [(s, s.enabled(cfg)) for s in steps_of(scope)]
        for step in (s for s, enabled in on if not enabled):
            LOG.info("%s", stage_line(step.stage, scope.value, skipped=step.off))
        steps = tuple(s for s, enabled in on if enabled)
        if not steps:
            continue
        for unit in UNITS[scope](cfg, done):
            unit.keep(done, _walk(cfg, ctx, steps, unit))
    return done
