"""The detectable effect beside every null: checked against the closed-form paired-mean and
paired-proportion calculations and, by simulation, against the power it claims."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from pipeline.metrics.stats import detectable_effect, paired_bootstrap_diff, winrate_diff_ci
from pipeline.results.power import (
    default_paper,
    design_floor,
    detectable,
    min_discordant,
    null_words,
    paper_effect,
    prompts_to_detect,
    standard_error,
)

Z = norm.ppf(0.975) + norm.ppf(0.8)  # 1.960 + 0.842


def test_detectable_effect_matches_the_closed_form_paired_mean():
    rng = np.random.default_rng(1)
    base = rng.normal(300, 80, 200)
    treated = base + rng.normal(10, 60, 200)  # paired: the prompt effect cancels
    d = paired_bootstrap_diff(base, treated, 4000, seed=0, power=0.8)
    closed = Z * np.std(treated - base, ddof=1) / math.sqrt(200)
    assert d["mde"] == pytest.approx(closed, rel=0.06)
    assert d["se"] == pytest.approx(closed / Z, rel=0.06) and d["power"] == 0.8
    # without power the stored outputs of other stages keep their keys
    assert "mde" not in paired_bootstrap_diff(base, treated, 1000, seed=0)


def test_detectable_win_rate_matches_the_paired_proportion_formula():
    # win/loss verdicts (no ties): the paired-proportion (McNemar-type) variance per prompt is
    # p10 + p01 - (p10 - p01)^2 on the 0/1 scale; in points x 100
    rng = np.random.default_rng(2)
    n = 300
    base = rng.choice([1.0, 2.0], n, p=[0.6, 0.4])
    treated = np.where(rng.random(n) < 0.3, 3.0 - base, base)  # 30% of verdicts flip
    d = winrate_diff_ci(base, treated, 4000, seed=0, power=0.8)
    p10 = np.mean((base == 2) & (treated == 1))
    p01 = np.mean((base == 1) & (treated == 2))
    closed = 100 * Z * math.sqrt((p10 + p01 - (p10 - p01) ** 2) / n)
    assert d["mde"] == pytest.approx(closed, rel=0.06)
    # and the n that detects the paper's +35 points is the closed-form sample size
    need = prompts_to_detect(n, d["mde"], 35.0)
    closed_n = Z**2 * (p10 + p01 - (p10 - p01) ** 2) / 0.35**2
    assert need == pytest.approx(closed_n, rel=0.15, abs=2)


def test_a_true_effect_of_the_detectable_size_is_detected_about_80_percent_of_the_time():
    rng = np.random.default_rng(3)
    n, sd = 60, 40.0
    mde = Z * sd / math.sqrt(n)  # the design's detectable effect (noise sd of the pair)
    detected = []
    for i in range(300):
        base = rng.normal(300, 80, n)
        treated = base + mde + rng.normal(0, sd, n)
        d = paired_bootstrap_diff(base, treated, 400, seed=i, power=0.8)
        detected.append(d["excludes_zero"])
    assert np.mean(detected) == pytest.approx(0.8, abs=0.07)


def test_old_points_get_the_se_from_their_ci_width():
    d = {"diff": 28.4, "ci_low": -13.6, "ci_high": 72.9, "n": 50, "level": 0.95}
    se, source = standard_error(d)
    assert se == pytest.approx(86.5 / 3.919928, rel=1e-6) and source == "CI width"
    assert detectable(d) == pytest.approx(detectable_effect(se))
    assert detectable({**d, "se": 10.0}) == pytest.approx(Z * 10.0)


def test_null_words_state_the_detectable_effect_and_the_prompts_for_the_papers_effect():
    paper = default_paper()
    assert paper_effect(paper, "alpaca", "win_rate")[0] == pytest.approx(64.69 - 29.79)
    assert paper_effect(paper, "default", "chars")[0] == pytest.approx(1061.89 - 375.22)
    assert paper_effect(paper, "sharegpt", "log_diversity")[0] == pytest.approx(0.20)
    assert paper_effect(paper, "alpaca", "lc_win_rate") is None
    d = {
        "diff": -1.0,
        "ci_low": -5.0,
        "ci_high": 3.0,
        "n": 50,
        "level": 0.95,
        "se": 2.0,
        "mde": Z * 2.0,
        "power": 0.8,
    }
    text = null_words(d, "points", 1, 50, 1, (4.0, "Table X"))
    need = math.ceil(50 * (Z * 2.0 / 4.0) ** 2)
    assert f"it could detect changes of ±{Z * 2:.1f} points or more" in text
    assert f"about {need} prompts would detect the paper's +4.0 points (Table X)" in text
    text = null_words(d, "points", 1, 50, 1, (35.0, "Table 1"))
    assert (
        "these 50 prompts would detect the paper's +35.0 points (Table 1); the CI excludes it"
        in text
    )


def test_the_design_floor_is_the_fewest_one_way_items_an_exact_test_rejects():
    from scipy.stats import binomtest

    # two-sided exact McNemar (sign) test, every discordant item one way: p = 2 x 0.5^d
    assert binomtest(6, 6).pvalue < 0.05 < binomtest(5, 5).pvalue
    assert (min_discordant(0.95), min_discordant(0.99), min_discordant(0.90)) == (6, 8, 5)
    assert design_floor(16, 0.95, 100.0) == pytest.approx(37.5)  # 6/16 of 100 points
    assert design_floor(805, 0.99, 100.0) == pytest.approx(800 / 805)
    assert design_floor(5, 0.95, 100.0) is None  # 5 items cannot reach the 5% level at all


def test_a_null_where_the_arms_agree_on_every_item_states_the_design_floor():
    same = {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "level": 0.95, "se": 0.0, "mde": 0.0}
    accuracy = null_words({**same, "n": 16}, "points", 1, 16, 1, (3.0, "X"), item_step=100.0)
    assert "cannot be estimated" not in accuracy
    assert (
        "the arms agree on all 16 items, so the spread of this design is unknown; its floor: "
        "an exact McNemar test at the 5% level needs at least 6 items that differ, all one "
        "way, so 16 items cannot show a change under 6/16 = 37.5 points"
    ) in accuracy
    lengths = null_words({**same, "n": 50}, "characters", 1, 50, 2, None)
    assert (
        "the arms agree on all 50 items in every seed, so the spread of this design is "
        "unknown; its floor: at least 6 of the 50 items must differ, all the same way, for "
        "an exact sign test at the 5% level to show a change"
    ) in lengths
    few = null_words({**same, "n": 4}, "points", 1, 4, 1, None, item_step=100.0)
    assert "4 items cannot show any change at the 5% level: an exact test needs 6" in few


def test_more_prompts_shrink_only_the_prompt_part_of_a_seed_interval():
    # se^2 = 4 (between seeds) + 5 (prompts): Z^2 (4 + 5 x 50/n) <= effect^2
    share = 4 / 9
    assert prompts_to_detect(50, Z * 3.0, Z * 2.5, share) == math.ceil(250 / 2.25)
    assert prompts_to_detect(50, Z * 3.0, Z * 2.5) == math.ceil(50 * (3.0 / 2.5) ** 2)
    assert prompts_to_detect(50, Z * 3.0, Z * 1.5, share) == math.inf  # 1.5^2 < 4
    d = {
        "diff": 0.5,
        "ci_low": -8.0,
        "ci_high": 9.0,
        "n": 50,
        "level": 0.95,
        "power": 0.8,
        "se": 3.0,
        "se_prompts": math.sqrt(5.0),
        "mde": Z * 3.0,
        "n_seeds": 3,
    }
    text = null_words(d, "points", 1, 50, 3, (Z * 1.5, "Table X"))
    assert (
        f"no number of prompts at these 3 seeds would detect the paper's +{Z * 1.5:.1f} "
        "points (Table X): the between-seed variance alone is too large; more seeds would"
    ) in text
    text = null_words(d, "points", 1, 50, 3, (Z * 2.5, "Table X"))
    assert f"about 112 prompts x 3 seeds would detect the paper's +{Z * 2.5:.1f} points" in text
