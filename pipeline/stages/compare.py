"""compare stage: how much +NEFT changed each measure against the baseline, with paired-bootstrap
95% CIs over prompts (the same prompts for both arms), pooled over seeds.

Reads the two arms' alpaca_eval stages (scored.json: one verdict per prompt) and analysis stages
(per_output.json: characters, whitespace tokens, log-diversity per answer); with several seeds,
seed s of +NEFT is paired with seed s of the baseline and the prompts of all seeds are pooled.
Writes metrics.json: for win_rate, lc_win_rate, chars, words and log_diversity the difference
(+NEFT minus base), its CI, n, whether the CI excludes zero, se (the SD of the resampled
differences) and mde (the least true difference this design detects with 80% power at the level:
(z_{1-a/2} + z_0.8) x se); with lm-eval results, per leaderboard task a paired test over
questions (McNemar's exact test for accuracies).

Run: python -m pipeline.run            (every point compares each noise arm with its baseline)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.judging.alpaca_import import pin_alpaca_eval_version
from pipeline.stages.contract import ArmPair, Call, Context
from pipeline.store.store import StageResult, Store, readable_of, stage_key

VERSION = 3  # 2: each difference says how many prompts have a value in each arm; 3: se and mde
# Power of the detectable effect (mde) each difference carries; a config key (compare.power) to be.
POWER = 0.8
SIDES = ("base", "treated")  # the two ArmPair fields, in the order their keys are hashed


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


def _aligned(pairs: Sequence[ArmPair]) -> dict:
    """Per-prompt values of both arms, seed by seed, checked to be on the same prompts."""
    out = {
        side: {"scored": [], "chars": [], "words": [], "log_diversity": []}
        for side in ("base", "treated")
    }
    for pair in pairs:
        scored = {side: _read(getattr(pair, side)["alpaca_eval"], "scored.json") for side in SIDES}
        prompts = [[r["instruction"] for r in scored[side]] for side in ("base", "treated")]
        if prompts[0] != prompts[1]:
            raise ValueError(
                f"{pair.treated['alpaca_eval'].key} and "
                f"{pair.base['alpaca_eval'].key} judged different prompts; "
                "a paired comparison needs the same prompts in the same order"
            )
        for side in ("base", "treated"):
            per_output = _read(getattr(pair, side)["analysis"], "per_output.json")
            out[side]["scored"] += scored[side]
            for name in ("chars", "words", "log_diversity"):
                out[side][name] += per_output[name]
    return out


def _openllm(pairs: Sequence[ArmPair], compare_cfg) -> dict:
    """Per leaderboard task, paired over questions: McNemar's exact test where scores are 0/1
    (accuracy), a paired bootstrap of the score otherwise (TruthfulQA mc2), in points."""
    from pipeline.metrics.stats import mcnemar, paired_bootstrap_diff

    scores: dict[str, dict[str, list]] = {}
    for pair in pairs:
        for side in ("base", "treated"):
            for task, values in _read(getattr(pair, side)["openllm"], "per_question.json").items():
                scores.setdefault(task, {"base": [], "treated": []})[side] += values
    out = {}
    for task, v in scores.items():
        common = dict(
            n_resamples=compare_cfg.resamples,
            seed=compare_cfg.seed,
            level=compare_cfg.level,
            power=POWER,
        )
        if set(v["base"] + v["treated"]) <= {0.0, 1.0}:
            out[task] = mcnemar(v["base"], v["treated"], **common)
        else:
            out[task] = paired_bootstrap_diff(
                [100 * x for x in v["base"]], [100 * x for x in v["treated"]], **common
            )
    return out


def compare(pairs: Sequence[ArmPair], compare_cfg, store: Store) -> StageResult:
    """Paired differences (+NEFT minus base) of each measure, pooled over the seeds in `pairs`."""
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
        from pipeline.metrics.stats import lc_diff_ci, paired_bootstrap_diff, winrate_diff_ci

        v = _aligned(pairs)
        b, t = v["base"], v["treated"]
        common = dict(seed=compare_cfg.seed, level=compare_cfg.level, power=POWER)
        metrics = {
            "win_rate": winrate_diff_ci(
                [r["preference"] for r in b["scored"]],
                [r["preference"] for r in t["scored"]],
                compare_cfg.resamples,
                **common,
            ),
            "lc_win_rate": lc_diff_ci(b["scored"], t["scored"], compare_cfg.lc_resamples, **common),
        }
        for name in ("chars", "words", "log_diversity"):
            if all(x is None for x in b[name]) or all(x is None for x in t[name]):
                metrics[name] = None  # e.g. no answer reached the diversity cutoff K
                continue
            metrics[name] = paired_bootstrap_diff(b[name], t[name], compare_cfg.resamples, **common)
        if all("openllm" in getattr(pair, side) for pair in pairs for side in SIDES):
            metrics["openllm"] = _openllm(pairs, compare_cfg)
        metrics["n_seeds"] = len(pairs)
        metrics["n_prompts"] = len(b["scored"]) // len(pairs)
        metrics["n_log_diversity_kept"] = {
            side: sum(x is not None for x in v[side]["log_diversity"]) for side in v
        }
        return metrics

    return store.materialize(key, compute, config=params)
