"""Bootstrap CIs, paired differences, McNemar, seed pooling and judge calibration: hand-computed
cases, analytic checks of the interval widths, reproducibility, real AlpacaEval verdicts."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.metrics import agreement, stats
from tests.support.skips import needs_shared_data

ROOT = Path(__file__).resolve().parents[1]
ANNOTATIONS = ROOT.parent / "shared" / "data" / "alpaca_eval_gpt4_annotations"
needs_data = needs_shared_data("data", "alpaca_eval_gpt4_annotations")


def load(model: str) -> list[dict]:
    return json.loads((ANNOTATIONS / f"{model}.json").read_text(encoding="utf-8"))


def test_bootstrap_mean_ci_width_matches_the_normal_approximation_and_is_seeded():
    x = np.random.default_rng(7).normal(10.0, 2.0, size=400)
    got = stats.bootstrap_mean_ci(x, seed=3)
    assert got["mean"] == pytest.approx(x.mean()) and got["n"] == 400
    half = 1.96 * x.std(ddof=1) / math.sqrt(400)  # about 0.2
    assert got["ci_low"] == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert got["ci_high"] == pytest.approx(x.mean() + half, abs=0.1 * half)
    assert got == stats.bootstrap_mean_ci(x, seed=3)
    assert got["ci_low"] != stats.bootstrap_mean_ci(x, seed=4)["ci_low"]
    assert (got["n_resamples"], got["level"]) == (2000, 0.95)


def test_bootstrap_mean_ci_ignores_missing_values():
    got = stats.bootstrap_mean_ci([1.0, None, 3.0, float("nan"), 5.0])
    assert got["mean"] == 3.0 and got["n"] == 3 and 1.0 <= got["ci_low"] <= got["ci_high"] <= 5.0


def test_paired_bootstrap_resamples_the_same_prompts_in_both_arms():
    # Prompts differ a lot, arms differ by exactly 1 on every prompt: a paired bootstrap sees
    # only the constant difference (an unpaired one would give a CI about +-2 wide).
    base = np.random.default_rng(0).normal(0.0, 10.0, size=300)
    got = stats.paired_bootstrap_diff(base, base + 1.0)
    assert got["diff"] == pytest.approx(1.0)
    assert got["ci_low"] == pytest.approx(1.0) and got["ci_high"] == pytest.approx(1.0)
    assert got["excludes_zero"] and got["n"] == 300


def test_paired_bootstrap_averages_each_arm_over_its_own_non_missing_items():
    base, treated = [1.0, 2.0, None, 4.0], [2.0, None, 5.0, 6.0]
    got = stats.paired_bootstrap_diff(base, treated)
    assert got["diff"] == pytest.approx((2 + 5 + 6) / 3 - (1 + 2 + 4) / 3)  # = 2
    assert (got["n"], got["n_base"], got["n_treated"]) == (4, 3, 3)
    assert not math.isnan(got["ci_low"]) and got["ci_low"] <= got["diff"] <= got["ci_high"]
    med = stats.paired_bootstrap_diff([1, 2, 10], [2, 4, 4], statistic="median")
    assert med["diff"] == 2.0  # median 4 - median 2
    with pytest.raises(ValueError, match="mean"):
        stats.paired_bootstrap_diff(base, treated, statistic="mode")
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_bootstrap_diff([1, 2], [1, 2, 3])


def test_win_scores_follow_alpaca_evals_preference_scale():
    got = stats.win_scores([1, 2, 1.5, 0, None, 1.75])
    assert got[:4].tolist() == [0.0, 100.0, 50.0, 50.0] and math.isnan(got[4]) and got[5] == 75.0


@needs_data
def test_winrate_diff_ci_on_real_verdicts_matches_the_win_rates_and_the_paired_se():
    from pipeline.metrics.winrate import winrate_metrics

    falcon, guanaco = load("falcon-7b-instruct"), load("guanaco-65b")
    got = stats.winrate_diff_ci(
        [r["preference"] for r in falcon], [r["preference"] for r in guanaco]
    )
    expected = winrate_metrics(guanaco)["win_rate"] - winrate_metrics(falcon)["win_rate"]
    assert got["diff"] == pytest.approx(expected) and got["diff"] == pytest.approx(26.087, abs=1e-3)
    d = stats.win_scores([r["preference"] for r in guanaco]) - stats.win_scores(
        [r["preference"] for r in falcon]
    )
    half = 1.96 * np.std(d, ddof=1) / math.sqrt(len(d))  # paired normal approximation, ~3.8
    assert got["ci_low"] == pytest.approx(got["diff"] - half, abs=0.1 * half)
    assert got["ci_high"] == pytest.approx(got["diff"] + half, abs=0.1 * half)
    assert got["excludes_zero"] and got["n"] == 805


@needs_data
def test_lc_diff_ci_refits_alpaca_evals_minimal_glm_per_resample():
    from pipeline.metrics.winrate import length_controlled

    falcon, guanaco = load("falcon-7b-instruct"), load("guanaco-65b")
    got = stats.lc_diff_ci(falcon, guanaco, n_resamples=200, seed=1)  # a few seconds
    lc = {m: length_controlled(a)["lc_win_rate"] for m, a in (("f", falcon), ("g", guanaco))}
    assert got["diff"] == pytest.approx(lc["g"] - lc["f"]) and got["diff"] == pytest.approx(
        53.427 - 39.624, abs=1e-3
    )
    assert got["ci_low"] < got["diff"] < got["ci_high"] and got["n_resamples"] == 200
    assert 5 < got["ci_high"] - got["ci_low"] < 40  # the length coefficient is itself uncertain
    assert stats.lc_diff_ci(falcon, guanaco, n_resamples=200, seed=1) == got  # seeded
    with pytest.raises(ValueError, match="same instructions"):
        stats.lc_diff_ci(falcon, guanaco[1:] + guanaco[:1], n_resamples=2)


def test_mcnemar_exact_on_discordant_pairs():
    base = [1, 1, 0, 0, 1, 0, 1, 1]
    treated = [1, 0, 1, 1, 1, 1, 1, 1]
    got = stats.mcnemar(base, treated)
    # b = 1 (only base right), c = 3 (only treated right); p = 2 P(X >= 3 | 4, 1/2) = 2 * 5/16.
    assert (got["b"], got["c"]) == (1, 3) and got["p_value"] == pytest.approx(0.625)
    assert got["diff"] == pytest.approx(100 * (7 - 5) / 8) and not got["excludes_zero"]
    # 10 vs 25 discordant: p = 2 * sum_{k>=25} C(35, k) / 2^35
    big = stats.mcnemar([1] * 10 + [0] * 25 + [1] * 65, [0] * 10 + [1] * 25 + [1] * 65)
    exact = 2 * sum(math.comb(35, k) for k in range(25, 36)) / 2**35
    assert big["p_value"] == pytest.approx(exact) and big["diff"] == pytest.approx(15.0)
    assert stats.mcnemar([1, 0], [1, 0])["p_value"] == 1.0


def test_pooled_over_seeds():
    got = stats.pooled_over_seeds([1.0, 2.0, 4.0])
    assert got["mean"] == pytest.approx(7 / 3) and got["n_seeds"] == 3
    assert got["sd"] == pytest.approx(math.sqrt(7 / 3))  # sum of squares 42/9, over 2
    assert stats.pooled_over_seeds({0: 5.0}) == {"mean": 5.0, "sd": None, "n_seeds": 1}


def test_judge_agreement_counts_ties_as_alpaca_evals_absolute_rule():
    from alpaca_eval.metrics import SCORING_RULES

    judge = [2, 1, 1.5, 2, 0]  # 0: alpaca_eval's legacy tie
    reference = [2, 2, 2, 1.5, 1.5]
    # per pair 1 - |judge - reference|: 1, 0, 0.5, 0.5, 1 -> 60%
    got = agreement.judge_agreement(judge, reference, [10, 10, 5, 7, 3], [20, 5, 5, 9, 1])
    theirs = SCORING_RULES["absolute"]().score(judge, reference)
    assert got["accuracy"]["mean"] == pytest.approx(60.0) == pytest.approx(100 * theirs)
    # length rule: 2, 1, 1.5 (equal), 2, 1 -> 1, 0, 0.5, 0.5, 0.5 -> 50%
    assert got["length_baseline"]["mean"] == pytest.approx(50.0)
    # constant verdicts: always 1 -> 20%, always 1.5 -> 70%, always 2 -> 80%
    assert got["chance_level"] == pytest.approx(80.0) and got["n"] == 5
    assert not got["verdicts"]["better_than_chance"]
    assert got["judge_minus_length"]["diff"] == pytest.approx(10.0)


@needs_data
def test_length_rule_as_a_judge_on_real_gpt4_verdicts():
    ann = load("phi-2-sft")
    l1, l2 = [len(r["output_1"]) for r in ann], [len(r["output_2"]) for r in ann]
    rule = agreement.length_rule(l1, l2)
    got = agreement.judge_agreement(rule, [r["preference"] for r in ann], l1, l2)
    # GPT-4 sides with the longer answer on 73.6% of phi-2-sft's pairs (one verdict unparsed)
    assert got["n"] == 804 and got["n_dropped"] == 1
    assert got["accuracy"]["mean"] == pytest.approx(73.570, abs=1e-3)
    assert got["accuracy"] == got["length_baseline"]
    assert got["judge_minus_length"]["diff"] == 0.0 == got["judge_minus_length"]["ci_high"]
    assert got["chance_level"] == pytest.approx(68.532, abs=1e-3)  # "always output_2"
    assert got["verdicts"]["better_than_chance"] and not got["verdicts"]["better_than_length"]


def test_position_consistency_compares_the_chosen_output_across_orders():
    # pairs: (1, swapped 2) same output; (2, 1) same; (1.5, 1.5) tie both ways; (2, 2) flips;
    # (None, 1) dropped -> 3 of 4 consistent
    got = agreement.position_consistency([1, 2, 1.5, 2, None], [2, 1, 1.5, 2, 1])
    assert got["mean"] == 75.0 and got["n"] == 4 and got["n_dropped"] == 1


def test_is_informative_verdicts_in_plain_words():
    length = {"mean": 68.0}
    good = agreement.is_informative(
        {"mean": 80.0, "ci_low": 75.0, "ci_high": 85.0, "n": 100}, length
    )
    assert good["informative"] and good["chance_verdict"].startswith("distinguishable from chance")
    assert good["length_verdict"].startswith("better than the length rule")
    near = agreement.is_informative(
        {"mean": 70.0, "ci_low": 65.0, "ci_high": 75.0, "n": 100}, length
    )
    assert near["better_than_chance"] and not near["better_than_length"]
    assert near["length_verdict"].startswith("not better than the length rule")
    coin = agreement.is_informative(
        {"mean": 52.0, "ci_low": 45.0, "ci_high": 59.0, "n": 100}, length
    )
    assert coin["chance_verdict"].startswith("not distinguishable from chance")
    bad = agreement.is_informative(
        {"mean": 40.0, "ci_low": 35.0, "ci_high": 45.0, "n": 100}, length
    )
    assert bad["chance_verdict"].startswith("worse than chance") and not bad["informative"]
