"""compare stage: how much +NEFT changed each measure against the baseline, with 95% CIs that
count both the prompts (paired: the same prompts for both arms) and, with several seeds, the
training seed.

Reads the two arms' alpaca_eval stages (scored.json: one verdict per prompt) and analysis stages
(per_output.json: characters, whitespace tokens, log-diversity per answer); with several seeds,
seed s of +NEFT is paired with seed s of the baseline. One seed: a paired bootstrap over prompts,
as in version 3 (its numbers unchanged). Several seeds: each seed's difference on its own, their
mean, and an interval from the between-seed variance of those differences plus a prompt
bootstrap shared by all seeds (pipeline/metrics/stats.py, seed_interval): the rows of one seed
share one trained model, so pooling them as independent rows (version 3) left out the variance
between training runs.
Writes metrics.json: for win_rate, lc_win_rate, chars, words and log_diversity the difference
(+NEFT minus base), its CI, n (prompts per seed), n_seeds, between_seed_sd (SD of the per-seed
differences; None with one seed), method, whether the CI excludes zero, se and mde (the least
true difference this design detects with 80% power at the level: (z_{1-a/2} + z_0.8) x se, t
quantiles over seeds); with lm-eval results, per leaderboard task a paired test over questions
(McNemar's exact test for accuracies; over seeds, the seed interval's t test).

Run: python -m pipeline.run            (every point compares each noise arm with its baseline)
     python -m pipeline.run seeds=[1,2,3]   (three training seeds per arm, seed-aware intervals)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.judging.alpaca_import import pin_alpaca_eval_version
from pipeline.stages.contract import ArmPair, Call, Context
from pipeline.store.store import StageResult, Store, readable_of, stage_key

# 2: each difference says how many prompts have a value in each arm; 3: se and mde; 4: several
# seeds are per-seed differences with a seed-aware interval, n is prompts per seed, and every
# difference says n_seeds, between_seed_sd and method (one seed: the numbers of version 3)
VERSION = 4
# Power of the detectable effect (mde) each difference carries; a config key (compare.power) to be.
POWER = 0.8
SIDES = ("base", "treated")  # the two ArmPair fields, in the order their keys are hashed
# The arm stages an effect pairs, seed by seed (plan.py hands them over): a new per-arm stage
# whose effect should be paired adds its name here and its measure below.
COMPARED = ("alpaca_eval", "analysis", "openllm")


def check(cfg) -> None:
    """Cheap: enough resamples for a percentile interval, a level in (0, 1)."""
    c = cfg.compare
    if c.resamples < 1000 or c.lc_resamples < 20:
        raise ValueError(
            f"compare.resamples={c.resamples}, compare.lc_resamples="
            f"{c.lc_resamples}: use at least 1000 and 20 for a 95% interval"
        )
    if not 0 < c.level < 1:
        raise ValueError(f"compare.level={c.level}: a confidence level in (0, 1), e.g. 0.95")


def run(cfg, ctx: Context, call: Call) -> StageResult:
    """Plan entry: call.pairs holds, per seed, the baseline's and the treated arm's results."""
    # The LC interval imports alpaca_eval (metrics.winrate): first in a rerun whose judged
    # stages are all reused, so it must import the version the judges after it will need.
    pin_alpaca_eval_version(cfg.judge.alpaca_eval_version)
    return compare(call.pairs, cfg.compare, ctx.store)


def _read(stage: StageResult, name: str):
    path = stage.path / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path}: unreadable ({err}); the stage {stage.key} is damaged: "
            "delete its directory to recompute it"
        ) from err


PER_OUTPUT = ("chars", "words", "log_diversity")  # per-answer values of the analysis stage


@dataclass(frozen=True)
class SeedValues:
    """Per-prompt values of both arms, one list per seed (in the order of `pairs`)."""

    base: dict[str, list[list]]  # "scored" (verdict rows) and PER_OUTPUT names -> per seed
    treated: dict[str, list[list]]
    shared_prompts: bool  # every seed judged the same prompts in the same order


def _aligned(pairs: Sequence[ArmPair]) -> SeedValues:
    """Per-prompt values of both arms, seed by seed, checked to be on the same prompts."""
    out = {side: {"scored": [], **{name: [] for name in PER_OUTPUT}} for side in SIDES}
    prompts_of_seeds = []
    for pair in pairs:
        scored = {side: _read(getattr(pair, side)["alpaca_eval"], "scored.json") for side in SIDES}
        prompts = [[r["instruction"] for r in scored[side]] for side in SIDES]
        if prompts[0] != prompts[1]:
            raise ValueError(
                f"{pair.treated['alpaca_eval'].key} and "
                f"{pair.base['alpaca_eval'].key} judged different prompts; "
                "a paired comparison needs the same prompts in the same order"
            )
        prompts_of_seeds.append(prompts[0])
        for side in SIDES:
            per_output = _read(getattr(pair, side)["analysis"], "per_output.json")
            out[side]["scored"].append(scored[side])
            for name in PER_OUTPUT:
                out[side][name].append(per_output[name])
    shared = all(p == prompts_of_seeds[0] for p in prompts_of_seeds)
    return SeedValues(out["base"], out["treated"], shared)


def _openllm(pairs: Sequence[ArmPair], compare_cfg) -> dict:
    """Per leaderboard task, paired over questions: McNemar's exact test where scores are 0/1
    (accuracy), a paired bootstrap of the score otherwise (TruthfulQA mc2), in points; over
    seeds, the per-seed differences combined (stats.mcnemar_seeds, paired_diff_seeds)."""
    from pipeline.metrics.stats import mcnemar_seeds, paired_diff_seeds

    scores: dict[str, dict[str, list[list]]] = {}
    for pair in pairs:
        for side in SIDES:
            for task, values in _read(getattr(pair, side)["openllm"], "per_question.json").items():
                scores.setdefault(task, {"base": [], "treated": []})[side].append(values)
    out = {}
    for task, v in scores.items():
        common = dict(
            n_resamples=compare_cfg.resamples,
            seed=compare_cfg.seed,
            level=compare_cfg.level,
            power=POWER,
            # lm-eval asks every seed the task's same questions in the same order
            shared_prompts=len({len(x) for x in v["base"] + v["treated"]}) == 1,
        )
        values = {x for seed in v["base"] + v["treated"] for x in seed}
        if values <= {0.0, 1.0}:
            out[task] = mcnemar_seeds(v["base"], v["treated"], **common)
        else:
            out[task] = paired_diff_seeds(
                [[100 * x for x in seed] for seed in v["base"]],
                [[100 * x for x in seed] for seed in v["treated"]],
                **common,
            )
    return out


def compare(pairs: Sequence[ArmPair], compare_cfg, store: Store) -> StageResult:
    """Paired differences (+NEFT minus base) of each measure over the seeds in `pairs`."""
    inputs = [
        getattr(pair, side)[stage].key
        for pair in pairs
        for side in SIDES
        for stage in sorted(getattr(pair, side))
    ]
    params = OmegaConf.to_container(compare_cfg, resolve=True)
    treated = readable_of(pairs[0].treated["analysis"].key)
    key = stage_key("compare", f"{treated}_vs_base", params, inputs, VERSION)

    def compute(work: Path) -> dict:
        from pipeline.metrics.stats import lc_diff_seeds, paired_diff_seeds, winrate_diff_seeds

        v = _aligned(pairs)
        b, t = v.base, v.treated
        common = dict(
            seed=compare_cfg.seed,
            level=compare_cfg.level,
            power=POWER,
            shared_prompts=v.shared_prompts,
        )
        metrics = {
            "win_rate": winrate_diff_seeds(
                [[r["preference"] for r in seed] for seed in b["scored"]],
                [[r["preference"] for r in seed] for seed in t["scored"]],
                compare_cfg.resamples,
                **common,
            ),
            "lc_win_rate": lc_diff_seeds(
                b["scored"], t["scored"], compare_cfg.lc_resamples, **common
            ),
        }
        for name in PER_OUTPUT:
            # a seed where an arm has no value (e.g. no answer reached the diversity cutoff K)
            # has no difference: the others make the interval; none at all, nothing to say
            kept = [
                s
                for s in range(len(pairs))
                if any(x is not None for x in b[name][s]) and any(x is not None for x in t[name][s])
            ]
            metrics[name] = (
                paired_diff_seeds(
                    [b[name][s] for s in kept],
                    [t[name][s] for s in kept],
                    compare_cfg.resamples,
                    **common,
                )
                if kept
                else None
            )
        if all("openllm" in getattr(pair, side) for pair in pairs for side in SIDES):
            metrics["openllm"] = _openllm(pairs, compare_cfg)
        metrics["n_seeds"] = len(pairs)
        metrics["n_prompts"] = len(b["scored"][0])
        metrics["n_log_diversity_kept"] = {
            side: sum(x is not None for seed in getattr(v, side)["log_diversity"] for x in seed)
            for side in SIDES
        }
        return metrics

    return store.materialize(key, compute, config=params)
