"""Dose-response: how each measure moves with the noise strength alpha, in any experiment with two
or more strengths of one noise kind against one baseline (sweep=alpha_grid; the paper's Table 6).

A family is every effect of the experiment's points whose noise has one kind and length rule and
whose baseline is the same judged and analysed stages. Its trend per measure is the least-squares
slope of the arms' values on alpha (the baseline at alpha 0), per unit alpha: w @ values with
w = (a - mean a) / sum (a - mean a)^2, so it is also w[1:] @ the compare stages' differences
(the baseline's difference is 0). Its CI, as the compare stage makes a difference's:
- one training seed: a paired bootstrap over prompts (the baseline shared): each resample draws
  one set of prompt indices and recomputes every arm's mean (or LC refit) on it; percentile CI;
- several seeds: the prompts of one seed share one trained model, so they are not independent
  rows (pooling them, as this module did before, left out the variance between training runs
  and narrowed as seeds were added). Each seed's own slope (its arms against its baseline), the
  same prompt draws for every seed and arm where the seeds were judged on the same prompts, and
  pipeline/metrics/stats.py's seed_interval of those per-seed slopes: between-seed plus prompt
  variance, t with Satterthwaite df;
- where the stage directories are not in this store (committed points without their store): a
  normal approximation from each dose's difference and its standard error (seed-aware where the
  compare stage made it so; then t at the smallest df of the differences), with the prompt
  effect removed by the pairing and the remaining per-arm noise split so that the baseline
  carries half of the smallest arm's variance (arms independent given the prompt), labelled.
The per-prompt values come from the stage directories the points name: the analysis stages'
per_output.json (characters, log-diversity per answer) and the alpaca_eval stages' scored.json
(one verdict per prompt), seed s of every arm beside seed s of the baseline.
Monotone: the arms' point estimates never fall (or never rise) as alpha grows; with one seed's
bootstrap also the share of resamples where that holds (with several seeds no such share: one of
prompt resamples would leave the seeds out).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from pipeline.metrics.stats import detectable_effect, seed_interval, win_scores
from pipeline.results.cells import Cell, Table
from pipeline.results.points import Arm, Effect, Point
from pipeline.results.power import POWER, standard_error

MEASURES = (  # (compare metric, what it is, unit, digits)
    ("chars", "mean answer length", "characters", 1),
    ("log_diversity", "log-diversity (Table-4 arithmetic)", "", 2),
    ("win_rate", "win rate vs the reference", "points", 1),
    ("lc_win_rate", "length-controlled win rate", "points", 1),
)
BOOTSTRAP = "paired bootstrap over prompts, baseline shared"
SEEDS_BOOTSTRAP = (
    "per-seed slopes, one prompt bootstrap shared by the seeds: between-seed and prompt "
    "variance, t with Satterthwaite df"
)
SUMMARY = (
    "normal approximation from each arm's CI against the baseline (the stage directories "
    "with the per-prompt values are not in this store)"
)
# Where a measure's per-prompt values are: the stage of each arm and its file.
STAGE = {
    "chars": "analysis",
    "log_diversity": "analysis",
    "win_rate": "alpaca_eval",
    "lc_win_rate": "alpaca_eval",
}
FILE = {"analysis": "per_output.json", "alpaca_eval": "scored.json"}


@dataclass(eq=False)
class Family:
    """Effects of one noise kind at two or more strengths against one baseline."""

    kind: str
    length: str
    point: Point  # the first point of the family: model, dataset, judge, baseline arms
    doses: list[tuple[float, Point, Effect]] = field(default_factory=list)  # sorted by alpha

    @property
    def label(self) -> str:
        alphas = "/".join(f"{a:g}" for a, _, _ in self.doses)
        return f"{self.kind} noise ({self.length}), alpha {alphas} vs base"


@dataclass
class Trend:
    """One measure's slope on alpha, its CI and whether it is monotone."""

    measure: str
    alphas: list[float]  # the baseline's 0 first
    diffs: list[dict]  # the compare stage's difference of each dose (alphas[1:])
    slope: float
    ci_low: float
    ci_high: float
    se: float
    level: float
    n: int  # prompts (per seed)
    n_seeds: int
    df: float | None  # of the t quantile (several seeds); None: normal
    method: str
    monotone: str  # increasing, decreasing, flat, not monotone
    monotone_share: float | None
    keys: list[str]

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def mde(self) -> float:
        return detectable_effect(self.se, self.level, POWER, self.df)


@dataclass(frozen=True)
class SlopeInterval:
    """The CI of a slope from the per-prompt files (bootstrap_slope)."""

    ci_low: float
    ci_high: float
    se: float
    df: float | None
    method: str  # BOOTSTRAP (one seed) or SEEDS_BOOTSTRAP
    rising: float | None  # share of resamples whose arms never fall with alpha (one seed)
    falling: float | None


def families(points: list[Point]) -> list[Family]:
    """The dose-response families of an experiment (two or more alphas), in a stable order."""
    groups: dict[tuple, Family] = {}
    for p in points:
        baseline = tuple(
            sorted(
                a.stages[s].key
                for a in p.baseline
                for s in ("alpaca_eval", "analysis")
                if s in a.stages
            )
        )
        for e in p.effects:
            arms = p.arms_named(e.arm)
            if not arms or "alpha" not in arms[0].noise or "compare" not in e.stages:
                continue
            noise = arms[0].noise
            group = (noise["kind"], noise.get("length"), p.model, p.dataset, p.judge, baseline)
            family = groups.setdefault(group, Family(noise["kind"], noise.get("length"), p))
            if float(noise["alpha"]) not in [a for a, _, _ in family.doses]:
                family.doses.append((float(noise["alpha"]), p, e))
    out = [f for f in groups.values() if len(f.doses) >= 2]
    for f in out:
        f.doses.sort(key=lambda d: d[0])
    return out


def _monotone(values) -> str:
    steps = np.diff(np.asarray(values, dtype=float))
    if np.all(steps == 0):
        return "flat"
    if np.all(steps >= 0):
        return "increasing"
    if np.all(steps <= 0):
        return "decreasing"
    return "not monotone"


def _weights(alphas) -> np.ndarray:
    a = np.asarray(alphas, dtype=float)
    return (a - a.mean()) / ((a - a.mean()) ** 2).sum()  # OLS slope = weights @ values


# --- the per-prompt values of a family, seed by seed ---


def _read(point: Point, arm: Arm, stage: str):
    if stage not in arm.stages:
        return None
    path = Path(point.stage_path(arm.stages[stage].key)) / FILE[stage]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _seed_values(point: Point, arms: list[Arm], measure: str) -> list[list] | None:
    """Per-prompt values of one arm, one list per seed in seed order; None if a file is
    missing. Verdicts are scored records: instruction, output_1, output_2, preference."""
    out = []
    for arm in sorted(arms, key=lambda a: a.seed):
        data = _read(point, arm, STAGE[measure])
        if data is None:
            return None
        out.append(data[measure] if STAGE[measure] == "analysis" else data)
    return out


@dataclass(frozen=True)
class FamilyValues:
    """Per seed (in seed order), per arm (the baseline, then each dose), the per-prompt values."""

    by_seed: list[list[list]]
    shared_prompts: bool  # every seed judged the same prompts in the same order


def _family_values(family: Family, measure: str) -> FamilyValues | None:
    """The family's per-prompt values, or None where any is not readable here or the arms are
    not on the same seeds and, seed by seed, the same prompts."""
    first = family.point
    groups = [(first, first.baseline)] + [(p, p.arms_named(e.arm)) for _, p, e in family.doses]
    seeds = [sorted(a.seed for a in group) for _, group in groups]
    if any(s != seeds[0] for s in seeds):
        return None
    per_arm = [_seed_values(p, group, measure) for p, group in groups]
    if any(v is None for v in per_arm):
        return None
    by_seed = [[arm[s] for arm in per_arm] for s in range(len(seeds[0]))]
    if any(len({len(v) for v in arms}) != 1 for arms in by_seed):
        return None
    shared = len({len(arms[0]) for arms in by_seed}) == 1
    if STAGE[measure] == "alpaca_eval":
        prompts = [[[r["instruction"] for r in v] for v in arms] for arms in by_seed]
        if any(p != arms[0] for arms in prompts for p in arms):
            return None
        shared = all(arms[0] == prompts[0][0] for arms in prompts)
    return FamilyValues(by_seed, shared)


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
        x_train, x_test = minimal_glm_design(
            df["preference"].astype(float).to_numpy(),
            df["output_1"].str.len().to_numpy(),
            df["output_2"].str.len().to_numpy(),
        )
        chosen = fit_minimal_design(x_train, x_test)[1]
        if not np.isfinite(chosen):  # unanimous on all prompts: unanimous on every resample
            columns.append(np.full(len(idx), fit_minimal_design(x_train, x_test)[0]))
            continue
        columns.append([fit_minimal_design(x_train.iloc[i], x_test, C=chosen)[0] for i in idx])
    return np.array(columns, dtype=float).T


def bootstrap_slope(family: Family, measure: str, alphas: list[float], cfg: dict):
    """The SlopeInterval of the least-squares slope on alpha from the per-prompt files (module
    doc: one seed, a paired bootstrap over prompts; several, seed_interval of the per-seed
    slopes); None if the files are not readable here."""
    values = _family_values(family, measure)
    if values is None:
        return None
    w = _weights(alphas)
    rng = np.random.default_rng(cfg["seed"])
    sizes = [len(arms[0]) for arms in values.by_seed]
    if len(sizes) == 1:
        (n,) = sizes
        idx = rng.integers(0, n, (cfg["resamples"], n))
        stats = _stat_matrix(values.by_seed[0], measure, idx, cfg["lc_resamples"])
        stats = stats[~np.isnan(stats).any(axis=1)]
        slopes = stats @ w
        tail = 100 * (1 - cfg["level"]) / 2
        low, high = np.percentile(slopes, [tail, 100 - tail])
        steps = np.diff(stats, axis=1)
        rising = float(np.mean(np.all(steps >= 0, axis=1)))
        falling = float(np.mean(np.all(steps <= 0, axis=1)))
        se = float(np.std(slopes, ddof=1))
        return SlopeInterval(float(low), float(high), se, None, BOOTSTRAP, rising, falling)
    # Several seeds: the same prompt draws for every seed where they share the prompts (as
    # stats.paired_diff_seeds draws them), each seed its own otherwise.
    if values.shared_prompts:
        draws = [rng.integers(0, sizes[0], (cfg["resamples"], sizes[0]))] * len(sizes)
    else:
        draws = [rng.integers(0, n, (cfg["resamples"], n)) for n in sizes]
    replicates = np.stack(
        [
            _stat_matrix(arms, measure, idx, cfg["lc_resamples"]) @ w
            for arms, idx in zip(values.by_seed, draws)
        ],
        axis=1,
    )
    per_seed = [
        float(_stat_matrix(arms, measure, np.arange(n)[None, :], 1)[0] @ w)
        for arms, n in zip(values.by_seed, sizes)
    ]
    out = seed_interval(per_seed, replicates, min(sizes), len(replicates), cfg["level"])
    return SlopeInterval(
        out["ci_low"], out["ci_high"], out["se"], out["df"], SEEDS_BOOTSTRAP, None, None
    )


# --- the trend of a family ---


def _summary(diffs: list[dict], w: np.ndarray) -> float:
    """SE of the slope from each dose's difference alone (module doc: the baseline carries half
    of the smallest difference's variance, each arm the rest of its own)."""
    var = np.array([standard_error(d)[0] ** 2 for d in diffs])
    base = var.min() / 2
    return float(np.sqrt(w[0] ** 2 * base + (w[1:] ** 2 * (var - base)).sum()))


def _cfg(point: Point) -> dict:
    c = point.config.get("compare") or {}
    return {
        "resamples": int(c.get("resamples", 2000)),
        "lc_resamples": int(c.get("lc_resamples", 200)),
        "seed": int(c.get("seed", 0)),
        "level": float(c.get("level", 0.95)),
    }


def _prompts_and_seeds(d: dict, seeds: list[int]) -> tuple[int, int]:
    """(prompts per seed, seeds) of one compare difference: version 4 says n_seeds and counts n
    per seed; version 3 pooled the seeds' prompts into n."""
    if d.get("n_seeds"):
        return int(d["n"]), int(d["n_seeds"])
    k = max(len(seeds), 1)
    return int(d["n"]) // k, k


def _trend(family: Family, measure: str) -> Trend | None:
    diffs = [e.stages["compare"].metrics.get(measure) for _, _, e in family.doses]
    if any(not d for d in diffs):
        return None
    alphas = [0.0] + [a for a, _, _ in family.doses]
    cfg = _cfg(family.point)
    w = _weights(alphas)
    # The point estimate from the compare stages' differences: the baseline's value is their 0.
    # With several seeds each difference is the mean of the per-seed ones, so this is also the
    # mean of the per-seed slopes.
    slope = float(w[1:] @ np.array([d["diff"] for d in diffs]))
    monotone = _monotone([0.0] + [d["diff"] for d in diffs])
    n, n_seeds = _prompts_and_seeds(diffs[0], family.doses[0][2].seeds)
    boot = bootstrap_slope(family, measure, alphas, cfg)
    if boot is None:
        se, method, share = _summary(diffs, w), SUMMARY, None
        dfs = [d["df"] for d in diffs if d.get("df") is not None]
        df = min(dfs) if dfs else None  # the least-known difference sets the quantile
        q = (
            norm.ppf(0.5 + cfg["level"] / 2)
            if df is None
            else student_t.ppf(0.5 + cfg["level"] / 2, df)
        )
        low, high = slope - q * se, slope + q * se
    elif boot.method == BOOTSTRAP:
        low, high, se, df, method = boot.ci_low, boot.ci_high, boot.se, None, BOOTSTRAP
        share = {"increasing": boot.rising, "decreasing": boot.falling}.get(monotone)
    else:  # seed_interval's half-width about the compare stages' slope (its mean of seeds)
        q = student_t.ppf(0.5 + cfg["level"] / 2, math.inf if boot.df is None else boot.df)
        se, df, method, share = boot.se, boot.df, boot.method, None
        low, high = slope - q * se, slope + q * se
    return Trend(
        measure=measure,
        alphas=alphas,
        diffs=diffs,
        slope=slope,
        ci_low=float(low),
        ci_high=float(high),
        se=se,
        level=cfg["level"],
        n=n,
        n_seeds=n_seeds,
        df=df,
        method=method,
        monotone=monotone,
        monotone_share=share,
        keys=[e.stages["compare"].key for _, _, e in family.doses],
    )


_CACHE: dict[tuple, list[Trend]] = {}


def trends(family: Family) -> list[Trend]:
    """The family's trend on every measure its compare stages have (computed once a process)."""
    key = (family.point.store, tuple(e.stages["compare"].key for _, _, e in family.doses))
    if key not in _CACHE:
        _CACHE[key] = [t for m, *_ in MEASURES if (t := _trend(family, m)) is not None]
    return _CACHE[key]


# --- words and the table ---


def _sample(t: Trend) -> str:
    return f"{t.n} prompts" + (f" x {t.n_seeds} seeds" if t.n_seeds > 1 else "")


def describe(t: Trend) -> str:
    """One trend in words: slope per unit alpha, CI, what it says, the doses, monotone."""
    _, what, unit, digits = next(m for m in MEASURES if m[0] == t.measure)
    d = digits + 1  # a slope per unit alpha is a tenth of a typical step
    per = f"{unit} per unit alpha".strip()
    text = (
        f"{what}: {t.slope:+.{d}f} {per} (95% CI {t.ci_low:+.{d}f} to {t.ci_high:+.{d}f}, "
        f"n={_sample(t)}, {t.method})"
    )
    if t.excludes_zero:
        text += f"; the CI excludes zero: it {'grows' if t.slope > 0 else 'falls'} with alpha"
    elif t.se <= 0:
        text += "; every resample gave the same slope: no trend these data can show"
    else:
        text += (
            f"; the CI includes zero: no trend this study can detect; it could detect slopes "
            f"of ±{t.mde:.{d}f} {per} or more ({POWER:.0%} power)"
        )
    steps = ", ".join(f"{a:g}: {x['diff']:+.{digits}f}" for a, x in zip(t.alphas[1:], t.diffs))
    share = (
        ""
        if t.monotone_share is None
        else f" (so in {100 * t.monotone_share:.0f}% of the resamples)"
    )
    return f"{text}; vs base at alpha {steps}; {t.monotone}{share}"


def trend_lines(points: list[Point]) -> list[str]:
    """Markdown lines of the Findings block's dose-response findings (none without a family)."""
    md = []
    for f in families(points):
        p = f.point
        md.append(
            f"- **Dose-response, {f.label}** — {p.model} on {p.dataset}, judge {p.judge}: "
            "least-squares slope of each measure on alpha"
        )
        md += [f"  - {describe(t)}. [{', '.join(f'`{k}`' for k in t.keys)}]" for t in trends(f)]
    return md


def _ci_cell(d: dict, key: str, digits: int) -> Cell:
    text = f"{d['diff']:+.{digits}f} ({d['ci_low']:+.{digits}f} to {d['ci_high']:+.{digits}f})"
    return Cell(text, (key,))


CI_METHOD = {
    BOOTSTRAP: "paired bootstrap",
    SEEDS_BOOTSTRAP: "seed-aware",
    SUMMARY: "normal approx.",
}


def trend_table(points: list[Point], paper: dict) -> Table:
    """The dose-response table: per family and measure, each strength's difference from the
    baseline, the slope per unit alpha with its CI, monotone or not, and how the CI was made."""
    fams = families(points)
    alphas = sorted({a for f in fams for a, _, _ in f.doses})
    caption = (
        "Dose-response — each measure's difference from the shared noise-off baseline at "
        "every noise strength (compare stage, 95% CI), and the least-squares slope on alpha "
        "per unit alpha with its 95% CI; paper: Table 6 (uniform alpha 5, 10, 15 vs "
        "Gaussian 5) and Table 3 (alpha 5, 10, 15) give win rates per alpha, no slope."
    )
    if not fams:
        caption += (
            " No noise kind of this experiment has two or more strengths against one "
            "baseline (run sweep=alpha_grid for one)."
        )
    header = (
        ["noise", "measure"]
        + [f"alpha {a:g}" for a in alphas]
        + ["slope per unit alpha (95% CI)", "monotone", "CI method", "n prompts"]
    )
    rows = []
    for f in fams:
        for t in trends(f):
            _, what, unit, digits = next(m for m in MEASURES if m[0] == t.measure)
            by_alpha = {a: (d, e.stages["compare"].key) for (a, _, e), d in zip(f.doses, t.diffs)}
            cells = [_ci_cell(*by_alpha[a], digits) if a in by_alpha else "–" for a in alphas]
            share = "" if t.monotone_share is None else f" ({100 * t.monotone_share:.0f}%)"
            rows.append(
                [
                    f.label,
                    f"{what} ({unit})" if unit else what,
                    *cells,
                    f"{t.slope:+.{digits + 1}f} ({t.ci_low:+.{digits + 1}f} to "
                    f"{t.ci_high:+.{digits + 1}f})",
                    t.monotone + share,
                    CI_METHOD[t.method],
                    str(t.n) if t.n_seeds == 1 else f"{t.n} x {t.n_seeds} seeds",
                ]
            )
    return Table("dose_response", caption, header, rows)
