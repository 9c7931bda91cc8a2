"""The dose-response finding across noise strengths: its slope, its paired-bootstrap CI (checked
against the closed form), its fallback on committed points without their store, its figure."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.metrics.stats import paired_bootstrap_diff, winrate_diff_ci
from pipeline.results.points import Arm, Effect, Point, StageRef, read_points
from pipeline.results.trend import BOOTSTRAP, SUMMARY, families, trend_lines, trends

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = (5.0, 10.0, 15.0)


def _arm(store: Path, name: str, alpha: float, chars, prefs) -> Arm:
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
        key = f"{stage}-{name}-000000000000"
        (store / key).mkdir(parents=True)
        file = "per_output.json" if stage == "analysis" else "scored.json"
        (store / key / file).write_text(json.dumps(data))
        stages[stage] = StageRef(key, {"n_total": len(chars)})
    noise = (
        {"kind": "none"}
        if alpha == 0
        else {"kind": "uniform", "alpha": alpha, "length": "per_example"}
    )
    return Arm(name, alpha == 0, 42, noise, stages)


def _family(tmp_path: Path, n: int = 80):
    rng = np.random.default_rng(0)
    prompt = rng.normal(300, 100, n)  # each prompt's own length: shared by every arm
    chars = {a: prompt + 4.0 * a + rng.normal(0, 30, n) for a in (0.0,) + ALPHAS}
    prefs = {a: rng.choice([1.0, 1.5, 2.0], n) for a in chars}
    store = tmp_path / "store"
    base = _arm(store, "base", 0.0, chars[0.0], prefs[0.0])
    points = []
    for a in ALPHAS:
        treated = _arm(store, f"neft{a:g}", a, chars[a], prefs[a])
        metrics = {
            "chars": paired_bootstrap_diff(chars[0.0], chars[a], 2000, power=0.8),
            "win_rate": winrate_diff_ci(prefs[0.0], prefs[a], 2000, power=0.8),
            "log_diversity": None,
            "n_prompts": n,
            "n_seeds": 1,
        }
        effect = Effect(
            treated.name,
            "base",
            [42],
            {"compare": StageRef(f"compare-neft{a:g}-000000000000", metrics)},
        )
        points.append(
            Point(
                f"point-{a:g}",
                None,
                "grid",
                str(store),
                "m",
                "d",
                "j",
                "r",
                {"lora": False},
                [base, treated],
                effects=[effect],
                config={
                    "compare": {"resamples": 2000, "seed": 0, "level": 0.95, "lc_resamples": 20}
                },
            )
        )
    return points, chars


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
