"""What a null result can and cannot say: the detectable effect of a paired difference and the
number of prompts that would detect the paper's own effect.

A difference of the compare stage carries `se`, the SD of its paired bootstrap resamples, and
`mde` = (z_{1-a/2} + z_power) x se: the smallest true difference this design (its prompts, seeds,
pairing and judge) would find with probability `power` by a test at the report's level. Points
computed before the compare stage recorded `se` get it from the width of their percentile CI,
(high - low) / (2 z_{1-a/2}), which is what a normal bootstrap distribution would give, and
say so. The standard error of a mean over prompts shrinks as 1/sqrt(n), so `n` prompts at the
same seeds detect an effect `delta` when n = n_now x (mde / delta)^2. Over several seeds only the
prompt part of se (`se_prompts`) shrinks with prompts; the between-seed part needs more seeds, and
where it alone exceeds what `delta` allows, no number of prompts will do.

Where the arms agree on every item, every resample gives the same difference and se is 0: the
design's spread is unknown. What it can still say is its floor, the least difference n paired
items can show at all: an exact two-sided McNemar (sign) test needs d discordant items, all one
way, with 2 x 0.5^d <= alpha (d = 6 at the 5% level: 0.031, where 5 gives 0.063), so a measure
on which one item moves the difference by at most `step` (100 points for an accuracy or a win
score) cannot show less than d/n x step; n < d items cannot show any change at that level.
"""

from __future__ import annotations

import math

import yaml
from scipy.stats import norm

from pipeline.data.loading import ASSETS
from pipeline.metrics.stats import detectable_effect

POWER = 0.8  # as the compare stage's (compare.POWER); a config key (compare.power) to be
# The paper's datasets, as point.dataset names them, and their column of Table 4.
TABLE4_COLUMN = {"alpaca": 0, "evol-instruct": 1, "sharegpt": 2, "open-platypus": 3}
TABLE4_ROWS = {
    "chars": "characters",
    "words": "whitespace tokens",
    "log_diversity": "log-diversity",
}
DEFAULT_DATASET = "alpaca"  # a dataset the paper did not use is compared with its Alpaca effect


def standard_error(d: dict) -> tuple[float, str]:
    """(se, where it came from) of one difference dict of the compare stage."""
    if d.get("se") is not None:
        return float(d["se"]), "bootstrap SD"
    z = norm.ppf(0.5 + d.get("level", 0.95) / 2)
    return (d["ci_high"] - d["ci_low"]) / (2 * z), "CI width"


def detectable(d: dict, power: float = POWER) -> float:
    """The detectable effect of one difference at its level (its `mde`, or from its CI)."""
    if d.get("mde") is not None and d.get("power", power) == power:
        return float(d["mde"])
    return detectable_effect(standard_error(d)[0], d.get("level", 0.95), power)


def prompts_to_detect(
    n_prompts: int, mde: float, effect: float, seed_share: float = 0.0
) -> int | float | None:
    """Prompts (at the same seeds) whose detectable effect is |effect|; None if mde is 0.

    `seed_share`: the part of se^2 that is between-seed variance (prompts do not shrink it);
    math.inf where that part alone keeps the detectable effect above |effect|."""
    if mde <= 0 or effect == 0:
        return None
    ratio = (mde / abs(effect)) ** 2  # se^2 over the se^2 that detects `effect`
    if seed_share * ratio >= 1:
        return math.inf
    return max(2, math.ceil(n_prompts * (1 - seed_share) * ratio / (1 - seed_share * ratio)))


def seed_share(d: dict) -> float:
    """The between-seed part of a difference's se^2 (0 with one seed)."""
    se, prompts = d.get("se"), d.get("se_prompts")
    if not se or prompts is None:
        return 0.0
    return max(0.0, 1.0 - (prompts / se) ** 2)


def min_discordant(level: float = 0.95) -> int:
    """The fewest discordant items, all one way, an exact two-sided McNemar test rejects at
    1 - level: the least d with 2 x 0.5^d <= alpha."""
    alpha = 1 - level
    d = 1
    while 2 * 0.5**d > alpha * (1 + 1e-12):  # tolerance: alpha from 1 - level is inexact
        d += 1
    return d


def design_floor(n_items: int, level: float, step: float) -> float | None:
    """The least difference n paired items can show at all (module doc), in the unit in which
    one item moves the difference by at most `step`; None where n is too few to show any."""
    d = min_discordant(level)
    return None if n_items < d else d / n_items * step


def floor_words(
    n_items: int, level: float, unit: str, digits: int, n_seeds: int, item_step: float | None
) -> str:
    """What a design whose arms agree on every item can still say: its floor, in words."""
    d, alpha = min_discordant(level), f"{100 * (1 - level):g}%"
    where = " in every seed" if n_seeds > 1 else ""
    text = f"the arms agree on all {n_items} items{where}, so the spread of this design is unknown"
    if n_items < d:
        return (
            f"{text}; {n_items} items cannot show any change at the {alpha} level: an exact "
            f"test needs {d} items that differ, all one way"
        )
    if item_step is None:  # a continuous measure: no least size, only a least count
        return (
            f"{text}; its floor: at least {d} of the {n_items} items must differ, all the "
            f"same way, for an exact sign test at the {alpha} level to show a change"
        )
    floor = design_floor(n_items, level, item_step)
    return (
        (
            f"{text}; its floor: an exact McNemar test at the {alpha} level needs at least {d} "
            f"items that differ, all one way, so {n_items} items cannot show a change under "
            f"{d}/{n_items} = {floor:.{digits}f} {unit}"
        )
        .replace("  ", " ")
        .rstrip()
    )


def default_paper() -> dict:
    """The shipped paper numbers (pipeline/assets/paper_numbers.yaml)."""
    return yaml.safe_load((ASSETS / "paper_numbers.yaml").read_text(encoding="utf-8"))


def paper_effect(paper: dict, dataset: str, measure: str) -> tuple[float, str] | None:
    """(+NEFT minus base, where it is from) of LLaMA-2-7B in the paper for one compare measure:
    Table 1 for the raw win rate, Table 4 for lengths and log-diversity; None where the paper
    reports none (the LC win rate, lm-eval tasks)."""
    name = dataset if dataset in TABLE4_COLUMN else DEFAULT_DATASET
    label = name if name == dataset else f"{name}; the paper has no {dataset}"
    if measure == "win_rate":
        row = (paper.get("table1") or {}).get(name)
        if not row:
            return None
        return row["neft"] - row["base"], f"Table 1, {label}"
    if measure in TABLE4_ROWS:
        t4, col, row = paper.get("table4") or {}, TABLE4_COLUMN[name], TABLE4_ROWS[measure]
        base, neft = t4.get(f"base, {row}"), t4.get(f"+NEFT, {row}")
        if not base or not neft:
            return None
        return neft[col] - base[col], f"Table 4, {label}"
    return None


def null_words(
    d: dict,
    unit: str,
    digits: int,
    n_prompts: int,
    n_seeds: int,
    paper: tuple[float, str] | None,
    power: float = POWER,
    item_step: float | None = None,
) -> str:
    """What a CI that includes zero leaves possible, in words: the detectable effect of this
    design and how many prompts would detect the paper's effect; where the arms agree on every
    item, the design's floor (`item_step`: the most one item moves the difference, e.g. 100
    points for an accuracy; None for a continuous measure)."""
    mde = detectable(d, power)
    level = round(100 * d.get("level", 0.95))
    if mde <= 0:
        return floor_words(n_prompts, d.get("level", 0.95), unit, digits, n_seeds, item_step)
    source = "" if d.get("se") is not None else ", se from the CI width"
    text = (
        f"it could detect changes of ±{mde:.{digits}f} {unit} or more ({power:.0%} power at "
        f"the {level}% level{source})"
    ).replace("  ", " ")
    if paper is None:
        return text
    effect, where = paper
    need = prompts_to_detect(n_prompts, mde, effect, seed_share(d))
    seeds = f" x {n_seeds} seeds" if n_seeds > 1 else ""
    size = f"{effect:+.{digits}f} {unit}".strip()
    if need is None:
        return text
    if need == math.inf:
        return (
            f"{text}; no number of prompts at these {n_seeds} seeds would detect the paper's "
            f"{size} ({where}): the between-seed variance alone is too large; more seeds "
            "would"
        )
    if need <= n_prompts:
        beyond = d["ci_high"] < effect if effect > 0 else d["ci_low"] > effect
        return (
            f"{text}; these {n_prompts} prompts{seeds} would detect the paper's {size} "
            f"({where})" + ("; the CI excludes it" if beyond else "")
        )
    return f"{text}; about {need} prompts{seeds} would detect the paper's {size} ({where})"
