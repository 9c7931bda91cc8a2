"""The findings of REPORT.md from hand-made typed points: each effect with its CI, whether the
judge is informative, and for every null finding the effect it could detect and the prompts the
paper's effect would need."""

from pipeline.results.findings import findings
from pipeline.results.points import Effect
from tests.support.points import point, ref


def ci_diff(d: float, lo: float, hi: float, se: float | None = None) -> dict:
    """A paired difference with its 95% CI over 50 prompts; with se, its detectable effect too."""
    out = {
        "diff": d,
        "ci_low": lo,
        "ci_high": hi,
        "n": 50,
        "n_resamples": 2000,
        "level": 0.95,
        "excludes_zero": lo > 0 or hi < 0,
    }
    if se is not None:
        out |= {"se": se, "mde": 2.8016 * se, "power": 0.8}
    return out


def arc(diff: dict) -> dict:
    """lm-eval's arc difference on 16 questions, with McNemar's p and discordant counts."""
    return {"arc": {**diff, "n": 16, "p_value": 0.62, "b": 1, "c": 2}}


def compare_effect(**metrics) -> Effect:
    """neft-uniform5 vs base, seed 42: one compare stage of 1 seed and 50 prompts."""
    stage = ref("compare", "main", **metrics, n_seeds=1, n_prompts=50)
    return Effect(arm="neft-uniform5", baseline="base", seeds=[42], stages={"compare": stage})


def uninformative_calibration():
    """A judge calibration no better than chance nor than the length rule."""
    return ref(
        "judge_calibration",
        "j",
        judge="j",
        n=40,
        accuracy={"mean": 52.0, "ci_low": 40.0, "ci_high": 64.0, "n": 40},
        length_baseline={"mean": 58.0},
        position_consistency={"mean": 9.0, "ci_low": 2.0, "ci_high": 18.0},
        verdicts={
            "informative": False,
            "chance_verdict": "not distinguishable from chance",
            "length_verdict": "not better than the length rule",
        },
    )


def test_findings_state_each_effect_its_ci_and_whether_the_judge_is_informative():
    p = point("main", "neft-uniform5", 5, 60.0)
    p.effects = [
        compare_effect(
            win_rate=ci_diff(-2.0, -8.0, 4.0),
            lc_win_rate=ci_diff(1.0, -5.0, 7.0),
            chars=ci_diff(28.4, 12.0, 45.0),
            words=ci_diff(4.2, 1.5, 7.0),
            log_diversity=None,
            openllm=arc(ci_diff(0.0625, -0.0625, 0.1875)),
        )
    ]
    p.point_stages["judge_calibration"] = uninformative_calibration()
    text = "\n".join(findings([p]))
    assert (
        "mean answer length: +28.4 characters (95% CI +12.0 to +45.0, n=50 prompts); the CI "
        "excludes zero: higher with NEFT. [`compare-main-000000000000`]"
    ) in text
    assert (
        "win rate vs the reference: -2.0 points (95% CI -8.0 to +4.0, n=50 prompts); the CI "
        "includes zero"
    ) in text
    assert "log-diversity" not in text  # no answer reached K: nothing to say, nothing said
    p.effects[0].stages["compare"].metrics["log_diversity"] = {
        **ci_diff(0.5, -0.1, 1.8),
        "n_base": 22,
        "n_treated": 23,
    }
    assert (
        "log-diversity (Table-4 arithmetic): +0.50 (95% CI -0.10 to +1.80, n=50 prompts: "
        "22 base and 23 +NEFT answers have a value)"
    ) in "\n".join(findings([p]))
    # lm-eval accuracies are fractions; their differences are shown in percentage points
    assert (
        "lm-eval arc: +6.2 points (95% CI -6.2 to +18.8, n=16 questions); the CI includes "
        "zero: no change this study can detect; it could detect changes of ±17.9 points or "
        "more (80% power at the 95% level, se from the CI width); McNemar p=0.62 (1 vs 2 "
        "discordant)"
    ) in text
    assert "same answer in both orders on 9% of pairs" in text
    assert "win-rate numbers of this point are uninformative" in text
    assert "the judge prefers neft-uniform5 in 55.0% ± 2.0 of 4 pairs" in text


def test_every_null_finding_gives_its_detectable_effect_and_the_prompts_for_the_papers():
    p = point("main", "neft-uniform5", 5, 60.0)
    p.dataset = "alpaca"
    p.effects = [
        compare_effect(
            win_rate=ci_diff(-3.0, -10.0, 3.0, 3.3),
            lc_win_rate=None,
            chars=ci_diff(28.4, 12.0, 45.0, 8.0),
            words=None,
            log_diversity=ci_diff(0.1, -0.3, 0.5, 0.2),
            openllm=arc(ci_diff(6.25, -6.25, 18.75, 6.0)),
        )
    ]
    text = "\n".join(findings([p]))
    assert (
        "no change this study can detect; it could detect changes of ±9.2 points or more "
        "(80% power at the 95% level); these 50 prompts would detect the paper's +34.9 "
        "points (Table 1, alpaca); the CI excludes it."
    ) in text
    need = -(-50 * (2.8016 * 0.2 / 0.44) ** 2 // 1)
    assert f"about {int(need)} prompts would detect the paper's +0.44 (Table 4, alpaca)" in text
    assert "excludes zero: higher with NEFT. [" in text  # no detectable-effect talk there
    # compare version 3 keeps lm-eval differences in points: shown as they are
    assert "lm-eval arc: +6.2 points (95% CI -6.2 to +18.8, n=16 questions)" in text
    assert "it could detect changes of ±16.8 points or more" in text


def seeds_effect(**metrics) -> Effect:
    """neft-uniform5 vs base over seeds 1, 2, 3 on 50 prompts (compare version 4)."""
    stage = ref("compare", "main", **metrics, n_seeds=3, n_prompts=50)
    return Effect(arm="neft-uniform5", baseline="base", seeds=[1, 2, 3], stages={"compare": stage})


def seed_diff(d: float, lo: float, hi: float, sd: float, **extra) -> dict:
    """A difference over 3 seeds with its between-seed SD (stats.seed_interval's keys)."""
    return {
        **ci_diff(d, lo, hi, 2.0),
        "n_seeds": 3,
        "between_seed_sd": sd,
        "se_prompts": 1.5,
        "per_seed": [d - sd, d, d + sd],
        "method": "seeds",
        **extra,
    }


def test_findings_show_the_between_seed_sd_beside_each_interval():
    p = point("main", "neft-uniform5", 5, 60.0)
    p.effects = [
        seeds_effect(
            win_rate=seed_diff(3.0, -9.0, 15.0, 4.25, n_base=150, n_treated=150),
            lc_win_rate=None,
            chars=seed_diff(28.4, 12.0, 45.0, 6.5, n_base=140, n_treated=150),
            words=None,
            log_diversity=None,
            openllm={
                "arc": {
                    **seed_diff(6.25, -5.0, 17.5, 3.0),
                    "n": 16,
                    "b": 2,
                    "c": 5,
                    "p_value": 0.3,
                    "p_value_per_seed": [0.5, 1.0, 0.62],
                }
            },
        )
    ]
    text = "\n".join(findings([p]))
    assert "50 prompts, 3 seeds (per-seed differences" in text
    assert (
        "win rate vs the reference: +3.0 points (95% CI -9.0 to +15.0, n=50 prompts x 3 seeds; "
        "between-seed SD 4.2 points); the CI includes zero"
    ) in text
    assert (
        "mean answer length: +28.4 characters (95% CI +12.0 to +45.0, n=50 prompts x 3 seeds: "
        "140 base and 150 +NEFT answers of 150 have a value; between-seed SD 6.5 characters)"
    ) in text
    assert (
        "lm-eval arc: +6.2 points (95% CI -5.0 to +17.5, n=16 questions x 3 seeds; "
        "between-seed SD 3.0 points)"
    ) in text
    assert "p=0.30 (t over 3 seeds; McNemar per seed p=0.50, 1.00, 0.62; 2 vs 5 discordant" in text
    assert "one training seed" not in text


def test_findings_say_when_one_seed_is_all_there_is():
    p = point("main", "neft-uniform5", 5, 60.0)
    p.effects = [
        compare_effect(
            win_rate=ci_diff(-2.0, -8.0, 4.0),
            lc_win_rate=None,
            chars=None,
            words=None,
            log_diversity=None,
        )
    ]
    text = "\n".join(findings([p]))
    assert (
        "1 seed (paired bootstrap over prompts, 2000 resamples; one training seed is all there "
        "is, so no interval here includes the variance between training runs;"
    ) in text
    assert "between-seed SD" not in text


def test_an_lm_eval_null_where_the_arms_agree_on_every_question_states_the_floor():
    p = point("main", "neft-uniform5", 5, 60.0)
    same = {**ci_diff(0.0, 0.0, 0.0, 0.0), "n": 16, "p_value": 1.0, "b": 0, "c": 0}
    p.effects = [
        compare_effect(
            win_rate=None,
            lc_win_rate=None,
            chars=None,
            words=None,
            log_diversity=None,
            openllm={"arc": same},
        )
    ]
    text = "\n".join(findings([p]))
    assert "cannot be estimated" not in text
    assert "so 16 items cannot show a change under 6/16 = 37.5 points" in text


def test_findings_of_a_compare_stage_before_version_4_say_its_rows_were_pooled():
    p = point("main", "neft-uniform5", 5, 60.0)
    stage = ref("compare", "main", win_rate=ci_diff(-2.0, -8.0, 4.0), n_seeds=2, n_prompts=50)
    p.effects = [
        Effect(arm="neft-uniform5", baseline="base", seeds=[1, 2], stages={"compare": stage})
    ]
    text = "\n".join(findings([p]))
    assert "pooled as independent rows (compare before version 4)" in text
    assert "between-seed SD" not in text
