"""The paired bootstrap of a dose-response slope (pipeline/results/trend.py), from the per-prompt
files of the stage directories a family's points name: the analysis stages' per_output.json
(characters, log-diversity per answer) and the alpaca_eval stages' scored.json (one verdict per
prompt), seed s of every arm paired with seed s of the baseline and the seeds' prompts pooled, as
the compare stage pools them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from pipeline.metrics.stats import win_scores
from pipeline.results.points import Arm, Point

STAGE = {"chars": "analysis", "log_diversity": "analysis", "win_rate": "alpaca_eval",
         "lc_win_rate": "alpaca_eval"}
FILE = {"analysis": "per_output.json", "alpaca_eval": "scored.json"}


def _read(point: Point, arm: Arm, stage: str):
    if stage not in arm.stages:
        return None
    path = Path(point.stage_path(arm.stages[stage].key)) / FILE[stage]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _arm_values(point: Point, arms: list[Arm], measure: str):
    """Per-prompt values of one arm, seeds pooled in seed order; None if a file is missing."""
    out = []
    for arm in sorted(arms, key=lambda a: a.seed):
        data = _read(point, arm, STAGE[measure])
        if data is None:
            return None
        if STAGE[measure] == "analysis":
            out += data[measure]
        else:
            out += data  # scored records: instruction, output_1, output_2, preference
    return out


def _per_arm(family, measure: str):
    """[values of the baseline, then of each dose], or None where any is not readable here or
    the arms are not on the same prompts and seeds."""
    first = family.point
    arms = [(first, first.baseline)] + [(p, p.arms_named(e.arm)) for _, p, e in family.doses]
    seeds = [sorted(a.seed for a in group) for _, group in arms]
    if any(s != seeds[0] for s in seeds):
        return None
    values = [_arm_values(p, group, measure) for p, group in arms]
    if any(v is None for v in values) or len({len(v) for v in values}) != 1:
        return None
    if STAGE[measure] == "alpaca_eval":
        prompts = [[r["instruction"] for r in v] for v in values]
        if any(p != prompts[0] for p in prompts):
            return None
    return values


def _stat_matrix(values, measure: str, idx: np.ndarray, lc_resamples: int) -> np.ndarray:
    """(resamples, arms) statistic of each arm on each resample of prompt indices `idx`."""
    if measure == "lc_win_rate":
        return _lc_matrix(values, idx[:lc_resamples])
    if measure == "win_rate":
        rows = [win_scores([r["preference"] for r in v]) for v in values]
    else:
        rows = [np.array([np.nan if x is None else float(x) for x in v]) for v in values]
    with warnings.catch_warnings():  # a resample without a value: NaN, dropped by the caller
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([np.nanmean(r[idx], axis=-1) for r in rows], axis=1)


def _lc_matrix(values, idx: np.ndarray) -> np.ndarray:
    """Minimal-GLM LC of each arm on each resample, each arm at the C its cross-validation chose
    on all prompts (as stats.lc_diff_ci)."""
    from pipeline.metrics.glm import annotation_frame, fit_minimal_design, minimal_glm_design

    columns = []
    for records in values:
        df = annotation_frame(records)
        x_train, x_test = minimal_glm_design(df["preference"].astype(float).to_numpy(),
                                             df["output_1"].str.len().to_numpy(),
                                             df["output_2"].str.len().to_numpy())
        chosen = fit_minimal_design(x_train, x_test)[1]
        if not np.isfinite(chosen):  # unanimous on all prompts: unanimous on every resample
            columns.append(np.full(len(idx), fit_minimal_design(x_train, x_test)[0]))
            continue
        columns.append([fit_minimal_design(x_train.iloc[i], x_test, C=chosen)[0] for i in idx])
    return np.array(columns, dtype=float).T


def bootstrap_slope(family, measure: str, alphas: list[float], cfg: dict):
    """(ci_low, ci_high, se, share of resamples monotone in the direction of `slope`) of the
    least-squares slope on alpha, paired bootstrap over prompts; None if the per-prompt files
    are not readable here."""
    values = _per_arm(family, measure)
    if values is None:
        return None
    n = len(values[0])
    idx = np.random.default_rng(cfg["seed"]).integers(0, n, (cfg["resamples"], n))
    a = np.asarray(alphas, dtype=float)
    w = (a - a.mean()) / ((a - a.mean()) ** 2).sum()  # least-squares slope = w @ arm values
    stats = _stat_matrix(values, measure, idx, cfg["lc_resamples"])
    stats = stats[~np.isnan(stats).any(axis=1)]
    slopes = stats @ w
    tail = 100 * (1 - cfg["level"]) / 2
    low, high = np.percentile(slopes, [tail, 100 - tail])
    steps = np.diff(stats, axis=1)
    rising = float(np.mean(np.all(steps >= 0, axis=1)))
    falling = float(np.mean(np.all(steps <= 0, axis=1)))
    return float(low), float(high), float(np.std(slopes, ddof=1)), (rising, falling)
