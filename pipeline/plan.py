"""The stage plan of one experiment point, declared once as data, and the walker that runs it.

A point trains one arm per noise setting (the noise-off baseline and, unless it is the baseline,
the configured noise) and per seed, and runs ARM_CHAIN on each; VARIANT_CHAIN on each Table-5
length-control variant of the baseline; COMPARISON (+NEFT judged against the baseline); and
POINT_STEPS once. Every stage module exposes `check(cfg)` (cheap; all run before any expensive
work) and `run(cfg, ctx, call) -> StageResult`. Adding a stage: its module, its conf group, and
one Step below.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from pipeline.judging.judges import reference_from_stage
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
from pipeline.store.store import StageResult
from pipeline.text.logs import get_logger
from pipeline.train.noise import noise_label, noise_params

LOG = get_logger("plan")


@dataclass(frozen=True)
class Step:
    stage: str  # name under which the result is kept (a chain's upstream, a point's stages)
    module: Stage  # pipeline.stages.<module> (stages/contract.py)
    enabled: Callable[[Any], bool]  # does this config run it?


def _always(_cfg) -> bool:
    return True


ARM_CHAIN = (
    Step("finetune", finetune, _always),
    Step("generate", generate, _always),
    Step("alpaca_eval", alpaca_eval_stage, _always),
    Step("analysis", analysis, _always),
    Step("openllm", openllm, lambda cfg: len(cfg.openllm.tasks) > 0),
    Step("overfit", overfit, lambda cfg: cfg.overfit.enabled),
)
# Table 5: the baseline's finetune, generating with each length-control variant.
VARIANT_CHAIN = tuple(s for s in ARM_CHAIN if s.stage in ("generate", "alpaca_eval", "analysis"))
COMPARISON = Step("head_to_head", alpaca_eval_stage, lambda cfg: cfg.head_to_head)
# Per non-baseline arm, pooled over seeds: +NEFT minus base with paired-bootstrap CIs.
EFFECT = Step("compare", compare, _always)
COMPARED = ("alpaca_eval", "analysis", "openllm")  # the stages an effect pairs, seed by seed
POINT_STEPS = (
    Step("train_analysis", analysis, _always),  # Table 4's training-data row
    Step("judge_calibration", judge_calibration, judge_calibration.enabled),  # trust in the judge
)


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
    """The point's name and seeds; resolve precision (`auto` -> the dtype that runs here, before
    any key is computed); then every stage's cheap check, before anything is trained."""
    check_experiment_name(cfg.experiment.name)  # first: nothing may be written under a bad one
    check_seeds(cfg)
    resolve_precision(cfg)
    steps = ARM_CHAIN + (COMPARISON, EFFECT) + POINT_STEPS
    for module in dict.fromkeys(s.module for s in steps):  # cheap, so disabled ones too
        module.check(cfg)


def _ref(result: StageResult) -> StageRef:
    return StageRef(result.key, result.metrics)


def _say(stage: str, label: str, result: StageResult) -> None:
    how = "reused" if result.reused else "computed"
    LOG.info("[%s] %s: %s -> %s", stage, label, how, result.path)


def _walk(cfg, ctx: Context, chain, call: Call, label: str) -> dict[str, StageResult]:
    done = dict(call.upstream)
    for step in chain:
        if step.enabled(cfg):
            result = step.module.run(cfg, ctx, Call(call.arm, done, call.variant, call.reference))
            _say(step.stage, label, result)
            done[step.stage] = result
    return done


def _effects(cfg, ctx: Context, results: dict) -> list[Effect]:
    """One compare stage per non-baseline arm: its seeds paired with the baseline's."""
    effects = []
    treated_names = dict.fromkeys(s.name for s in results if not s.baseline)
    for name in treated_names if EFFECT.enabled(cfg) else ():
        pairs = []
        for spec in (s for s in results if s.name == name):
            base = next(s for s in results if s.baseline and s.seed == spec.seed)
            shared = [k for k in COMPARED if k in results[base] and k in results[spec]]
            pairs.append(
                ArmPair(
                    spec.seed,
                    {k: results[base][k] for k in shared},
                    {k: results[spec][k] for k in shared},
                )
            )
        spec = next(s for s in results if s.name == name)
        result = EFFECT.module.run(cfg, ctx, Call(spec, {}, pairs=tuple(pairs)))
        _say(EFFECT.stage, f"{name} vs base", result)
        effects.append(Effect(name, "base", [p.seed for p in pairs], {EFFECT.stage: _ref(result)}))
    return effects


def run_plan(
    cfg, ctx: Context
) -> tuple[list[Arm], list[Variant], list[Comparison], list[Effect], dict]:
    """Run every stage of one point: its arms, variants, comparisons, effects, point stages."""
    arms, results = [], {}
    for spec in arm_specs(cfg):
        label = spec.name if len(cfg.seeds or []) < 2 else f"{spec.name}, seed {spec.seed}"
        results[spec] = _walk(cfg, ctx, ARM_CHAIN, Call(spec, {}), label)
        noise = noise_params(spec.noise)
        arms.append(
            Arm(
                spec.name,
                spec.baseline,
                spec.seed,
                noise,
                {k: _ref(v) for k, v in results[spec].items()},
            )
        )
    variants, comparisons = [], []
    for base in (s for s in results if s.baseline):
        if cfg.length_control.enabled:
            for name in cfg.length_control.variants:
                call = Call(base, {"finetune": results[base]["finetune"]}, variant=name)
                done = _walk(cfg, ctx, VARIANT_CHAIN, call, f"{base.name}, {name}")
                setting = OmegaConf.to_container(cfg.length_control.variants[name], resolve=True)
                variants.append(
                    Variant(
                        name,
                        base.seed,
                        setting,
                        {k: _ref(v) for k, v in done.items() if k != "finetune"},
                    )
                )
        if not COMPARISON.enabled(cfg):
            continue
        for spec in (s for s in results if not s.baseline and s.seed == base.seed):
            reference = reference_from_stage(results[base]["generate"], "base")
            call = Call(spec, {"generate": results[spec]["generate"]}, reference=reference)
            judged = COMPARISON.module.run(cfg, ctx, call)
            _say("alpaca_eval", f"{spec.name} vs {base.name}", judged)
            comparisons.append(
                Comparison(spec.name, base.name, spec.seed, {COMPARISON.stage: _ref(judged)})
            )
    effects = _effects(cfg, ctx, results)
    point_stages = {}
    for step in POINT_STEPS:
        if step.enabled(cfg):
            result = step.module.run(cfg, ctx, Call(arm_specs(cfg)[0], {}))
            _say(step.stage, "point", result)
            point_stages[step.stage] = _ref(result)
    return arms, variants, comparisons, effects, point_stages
