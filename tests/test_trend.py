"""The dose-response finding across noise strengths: its slope, its paired-bootstrap CI (checked
against the closed form), its fallback on committed points without their store, its figure."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.metrics.stats import (
    paired_bootstrap_diff,
    paired_diff_seeds,
    seed_interval,
    winrate_diff_ci,
    winrate_diff_seeds,
)
from pipeline.results.points import Arm, Effect, Point, StageRef, read_points
from pipeline.results.trend import (
    BOOTSTRAP,
    SEEDS_BOOTSTRAP,
    SUMMARY,
    families,
    trend_lines,
    trends,
)

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = (5.0, 10.0, 15.0)


def _arm(store: Path, name: str, alpha: float, seed: int, chars, prefs) -> Arm:
    stages = {}
    for stage, data in (
        ("analysis", {"chars": list(chars), "log_diversity": [None] * len(chars)}),
        (
            "alpaca_eval",
            [
                {"instruction": f"q{i}", "output_1": "r", "output_2": "x" * int(c), "preference": p}
                for i, (c, p) in enumerate(zip(chars, prefs))
            ],
        ),
    ):
        key = f"{stage}-{name}-s{seed}-000000000000"
        (store / key).mkdir(parents=True)
        file = "per_output.json" if stage == "analysis" else "scored.json"
        (store / key / file).write_text(json.dumps(data))
        stages[stage] = StageRef(key=key, metrics={"n_total": len(chars)})
    noise = (
        {"kind": "none"}
        if alpha == 0
        else {"kind": "uniform", "alpha": alpha, "length": "per_example"}
    )
    return Arm(name=name, baseline=alpha == 0, seed=seed, noise=noise, stages=stages)


def _family(tmp_path: Path, n: int = 80, seeds: dict[int, float] | None = None):
    """Points of one alpha family on `n` shared prompts; `seeds`: each training seed's true
    slope of the answer length on alpha (characters per unit alpha). One seed (42, slope 4) is
    the compare stage's one-seed case; several give compare version 4's per-seed differences."""
    seeds = seeds or {42: 4.0}
    rng = np.random.default_rng(0)
    prompt = rng.normal(300, 100, n)  # each prompt's own length: shared by every arm and seed
    chars = {
        s: {a: prompt + slope * a + rng.normal(0, 30, n) for a in (0.0,) + ALPHAS}
        for s, slope in seeds.items()
    }
    prefs = {s: {a: rng.choice([1.0, 1.5, 2.0], n) for a in (0.0,) + ALPHAS} for s in seeds}
    store = tmp_path / "store"
    bases = [_arm(store, "base", 0.0, s, chars[s][0.0], prefs[s][0.0]) for s in seeds]
    one = len(seeds) == 1
    points = []
    for a in ALPHAS:
        treated = [_arm(store, f"neft{a:g}", a, s, chars[s][a], prefs[s][a]) for s in seeds]
        if one:  # compare version 3/4 with one seed: the paired bootstrap over prompts
            (s,) = seeds
            measures = {
                "chars": paired_bootstrap_diff(chars[s][0.0], chars[s][a], 2000, power=0.8),
                "win_rate": winrate_diff_ci(prefs[s][0.0], prefs[s][a], 2000, power=0.8),
            }
        else:  # compare version 4: per-seed differences, seed-aware intervals
            measures = {
                "chars": paired_diff_seeds(
                    [chars[s][0.0] for s in seeds], [chars[s][a] for s in seeds], 2000, power=0.8
                ),
                "win_rate": winrate_diff_seeds(
                    [prefs[s][0.0] for s in seeds], [prefs[s][a] for s in seeds], 2000, power=0.8
                ),
            }
        metrics = {**measures, "log_diversity": None, "n_prompts": n, "n_seeds": len(seeds)}
        effect = Effect(
            arm=treated[0].name,
            baseline="base",
            seeds=list(seeds),
            stages={"compare": StageRef(key=f"compare-neft{a:g}-000000000000", metrics=metrics)},
        )
        points.append(
            Point(
                id=f"point-{a:g}",
                name=None,
                experiment="grid",
                store=str(store),
                model="m",
                dataset="d",
                judge="j",
                reference="r",
                setting={"lora": False},
                arms=[*bases, *treated],
                effects=[effect],
                config={
                    "compare": {"resamples": 2000, "seed": 0, "level": 0.95, "lc_resamples": 20}
                },
            )
        )
    return points, (chars[42] if one else chars)


def test_slope_and_its_paired_bootstrap_ci_match_the_closed_form(tmp_path):
    points, chars = _family(tmp_path)
    (family,) = families(points)
    assert [a for a, _, _ in family.doses] == list(ALPHAS)
    t = next(t for t in trends(family) if t.measure == "chars")
    a = np.array((0.0,) + ALPHAS)
    w = (a - a.mean()) / ((a - a.mean()) ** 2).sum()
    per_prompt = np.stack([chars[x] for x in a], axis=1) @ w  # each prompt's own slope
    assert t.method == BOOTSTRAP
    assert t.slope == pytest.approx(per_prompt.mean(), abs=1e-9)
    # a mean over prompts: its SE is sd / sqrt(n), the bootstrap's within a few percent
    assert t.se == pytest.approx(np.std(per_prompt, ddof=1) / math.sqrt(len(per_prompt)), rel=0.08)
    assert t.ci_low > 0 and t.excludes_zero and t.monotone == "increasing"
    assert t.monotone_share is not None and 0 < t.monotone_share <= 1
    text = "\n".join(trend_lines(points))
    assert "Dose-response, uniform noise (per_example), alpha 5/10/15 vs base" in text
    assert "mean answer length: +" in text and "it grows with alpha" in text


def test_one_strength_is_no_family(tmp_path):
    points, _ = _family(tmp_path)
    assert families(points[:1]) == [] and trend_lines(points[:1]) == []


def test_committed_alpha_grid_gives_a_length_slope_excluding_zero_without_its_store():
    points = read_points(ROOT / "results" / "default_all" / "points")
    (family,) = families(points)  # uniform 5/10/15 share the baseline; gaussian5 and LoRA don't
    assert [a for a, _, _ in family.doses] == [5.0, 10.0, 15.0]
    t = {t.measure: t for t in trends(family)}
    assert t["chars"].method == SUMMARY
    # 287.8 -> 316.2 -> 341.6 -> 349.3 characters: least squares over (0, 5, 10, 15)
    assert t["chars"].slope == pytest.approx(
        (-7.5 * -35.9 - 2.5 * -7.5 + 2.5 * 17.9 + 7.5 * 25.5) / 125, abs=0.02
    )
    assert t["chars"].ci_low > 0 and t["chars"].monotone == "increasing"
    assert not t["win_rate"].excludes_zero and t["win_rate"].monotone == "not monotone"


def test_the_alpha_grid_gets_the_trend_table_and_figure(tmp_path):
    from pipeline.results.cells import write_table
    from pipeline.results.figures import dose_response_figure
    from pipeline.results.registry import TABLES

    points, _ = _family(tmp_path)
    spec = next(s for s in TABLES if s.stem == "dose_response")
    assert spec.in_report and all(spec.covers(p) for p in points)
    table = spec.build(points, {})
    assert [r[1] for r in table.rows] == [
        "mean answer length (characters)",
        "win rate vs the reference (points)",
    ]
    assert table.rows[0][-3].startswith("increasing") and table.rows[0][-2] == "paired bootstrap"
    write_table(tmp_path, table)
    assert "compare-neft5-000000000000" in (tmp_path / "dose_response.md").read_text()
    assert dose_response_figure(points, tmp_path) == ["dose_response.png"]
    assert (tmp_path / "dose_response.png").stat().st_size > 1000
    assert dose_response_figure(points[:1], tmp_path / "none") == []


SEED_SLOPES = {1: 1.0, 2: 4.0, 3: 7.0}  # three training runs that disagree on the slope


def _per_prompt_slopes(chars: dict, seed: int) -> np.ndarray:
    a = np.array((0.0,) + ALPHAS)
    w = (a - a.mean()) / ((a - a.mean()) ** 2).sum()
    return np.stack([chars[seed][x] for x in a], axis=1) @ w


def test_several_seeds_count_the_seed_as_the_compare_stage_does(tmp_path):
    """Three seeds whose slopes disagree (1, 4, 7 characters per unit alpha): the interval is
    stats.seed_interval of the per-seed slopes (one prompt draw shared by every seed and arm),
    n is prompts per seed; pooling the seeds' prompts as independent rows gave an interval a
    fraction as wide, blind to the seeds' disagreement."""
    n = 60
    points, chars = _family(tmp_path, n=n, seeds=SEED_SLOPES)
    (family,) = families(points)
    t = next(t for t in trends(family) if t.measure == "chars")
    slopes = {s: _per_prompt_slopes(chars, s) for s in SEED_SLOPES}
    idx = np.random.default_rng(0).integers(0, n, (2000, n))  # compare.seed, compare.resamples
    replicates = np.stack([slopes[s][idx].mean(axis=1) for s in SEED_SLOPES], axis=1)
    want = seed_interval([slopes[s].mean() for s in SEED_SLOPES], replicates, n, 2000)
    assert t.method == SEEDS_BOOTSTRAP and (t.n, t.n_seeds) == (n, 3)
    assert t.slope == pytest.approx(want["diff"], abs=1e-9)
    assert (t.ci_low, t.ci_high) == pytest.approx((want["ci_low"], want["ci_high"]), abs=1e-9)
    assert t.se == pytest.approx(want["se"]) and t.df == pytest.approx(want["df"])
    # the seeds' spread is in it: at least the t interval of the three seed slopes alone
    pooled = np.concatenate(list(slopes.values()))
    spread = np.std([slopes[s].mean() for s in SEED_SLOPES], ddof=1) / math.sqrt(3)
    assert t.ci_high - t.ci_low > 2 * 4.30 * spread * 0.95  # t_2 = 4.30
    assert t.ci_high - t.ci_low > 3 * 2 * 1.96 * np.std(pooled, ddof=1) / math.sqrt(len(pooled))
    assert t.monotone_share is None  # a share of prompt resamples would leave the seeds out
    text = "\n".join(trend_lines(points))
    assert f"n={n} prompts x 3 seeds" in text


def test_several_seeds_without_their_store_use_t_at_the_differences_df(tmp_path):
    """Committed points without their store: the normal approximation from the compare stage's
    seed-aware differences, with the t quantile of their (smallest) degrees of freedom."""
    from scipy.stats import t as student_t

    points, _ = _family(tmp_path, n=60, seeds=SEED_SLOPES)
    for p in points:
        p.store = str(tmp_path / "elsewhere")
    (family,) = families(points)
    t = next(t for t in trends(family) if t.measure == "chars")
    diffs = [e.stages["compare"].metrics["chars"] for _, _, e in family.doses]
    df = min(d["df"] for d in diffs)
    assert t.method == SUMMARY and (t.n, t.n_seeds) == (60, 3) and t.df == pytest.approx(df)
    half = (t.ci_high - t.ci_low) / 2
    assert half == pytest.approx(student_t.ppf(0.975, df) * t.se)
