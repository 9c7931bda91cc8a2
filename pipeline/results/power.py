"""What a null result can and cannot say: the detectable effect of a paired difference and the
number of prompts that would detect the paper's own effect.

A difference of the compare stage carries `se`, the SD of its paired bootstrap resamples, and
`mde` = (z_{1-a/2} + z_power) x se: the smallest true difference this design (its prompts, seeds,
pairing and judge) would find with probability `power` by a test at the report's level. Points
computed before the compare stage recorded `se` get it from the width of their percentile CI,
(high - low) / (2 z_{1-a/2}), which is what a normal bootstrap distribution would give, and
say so. The standard error of a mean over prompts shrinks as 1/sqrt(n), so `n` prompts at the
same seeds detect an effect `delta` when n = n_now x (mde / delta)^2.
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
TABLE4_ROWS = {"chars": "characters", "words": "whitespace tokens",
               "log_diversity": "log-diversity"}
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


def prompts_to_detect(n_prompts: int, mde: float, effect: float) -> int | None:
    """Prompts (at the same seeds) whose detectable effect is |effect|; None if mde is 0."""
    if mde <= 0 or effect == 0:
        return None
    return max(2, math.ceil(n_prompts * (mde / abs(effect)) ** 2))


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


def null_words(d: dict, unit: str, digits: int, n_prompts: int, n_seeds: int,
               paper: tuple[float, str] | None, power: float = POWER) -> str:
    """What a CI that includes zero leaves possible, in words: the detectable effect of this
    design and how many prompts would detect the paper's effect."""
    mde = detectable(d, power)
    level = round(100 * d.get("level", 0.95))
    if mde <= 0:
        return ("every resample gave the same difference (no item on which the arms differ), so "
                "this design's detectable effect cannot be estimated from it")
    source = "" if d.get("se") is not None else ", se from the CI width"
    text = (f"it could detect changes of ±{mde:.{digits}f} {unit} or more ({power:.0%} power at "
            f"the {level}% level{source})").replace("  ", " ")
    if paper is None:
        return text
    effect, where = paper
    need = prompts_to_detect(n_prompts, mde, effect)
    seeds = f" x {n_seeds} seeds" if n_seeds > 1 else ""
    size = f"{effect:+.{digits}f} {unit}".strip()
    if need is None:
        return text
    if need <= n_prompts:
        beyond = d["ci_high"] < effect if effect > 0 else d["ci_low"] > effect
        return (f"{text}; these {n_prompts} prompts{seeds} would detect the paper's {size} "
                f"({where})" + ("; the CI excludes it" if beyond else ""))
    return f"{text}; about {need} prompts{seeds} would detect the paper's {size} ({where})"
