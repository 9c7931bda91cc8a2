"""Uncertainty for base-vs-NEFT comparisons and judge calibration: seeded, reproducible.

Bootstraps resample prompts (percentile intervals, scipy.stats.bootstrap). A paired comparison
resamples the SAME prompt indices for both arms, through one bootstrap over prompt indices.
None (or NaN) marks an item an arm does not have (an output shorter than K has no log-diversity,
an unparsed verdict has no preference): each resample averages the non-missing items of each arm
separately, as the point estimate does (the same rule as alpaca_eval's get_winrate, which drops
non-preferences).

"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable

import numpy as np
from scipy.stats import DegenerateDataWarning, binomtest, bootstrap, norm

from pipeline.metrics.glm import annotation_frame, fit_minimal_design, minimal_glm_design

STATISTICS = {"mean": np.nanmean, "median": np.nanmedian}


def detectable_effect(se: float, level: float = 0.95, power: float = 0.8) -> float:
    """(z_{1-a/2} + z_power) x se: the least true difference a `level` test finds w.p. `power`."""
    return float((norm.ppf(0.5 + level / 2) + norm.ppf(power)) * se)


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _ci_over_indices(
    n: int, fn: Callable, n_resamples: int, seed: int, level: float, vectorized: bool
) -> tuple[float, float, float]:
    """Percentile CI of fn(indices) over bootstrap resamples of range(n) (pairs stay together),
    and the SD of those resamples (the bootstrap standard error).

    Resamples where fn is undefined (NaN: an arm with no non-missing item, which only happens
    with a handful of items) are left out of the percentiles."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 items, got {n}")
    with warnings.catch_warnings():  # undefined resamples: handled below, not worth a warning
        for category in (RuntimeWarning, DegenerateDataWarning):
            warnings.simplefilter("ignore", category)
        res = bootstrap(
            (np.arange(n),),
            fn,
            n_resamples=n_resamples,
            confidence_level=level,
            method="percentile",
            vectorized=vectorized,
            rng=np.random.default_rng(seed),
        )
    tail = 100 * (1 - level) / 2  # what scipy's percentile method takes, NaN-aware
    low, high = np.nanpercentile(res.bootstrap_distribution, [tail, 100 - tail])
    return float(low), float(high), float(np.nanstd(res.bootstrap_distribution, ddof=1))


def bootstrap_mean_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of `values` (None/NaN ignored) with a percentile-bootstrap CI: mean, ci_low, ci_high,
    n (non-missing values), n_resamples, level."""
    x = _floats(values)
    x = x[~np.isnan(x)]
    low, high, _ = _ci_over_indices(
        len(x), lambda i, axis=-1: x[i].mean(axis=axis), n_resamples, seed, level, vectorized=True
    )
    return {
        "mean": float(x.mean()),
        "ci_low": low,
        "ci_high": high,
        "n": len(x),
        "n_resamples": n_resamples,
        "level": level,
    }


def paired_bootstrap_diff(
    base,
    treated,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    statistic: str = "mean",
    power: float | None = None,
) -> dict:
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
    return {
        "diff": float(stat(t) - stat(b)),
        "ci_low": low,
        "ci_high": high,
        "n": len(b),
        "n_base": int((~np.isnan(b)).sum()),
        "n_treated": int((~np.isnan(t)).sum()),
        "n_resamples": n_resamples,
        "level": level,
        "excludes_zero": bool(low > 0 or high < 0),
        **_power(se, level, power),
    }


def _power(se: float, level: float, power: float | None) -> dict:
    # Only when asked: the judge-calibration stage's stored outputs keep their keys.
    return (
        {}
        if power is None
        else {"se": se, "mde": detectable_effect(se, level, power), "power": power}
    )


def win_scores(prefs) -> np.ndarray:
    """Per-prompt win score in percent: alpaca_eval preference p -> 100 (p - 1); 0 -> tie."""
    p = _floats(prefs)
    p[p == 0] = 1.5  # alpaca_eval's legacy tie code
    return 100.0 * (p - 1.0)


def winrate_diff_ci(
    prefs_base,
    prefs_treated,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    power: float | None = None,
) -> dict:
    """Win-rate difference (points) of two arms judged on the same prompts, paired bootstrap CI;
    keys as paired_bootstrap_diff; diff equals the difference of alpaca_eval's win rates."""
    return paired_bootstrap_diff(
        win_scores(prefs_base), win_scores(prefs_treated), n_resamples, seed, level, power=power
    )


def _lc_arrays(annotations) -> dict:
    df = annotation_frame(annotations)
    return {
        "instruction": df["instruction"].tolist() if "instruction" in df else None,
        "pref": _floats(df["preference"]),
        "len_1": df["output_1"].str.len().to_numpy(),
        "len_2": df["output_2"].str.len().to_numpy(),
    }


def lc_diff_ci(
    ann_base,
    ann_treated,
    n_resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
    power: float | None = None,
) -> dict:
    """Minimal-GLM LC win-rate difference (points), treated - base, with a paired bootstrap CI.

    Each arm's LC is alpaca_eval's length_controlled_minimal GLM (cross-validated C); each
    resample refits both arms on the same resampled prompts at the C cross-validation chose on
    all prompts, on design rows built once (as lc_bootstrap_se). On AlpacaEval 1 GPT-4 verdicts
    the interval is wide (about +-8 to 15 points): the length coefficient is itself uncertain.
    Annotations must be on the same prompts in the same order. Keys as paired_bootstrap_diff."""
    base, treated = _lc_arrays(ann_base), _lc_arrays(ann_treated)
    if len(base["pref"]) != len(treated["pref"]):
        raise ValueError(
            f"paired arms differ in length: {len(base['pref'])} vs {len(treated['pref'])}"
        )
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
    return {
        "diff": lc_t - lc_b,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "n_resamples": n_resamples,
        "level": level,
        "excludes_zero": bool(low > 0 or high < 0),
        **_power(se, level, power),
    }


def mcnemar(
    correct_base,
    correct_treated,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    power: float | None = None,
) -> dict:
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
    ci = paired_bootstrap_diff(100.0 * base, 100.0 * treated, n_resamples, seed, level, power=power)
    return {"b": b, "c": c, "p_value": float(p), **ci}


def pooled_over_seeds(values_per_seed) -> dict:
    """mean, sd (ddof=1; None with one seed) and n_seeds of one metric over training seeds, from a
    list of values or a {seed: value} mapping."""
    values = list(
        values_per_seed.values() if isinstance(values_per_seed, dict) else values_per_seed
    )
    if not values:
        raise ValueError("pooled_over_seeds needs at least one seed's value")
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "sd": sd, "n_seeds": len(values)}
