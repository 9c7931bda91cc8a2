"""Dose-response: how each measure moves with the noise strength alpha, in any experiment with two
or more strengths of one noise kind against one baseline (sweep=alpha_grid; the paper's Table 6).

A family is every effect of the experiment's points whose noise has one kind and length rule and
whose baseline is the same judged and analysed stages. Its trend per measure is the least-squares
slope of the arms' values on alpha (the baseline at alpha 0), per unit alpha, with a CI:
- paired bootstrap over prompts (the baseline shared): each resample draws one set of prompt
  indices and recomputes every arm's mean (or LC refit) on it, as the compare stage does for
  one pair; read from the per-prompt files of the stage directories the points name;
- where those directories are not in this store (committed points without their store): a
  normal approximation from each arm's difference and its standard error, with the prompt effect
  removed by the pairing and the remaining per-arm noise split so that the baseline carries half
  of the smallest arm's variance (arms independent given the prompt), labelled as such.
Monotone: the arms' point estimates never fall (or never rise) as alpha grows; with the bootstrap
also the share of resamples where that holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from pipeline.metrics.stats import detectable_effect
from pipeline.results.cells import Cell, Table
from pipeline.results.points import Effect, Point
from pipeline.results.power import POWER, standard_error
from pipeline.results.trend_data import bootstrap_slope

MEASURES = (  # (compare metric, what it is, unit, digits)
    ("chars", "mean answer length", "characters", 1),
    ("log_diversity", "log-diversity (Table-4 arithmetic)", "", 2),
    ("win_rate", "win rate vs the reference", "points", 1),
    ("lc_win_rate", "length-controlled win rate", "points", 1),
)
BOOTSTRAP = "paired bootstrap over prompts, baseline shared"
SUMMARY = ("normal approximation from each arm's CI against the baseline (the stage directories "
           "with the per-prompt values are not in this store)")


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
    n: int
    method: str
    monotone: str  # increasing, decreasing, flat, not monotone
    monotone_share: float | None
    keys: list[str]

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def mde(self) -> float:
        return detectable_effect(self.se, self.level, POWER)


def families(points: list[Point]) -> list[Family]:
    """The dose-response families of an experiment (two or more alphas), in a stable order."""
    groups: dict[tuple, Family] = {}
    for p in points:
        baseline = tuple(sorted(a.stages[s].key for a in p.baseline
                                for s in ("alpaca_eval", "analysis") if s in a.stages))
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


def _summary(diffs: list[dict], w: np.ndarray) -> float:
    """SE of the slope from each dose's difference alone (module doc: the baseline carries half
    of the smallest difference's variance, each arm the rest of its own)."""
    var = np.array([standard_error(d)[0] ** 2 for d in diffs])
    base = var.min() / 2
    return float(np.sqrt(w[0] ** 2 * base + (w[1:] ** 2 * (var - base)).sum()))


def _cfg(point: Point) -> dict:
    c = point.config.get("compare") or {}
    return {"resamples": int(c.get("resamples", 2000)), "lc_resamples": int(c.get("lc_resamples",
            200)), "seed": int(c.get("seed", 0)), "level": float(c.get("level", 0.95))}


def _trend(family: Family, measure: str) -> Trend | None:
    diffs = [e.stages["compare"].metrics.get(measure) for _, _, e in family.doses]
    if any(not d for d in diffs):
        return None
    alphas = [0.0] + [a for a, _, _ in family.doses]
    cfg = _cfg(family.point)
    w = _weights(alphas)
    # The point estimate from the compare stages' differences: the baseline's value is their 0.
    slope = float(w[1:] @ np.array([d["diff"] for d in diffs]))
    monotone = _monotone([0.0] + [d["diff"] for d in diffs])
    boot = bootstrap_slope(family, measure, alphas, cfg)
    if boot is None:
        se, method, share = _summary(diffs, w), SUMMARY, None
        z = norm.ppf(0.5 + cfg["level"] / 2)
        low, high = slope - z * se, slope + z * se
    else:
        low, high, se, (rising, falling) = boot
        method = BOOTSTRAP
        share = {"increasing": rising, "decreasing": falling}.get(monotone)
    return Trend(measure, alphas, diffs, slope, low, high, se, cfg["level"], diffs[0]["n"],
                 method, monotone, share, [e.stages["compare"].key for _, _, e in family.doses])


_CACHE: dict[tuple, list[Trend]] = {}


def trends(family: Family) -> list[Trend]:
    """The family's trend on every measure its compare stages have (computed once a process)."""
    key = (family.point.store, tuple(e.stages["compare"].key for _, _, e in family.doses))
    if key not in _CACHE:
        _CACHE[key] = [t for m, *_ in MEASURES if (t := _trend(family, m)) is not None]
    return _CACHE[key]


def describe(t: Trend) -> str:
    """One trend in words: slope per unit alpha, CI, what it says, the doses, monotone."""
    _, what, unit, digits = next(m for m in MEASURES if m[0] == t.measure)
    d = digits + 1  # a slope per unit alpha is a tenth of a typical step
    per = f"{unit} per unit alpha".strip()
    text = (f"{what}: {t.slope:+.{d}f} {per} (95% CI {t.ci_low:+.{d}f} to {t.ci_high:+.{d}f}, "
            f"n={t.n} prompts, {t.method})")
    if t.excludes_zero:
        text += f"; the CI excludes zero: it {'grows' if t.slope > 0 else 'falls'} with alpha"
    elif t.se <= 0:
        text += "; every resample gave the same slope: no trend these data can show"
    else:
        text += (f"; the CI includes zero: no trend this study can detect; it could detect slopes "
                 f"of ±{t.mde:.{d}f} {per} or more ({POWER:.0%} power)")
    steps = ", ".join(f"{a:g}: {x['diff']:+.{digits}f}" for a, x in zip(t.alphas[1:], t.diffs))
    share = ("" if t.monotone_share is None
             else f" (so in {100 * t.monotone_share:.0f}% of the resamples)")
    return f"{text}; vs base at alpha {steps}; {t.monotone}{share}"


def trend_lines(points: list[Point]) -> list[str]:
    """Markdown lines of the Findings block's dose-response findings (none without a family)."""
    md = []
    for f in families(points):
        p = f.point
        md.append(f"- **Dose-response, {f.label}** — {p.model} on {p.dataset}, judge {p.judge}: "
                  "least-squares slope of each measure on alpha")
        md += [f"  - {describe(t)}. [{', '.join(f'`{k}`' for k in t.keys)}]" for t in trends(f)]
    return md


def _ci_cell(d: dict, key: str, digits: int) -> Cell:
    text = f"{d['diff']:+.{digits}f} ({d['ci_low']:+.{digits}f} to {d['ci_high']:+.{digits}f})"
    return Cell(text, (key,))


def trend_table(points: list[Point], paper: dict) -> Table:
    """The dose-response table: per family and measure, each strength's difference from the
    baseline, the slope per unit alpha with its CI, monotone or not, and how the CI was made."""
    fams = families(points)
    alphas = sorted({a for f in fams for a, _, _ in f.doses})
    caption = ("Dose-response — each measure's difference from the shared noise-off baseline at "
               "every noise strength (compare stage, 95% CI), and the least-squares slope on alpha "
               "per unit alpha with its 95% CI; paper: Table 6 (uniform alpha 5, 10, 15 vs "
               "Gaussian 5) and Table 3 (alpha 5, 10, 15) give win rates per alpha, no slope.")
    if not fams:
        caption += (" No noise kind of this experiment has two or more strengths against one "
                    "baseline (run sweep=alpha_grid for one).")
    header = ["noise", "measure"] + [f"alpha {a:g}" for a in alphas] + [
        "slope per unit alpha (95% CI)", "monotone", "CI method", "n prompts"]
    rows = []
    for f in fams:
        for t in trends(f):
            _, what, unit, digits = next(m for m in MEASURES if m[0] == t.measure)
            by_alpha = {a: (d, e.stages["compare"].key)
                        for (a, _, e), d in zip(f.doses, t.diffs)}
            cells = [_ci_cell(*by_alpha[a], digits) if a in by_alpha else "–" for a in alphas]
            share = "" if t.monotone_share is None else f" ({100 * t.monotone_share:.0f}%)"
            rows.append([f.label, f"{what} ({unit})" if unit else what, *cells,
                         f"{t.slope:+.{digits + 1}f} ({t.ci_low:+.{digits + 1}f} to "
                         f"{t.ci_high:+.{digits + 1}f})", t.monotone + share,
                         "paired bootstrap" if t.method == BOOTSTRAP else "normal approx.",
                         str(t.n)])
    return Table("dose_response", caption, header, rows)
