"""The detectable effect beside every null: checked against the closed-form paired-mean and
paired-proportion calculations and, by simulation, against the power it claims."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from pipeline.metrics.stats import detectable_effect, paired_bootstrap_diff, winrate_diff_ci
from pipeline.results.power import (
    default_paper,
    detectable,
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
    assert "cannot be estimated" in null_words(
        {**d, "se": 0.0, "mde": 0.0}, "points", 1, 50, 1, None
    )
