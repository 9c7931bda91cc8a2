"""alpaca_eval stage: win rate of a generate stage's outputs against a reference, judged through
the alpaca-eval package (its annotators, its caching, its win-rate maths).

The judges themselves are in pipeline/judging/judges.py (conf/judge/).

Writes annotations.json (alpaca_eval's cache: every verdict; a rerun never re-asks a judged pair),
scored.json (one preference per instruction, what the win rate is computed from),
leaderboard.csv and metrics.json (raw win rate and the length-controlled one: length_controlled_v1
when judge.lc_data names alpaca_eval's instruction-difficulty file, else the minimal GLM, labelled).

Run: python -m pipeline.run            (judge=local against the shipped reference answers)
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.loading import load_prompts
from pipeline.judging.judges import (
    Reference,
    annotator,
    check_references,
    judge_key_params,
    judge_pairs,
    load_reference,
    pairs_against,
    validate_judge,
)
from pipeline.metrics.glm import MIN_PAIRS
from pipeline.stages.contract import Call, Context
from pipeline.store.store import StageResult, Store, readable_of, stage_key, write_json_atomic

VERSION = 3  # 2: an LC win rate on every judged comparison; 3: with a standard error


def check(cfg) -> None:
    """Cheap: the judge can run (kind, version, API key), the reference file is readable and has
    an answer for every prompt (a prompt without one must not be found after training)."""
    validate_judge(cfg.judge)
    reference = load_reference(cfg.generate.reference)
    prompts = cfg.generate.prompts
    if not prompts.startswith("hf:"):
        limit = cfg.generate.limit if (cfg.generate.limit or 0) > 0 else None
        rows = load_prompts(prompts, cfg.generate.dataset_name, limit)
        check_references(rows, reference, f"generate.prompts={prompts!r}", cfg.generate.reference)
        # Every judged comparison has its LC win rate, whose GLM alpaca_eval cross-validates
        # with 5 folds: fewer pairs fail there, after training and generating.
        if len(rows) < MIN_PAIRS:
            said = (
                f"generate.limit={cfg.generate.limit}"
                if limit is not None
                else f"generate.prompts={prompts!r}"
            )
            raise ValueError(
                f"{said}: {len(rows)} prompts are judged, and the length-controlled win rate "
                f"needs at least {MIN_PAIRS}; give at least {MIN_PAIRS} prompts (generate.limit "
                f">= {MIN_PAIRS} or null)"
            )


def run(cfg, ctx: Context, call: Call) -> StageResult:
    """Plan entry: judge the chain's generate stage against `call.reference` (or the reference)."""
    reference = call.reference or load_reference(cfg.generate.reference)
    return alpaca_eval_stage(call.upstream["generate"], reference, cfg.judge, ctx.store, ctx.cache)


def alpaca_eval_stage(
    generated: StageResult, reference: Reference, judge_cfg, store: Store, cache: Store
) -> StageResult:
    """Win rate of `generated`'s outputs.json against `reference` under `judge_cfg`."""
    validate_judge(judge_cfg)
    params = judge_key_params(judge_cfg)
    label = f"{readable_of(generated.key)}_vs_{reference.label}_{judge_cfg.name}"
    key = stage_key("alpaca_eval", label, params, [generated.key, reference.key], VERSION)

    def compute(work: Path) -> dict:
        import pandas as pd

        from pipeline.metrics.winrate import length_controlled, winrate_metrics

        outputs = json.loads((generated.path / "outputs.json").read_text(encoding="utf-8"))
        pairs = pairs_against(outputs, reference, str(generated.path / "outputs.json"))
        scored = judge_pairs(annotator(judge_cfg, work, cache), pairs, judge_cfg.both_orders)
        write_json_atomic(work / "scored.json", scored)
        metrics = winrate_metrics(scored)
        metrics["avg_length"] = sum(len(o["output"]) for o in outputs) / len(outputs)
        metrics.update(length_controlled(scored, judge_cfg.lc_data))
        row = {
            "name": outputs[0]["generator"],
            "reference": reference.label,
            "judge": judge_cfg.name,
            **metrics,
        }
        pd.DataFrame([row]).to_csv(work / "leaderboard.csv", index=False)
        return metrics

    # resumable: the verdict cache survives a crash
    return store.materialize(key, compute, resumable=True, config=params)
