"""Uncertainty for base-vs-NEFT comparisons and judge calibration: seeded, reproducible.

Bootstraps resample prompts (percentile intervals, scipy.stats.bootstrap). A paired comparison
resamples the SAME prompt indices for both arms, through one bootstrap over prompt indices.
None (or NaN) marks an item an arm does not have (an output shorter than K has no log-diversity,
an unparsed verdict has no preference): each resample averages the non-missing items of each arm
separately, as the point estimate does (the same rule as alpaca_eval's get_winrate, which drops
non-preferences).

Judge agreement follows alpaca_eval's Analyzer (alpaca_eval.analyze.Analyzer, default
scoring_rule="absolute" = alpaca_eval.metrics.helpers.AbsoluteScoringRule): per pair, agreement
= 1 - |judge - reference| on the 1..2 preference scale, so a tie against a decided verdict counts
one half, a tie against a tie one, and the legacy 0 means a tie (1.5).
"""

from __future__ import annotations

import statistics
import warnings
from typing import Callable

import numpy as np
from scipy.stats import DegenerateDataWarning, binomtest, bootstrap, norm

STATISTICS = {"mean": np.nanmean, "median": np.nanmedian}
CHANCE = 50.0  # a coin-flip judge's expected agreement under the absolute rule, whatever the mix


def detectable_effect(se: float, level: float = 0.95, power: float = 0.8) -> float:
    """(z_{1-a/2} + z_power) x se: the least true difference a `level` test finds w.p. `power`."""
    return float((norm.ppf(0.5 + level / 2) + norm.ppf(power)) * se)


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _ci_over_indices(n: int, fn: Callable, n_resamples: int, seed: int, level: float,
                     vectorized: bool) -> tuple[float, float, float]:
    """Percentile CI of fn(indices) over bootstrap resamples of range(n) (pairs stay together),
    and the SD of those resamples (the bootstrap standard error).

    Resamples where fn is undefined (NaN: an arm with no non-missing item, which only happens
    with a handful of items) are left out of the percentiles."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 items, got {n}")
    with warnings.catch_warnings():  # undefined resamples: handled below, not worth a warning
        for category in (RuntimeWarning, DegenerateDataWarning):
            warnings.simplefilter("ignore", category)
        res = bootstrap((np.arange(n),), fn, n_resamples=n_resamples, confidence_level=level,
                        method="percentile", vectorized=vectorized,
                        rng=np.random.default_rng(seed))
    tail = 100 * (1 - level) / 2  # what scipy's percentile method takes, NaN-aware
    low, high = np.nanpercentile(res.bootstrap_distribution, [tail, 100 - tail])
    return float(low), float(high), float(np.nanstd(res.bootstrap_distribution, ddof=1))


def bootstrap_mean_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of `values` (None/NaN ignored) with a percentile-bootstrap CI: mean, ci_low, ci_high,
    n (non-missing values), n_resamples, level."""
    x = _floats(values)
    x = x[~np.isnan(x)]
    low, high, _ = _ci_over_indices(len(x), lambda i, axis=-1: x[i].mean(axis=axis),
                                 n_resamples, seed, level, vectorized=True)
    return {"mean": float(x.mean()), "ci_low": low, "ci_high": high, "n": len(x),
            "n_resamples": n_resamples, "level": level}


def paired_bootstrap_diff(base, treated, n_resamples: int = 2000, seed: int = 0,
                          level: float = 0.95, statistic: str = "mean",
                          power: float | None = None) -> dict:
    """statistic(treated) - statistic(base) over the same prompts, with a paired bootstrap CI.

    `base` and `treated` are aligned by prompt; None marks a missing item (see module doc).
    Returns diff, ci_low, ci_high, n (prompts), n_base and n_treated (prompts with a value in
    each arm), n_resamples, level, excludes_zero; with `power`, also se (SD of the resampled
    differences), mde (detectable_effect of se) and power."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r}: use one of {tuple(STATISTICS)}")
    b, t = _floats(base), _floats(treated)
    if len(b) != len(t):
        raise ValueError(f"paired arms differ in length: {len(b)} base vs {len(t)} treated")
    if np.isnan(b).all() or np.isnan(t).all():
        raise ValueError("an arm has no non-missing value")
    stat = STATISTICS[statistic]

    def diff(idx, axis=-1):
        return stat(t[idx], axis=axis) - stat(b[idx], axis=axis)

    low, high, se = _ci_over_indices(len(b), diff, n_resamples, seed, level, vectorized=True)
    return {"diff": float(stat(t) - stat(b)), "ci_low": low, "ci_high": high, "n": len(b),
            "n_base": int((~np.isnan(b)).sum()), "n_treated": int((~np.isnan(t)).sum()),
            "n_resamples": n_resamples, "level": level, "excludes_zero": bool(low > 0 or high < 0),
            **_power(se, level, power)}


def _power(se: float, level: float, power: float | None) -> dict:
    # Only when asked: the judge-calibration stage's stored outputs keep their keys.
    return {} if power is None else {"se": se, "mde": detectable_effect(se, level, power),
                                     "power": power}


def win_scores(prefs) -> np.ndarray:
    """Per-prompt win score in percent: alpaca_eval preference p -> 100 (p - 1); 0 -> tie."""
    p = _floats(prefs)
    p[p == 0] = 1.5  # alpaca_eval's legacy tie code
    return 100.0 * (p - 1.0)


def winrate_diff_ci(prefs_base, prefs_treated, n_resamples: int = 2000, seed: int = 0,
                    level: float = 0.95, power: float | None = None) -> dict:
    """Win-rate difference (points) of two arms judged on the same prompts, paired bootstrap CI;
    keys as paired_bootstrap_diff; diff equals the difference of alpaca_eval's win rates."""
    return paired_bootstrap_diff(win_scores(prefs_base), win_scores(prefs_treated),
                                 n_resamples, seed, level, power=power)


def _lc_arrays(annotations) -> dict:
    from pipeline.core.winrate import annotation_frame

    df = annotation_frame(annotations)
    return {"instruction": df["instruction"].tolist() if "instruction" in df else None,
            "pref": _floats(df["preference"]), "len_1": df["output_1"].str.len().to_numpy(),
            "len_2": df["output_2"].str.len().to_numpy()}


def lc_diff_ci(ann_base, ann_treated, n_resamples: int = 200, seed: int = 0,
               level: float = 0.95, power: float | None = None) -> dict:
    """Minimal-GLM LC win-rate difference (points), treated - base, with a paired bootstrap CI.

    Each arm's LC is alpaca_eval's length_controlled_minimal GLM (cross-validated C); each
    resample refits both arms on the same resampled prompts at the C cross-validation chose on
    all prompts, on design rows built once (as lc_bootstrap_se). On AlpacaEval 1 GPT-4 verdicts
    the interval is wide (about +-8 to 15 points): the length coefficient is itself uncertain.
    Annotations must be on the same prompts in the same order. Keys as paired_bootstrap_diff."""
    from pipeline.core.winrate import fit_minimal_design, minimal_glm_design

    base, treated = _lc_arrays(ann_base), _lc_arrays(ann_treated)
    if len(base["pref"]) != len(treated["pref"]):
        raise ValueError(f"paired arms differ in length: {len(base['pref'])} vs "
                         f"{len(treated['pref'])}")
    names = base["instruction"], treated["instruction"]
    if names[0] and names[1] and names[0] != names[1]:
        raise ValueError("paired annotations must list the same instructions in the same order")
    designs = [minimal_glm_design(a["pref"], a["len_1"], a["len_2"]) for a in (base, treated)]
    (lc_b, c_b), (lc_t, c_t) = (fit_minimal_design(*d) for d in designs)

    def lc(design, chosen, idx):
        x_train, x_test = design
        if not np.isfinite(chosen):  # unanimous on all prompts: unanimous on any resample
            return fit_minimal_design(x_train, x_test)[0]
        return fit_minimal_design(x_train.iloc[idx], x_test, C=chosen)[0]

    def diff(idx):
        return lc(designs[1], c_t, idx) - lc(designs[0], c_b, idx)

    n = len(base["pref"])
    low, high, se = _ci_over_indices(n, diff, n_resamples, seed, level, vectorized=False)
    return {"diff": lc_t - lc_b, "ci_low": low, "ci_high": high, "n": n,
            "n_resamples": n_resamples, "level": level, "excludes_zero": bool(low > 0 or high < 0),
            **_power(se, level, power)}


def lc_bootstrap_se(x_train, x_test, chosen: float, n_resamples: int = 100,
                    seed: int = 0) -> float:
    """Standard error (points) of the minimal-GLM LC win rate: the SD of its refits on bootstrap
    resamples of the design rows (winrate.minimal_glm_design), each at the C cross-validation
    chose on all pairs (milliseconds a fit, not a CV each). alpaca_eval's own formula (sem of the
    per-instruction predictions) is 0 for this GLM, whose prediction is one constant."""
    from pipeline.core.winrate import fit_minimal_design

    if not np.isfinite(chosen):
        return 0.0  # unanimous verdicts: every resample is unanimous too
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(n_resamples):  # rows of alpaca_eval's design, built once on all pairs
        rows = x_train.iloc[rng.integers(0, len(x_train), len(x_train))]
        fits.append(fit_minimal_design(rows, x_test, C=chosen)[0])
    return float(np.std(fits, ddof=1))


def mcnemar(correct_base, correct_treated, n_resamples: int = 2000, seed: int = 0,
            level: float = 0.95, power: float | None = None) -> dict:
    """Exact McNemar test and paired bootstrap CI for paired accuracies (e.g. lm-eval items).

    b = items only base gets right, c = items only treated gets right; p_value is the two-sided
    exact binomial test of c out of b + c at 1/2 (1.0 with no discordant pair). diff is the
    accuracy difference in points. Returns b, c, p_value, diff, ci_low, ci_high, n, n_resamples,
    level, excludes_zero."""
    base = np.asarray(correct_base, dtype=bool)
    treated = np.asarray(correct_treated, dtype=bool)
    if base.shape != treated.shape:
        raise ValueError(f"paired arms differ in length: {base.shape} vs {treated.shape}")
    b, c = int((base & ~treated).sum()), int((~base & treated).sum())
    p = binomtest(c, b + c, 0.5).pvalue if b + c else 1.0
    ci = paired_bootstrap_diff(100.0 * base, 100.0 * treated, n_resamples, seed, level,
                               power=power)
    return {"b": b, "c": c, "p_value": float(p), **ci}


def pooled_over_seeds(values_per_seed) -> dict:
    """mean, sd (ddof=1; None with one seed) and n_seeds of one metric over training seeds, from a
    list of values or a {seed: value} mapping."""
    values = list(values_per_seed.values() if isinstance(values_per_seed, dict)
                  else values_per_seed)
    if not values:
        raise ValueError("pooled_over_seeds needs at least one seed's value")
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "sd": sd, "n_seeds": len(values)}


def _prefs(values) -> np.ndarray:
    return win_scores(values) / 100.0 + 1.0  # 0 (alpaca_eval's legacy tie code) -> 1.5


def _agreement(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    # alpaca_eval's AbsoluteScoringRule per pair, in percent
    return 100.0 * (1.0 - np.abs(prediction - target))


def length_rule(lengths_1, lengths_2) -> np.ndarray:
    """Verdicts of a judge that only reads lengths: the longer output wins, a tie when equal
    (alpaca_eval's `_get_longest_predictor` gives equal lengths to output_2; a tie is fairer)."""
    l1, l2 = np.asarray(lengths_1, dtype=float), np.asarray(lengths_2, dtype=float)
    return np.where(l2 > l1, 2.0, np.where(l1 > l2, 1.0, 1.5))


def judge_agreement(judge_prefs, reference_prefs, lengths_1, lengths_2, seed: int = 0,
                    n_resamples: int = 2000, level: float = 0.95) -> dict:
    """How well a judge's verdicts match reference verdicts (e.g. GPT-4's or humans') on the same
    pairs, beside a length-only judge and chance, in percent.

    Agreement per pair is alpaca_eval's Analyzer convention (AbsoluteScoringRule, see module doc).
    Pairs where either verdict is missing are dropped. chance_level is the best a judge that
    ignores the outputs can expect: 50 (a coin flip) or a constant verdict on this reference mix,
    whichever is higher. Returns n, n_dropped, accuracy and length_baseline (bootstrap_mean_ci
    dicts), chance_level, judge_minus_length (paired_bootstrap_diff dict), verdicts
    (is_informative) and tie_convention."""
    j, r = _prefs(judge_prefs), _prefs(reference_prefs)
    rule = length_rule(lengths_1, lengths_2)
    if not len(j) == len(r) == len(rule):
        raise ValueError(f"judge, reference and lengths differ in length: {len(j)}, {len(r)}, "
                         f"{len(rule)}")
    keep = ~np.isnan(j) & ~np.isnan(r)
    j, r, rule = j[keep], r[keep], rule[keep]
    agree, length_agree = _agreement(j, r), _agreement(rule, r)
    constant = max(float(_agreement(np.full_like(r, c), r).mean()) for c in (1.0, 1.5, 2.0))
    accuracy = bootstrap_mean_ci(agree, n_resamples, seed, level)
    length = bootstrap_mean_ci(length_agree, n_resamples, seed, level)
    chance = max(CHANCE, constant)
    return {"n": int(keep.sum()), "n_dropped": int((~keep).sum()), "accuracy": accuracy,
            "length_baseline": length, "chance_level": chance,
            "judge_minus_length": paired_bootstrap_diff(length_agree, agree, n_resamples, seed,
                                                        level),
            "verdicts": is_informative(accuracy, length, chance),
            "tie_convention": "alpaca_eval Analyzer, scoring_rule='absolute' "
                              "(metrics.helpers.AbsoluteScoringRule): 1 - |judge - reference|"}


def position_consistency(forward_prefs, backward_prefs, n_resamples: int = 2000, seed: int = 0,
                         level: float = 0.95) -> dict:
    """Share (percent, bootstrap CI) of pairs where the judge picks the same OUTPUT in both orders.

    backward_prefs judge the swapped pair (output_1 and output_2 exchanged). A pick is output_1,
    output_2 or a tie (preference below, above or at 1.5); pairs with a missing verdict are
    dropped. Returns bootstrap_mean_ci's keys plus n_dropped."""
    f, b = _prefs(forward_prefs), _prefs(backward_prefs)
    if len(f) != len(b):
        raise ValueError(f"forward and backward verdicts differ in length: {len(f)} vs {len(b)}")
    keep = ~np.isnan(f) & ~np.isnan(b)
    # the backward verdict, flipped back to the forward order, is 3 - b
    same = np.sign(f[keep] - 1.5) == np.sign((3.0 - b[keep]) - 1.5)
    return {**bootstrap_mean_ci(100.0 * same, n_resamples, seed, level),
            "n_dropped": int((~keep).sum())}


def is_informative(accuracy: dict, length_baseline: dict, chance_level: float = CHANCE) -> dict:
    """Plain-words verdicts on a judge from its agreement CI (bootstrap_mean_ci dicts, percent).

    Not distinguishable from chance: the CI reaches chance_level. Not better than the length rule:
    the CI reaches the length rule's point estimate. Returns better_than_chance,
    better_than_length, informative (both) and the sentences chance_verdict, length_verdict."""
    low, high = accuracy["ci_low"], accuracy["ci_high"]
    ci = f"agreement {accuracy['mean']:.1f}% (CI {low:.1f} to {high:.1f}, n={accuracy['n']})"
    beats_chance, beats_length = low > chance_level, low > length_baseline["mean"]
    level = f"the chance level {chance_level:.1f}%"
    if beats_chance:
        chance = f"distinguishable from chance: {ci} lies above {level}"
    elif high < chance_level:
        chance = f"worse than chance: {ci} lies below {level}"
    else:
        chance = f"not distinguishable from chance: {ci} includes {level}"
    rule = f"the length rule ('the longer answer wins', {length_baseline['mean']:.1f}%)"
    if beats_length:
        length = f"better than {rule}: {ci} lies above it"
    else:
        length = f"not better than {rule}: {ci} reaches down to it or lower"
    return {"better_than_chance": bool(beats_chance), "better_than_length": bool(beats_length),
            "informative": bool(beats_chance and beats_length), "chance_verdict": chance,
            "length_verdict": length}
