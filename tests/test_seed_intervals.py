"""Intervals that count the training seed (pipeline/metrics/stats.py, the compare stage): by
simulation, a study of k seeds x 50 shared prompts with a known between-seed SD gets a 95%
interval that covers the true effect about 95% of the time at 3 and 5 seeds, where the pooled-rows
interval of compare version 3 covers far less; with one seed everything is as it was."""

import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.metrics import stats
from pipeline.stages.compare import compare
from pipeline.stages.contract import ArmPair
from pipeline.store.store import StageResult, Store
from tests.support.composed import SMOKE
from tests.support.pipeline_run import run_pipeline, stage_dirs

# A simulated study: per (seed, prompt) the +NEFT minus base difference is
# EFFECT + seed effect (SD TAU, one per training run) + prompt effect (SD PROMPT_SD, the same
# prompt in every seed, as the pipeline's eval prompts are) + noise (SD NOISE_SD).
EFFECT, TAU, PROMPT_SD, NOISE_SD, N_PROMPTS = 5.0, 10.0, 30.0, 50.0, 50
STUDIES = 1000  # binomial SD of a 95% coverage: 0.7 points, so 92-98 is a fair band
RESAMPLES = 200  # inside the simulation only: the stage uses compare.resamples (2000)


def simulated_study(rng, n_seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, treated), each (n_seeds, N_PROMPTS): one row per training seed."""
    difficulty = rng.normal(300.0, 80.0, (1, N_PROMPTS))  # shared by both arms: paired
    base = difficulty + rng.normal(0.0, 20.0, (n_seeds, N_PROMPTS))
    treated = (
        base
        + EFFECT
        + rng.normal(0.0, TAU, (n_seeds, 1))
        + rng.normal(0.0, PROMPT_SD, (1, N_PROMPTS))
        + rng.normal(0.0, NOISE_SD, (n_seeds, N_PROMPTS))
    )
    return base, treated


def covers(d: dict) -> bool:
    return d["ci_low"] <= EFFECT <= d["ci_high"]


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_seed_aware_interval_covers_the_true_effect_and_pooled_rows_do_not(n_seeds):
    rng = np.random.default_rng(20231017 + n_seeds)
    new, old = [], []
    for i in range(STUDIES):
        base, treated = simulated_study(rng, n_seeds)
        new.append(covers(stats.paired_diff_seeds(list(base), list(treated), RESAMPLES, seed=i)))
        # compare version 3: every seed's prompts in one list, rows resampled independently
        old.append(covers(stats.paired_bootstrap_diff(base.ravel(), treated.ravel(), RESAMPLES, i)))
    assert 0.92 <= np.mean(new) <= 0.98, np.mean(new)
    assert np.mean(old) < 0.85, np.mean(old)


def test_pooled_rows_narrow_as_disagreeing_seeds_are_added_and_the_seed_interval_does_not():
    rng = np.random.default_rng(5)
    n = 100

    def arms(n_seeds):  # the seeds disagree: +15 and -15 points in turn, the true effect is 0
        base = rng.normal(50.0, 10.0, (n_seeds, n))
        effects = np.where(np.arange(n_seeds) % 2 == 0, 15.0, -15.0)[:, None]
        return base, base + effects + rng.normal(0.0, 5.0, (n_seeds, n))

    widths = {}
    for k in (2, 6):
        base, treated = arms(k)
        pooled = stats.paired_bootstrap_diff(base.ravel(), treated.ravel(), 1000)
        seeds = stats.paired_diff_seeds(list(base), list(treated), 1000)
        widths[k] = (pooled["ci_high"] - pooled["ci_low"], seeds["ci_high"] - seeds["ci_low"])
        assert seeds["between_seed_sd"] == pytest.approx(np.std(seeds["per_seed"], ddof=1))
        assert seeds["between_seed_sd"] > 15 and seeds["n_seeds"] == k and seeds["n"] == n
        assert not seeds["excludes_zero"]
        assert seeds["diff"] == pytest.approx(np.mean(treated) - np.mean(base))
    assert widths[6][0] < 0.7 * widths[2][0]  # pooled rows: more rows, narrower, seeds ignored
    assert widths[6][1] > 10 * widths[6][0]  # the seeds' disagreement is in the interval


def test_the_seed_interval_is_the_t_interval_of_the_seed_means_when_prompts_add_nothing():
    # every prompt of a seed differs by the same amount: no prompt noise, only between-seed
    # variance, so the interval is mean +- t_{k-1} SD / sqrt(k) of the per-seed differences
    from scipy.stats import t

    per_seed = np.array([1.0, 4.0, 2.5, 6.0])
    base = [np.linspace(0, 10, 30) for _ in per_seed]
    got = stats.paired_diff_seeds(base, [b + e for b, e in zip(base, per_seed)], 500, power=0.8)
    half = t.ppf(0.975, 3) * per_seed.std(ddof=1) / 2
    assert got["diff"] == pytest.approx(per_seed.mean())
    assert got["ci_low"] == pytest.approx(per_seed.mean() - half)
    assert got["ci_high"] == pytest.approx(per_seed.mean() + half)
    assert got["df"] == pytest.approx(3.0) and got["se_prompts"] == pytest.approx(0.0, abs=1e-9)
    assert got["mde"] == pytest.approx((t.ppf(0.975, 3) + t.ppf(0.8, 3)) * got["se"])


def test_one_seed_is_todays_paired_bootstrap_and_says_so():
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 10.0, 40)
    treated = base + rng.normal(1.0, 3.0, 40)
    got = stats.paired_diff_seeds([base], [treated], 1000, seed=3, power=0.8)
    assert got == {
        **stats.paired_bootstrap_diff(base, treated, 1000, seed=3, power=0.8),
        "n_seeds": 1,
        "between_seed_sd": None,
        "method": stats.ONE_SEED,
    }
    prefs = [rng.choice([1.0, 2.0], 30) for _ in range(2)]
    assert stats.winrate_diff_seeds([prefs[0]], [prefs[1]], 1000, seed=1) == {
        **stats.winrate_diff_ci(prefs[0], prefs[1], 1000, seed=1),
        "n_seeds": 1,
        "between_seed_sd": None,
        "method": stats.ONE_SEED,
    }
    right = [rng.random(16) < 0.5 for _ in range(2)]
    assert stats.mcnemar_seeds([right[0]], [right[1]], 1000) == {
        **stats.mcnemar(right[0], right[1], 1000),
        "n_seeds": 1,
        "between_seed_sd": None,
        "method": stats.ONE_SEED,
    }


def test_mcnemar_over_seeds_combines_the_per_seed_differences():
    # seed 1: 3 items only +NEFT gets right; seed 2: 1 item only base gets right (of 20)
    base = [np.array([1] * 10 + [0] * 10), np.array([1] * 10 + [0] * 10)]
    treated = [np.array([1] * 13 + [0] * 7), np.array([0] + [1] * 9 + [0] * 10)]
    got = stats.mcnemar_seeds(base, treated, 1000)
    assert (got["b"], got["c"]) == (1, 3) and got["n_seeds"] == 2 and got["n"] == 20
    assert got["per_seed"] == pytest.approx([15.0, -5.0])
    assert got["diff"] == pytest.approx(5.0) and got["between_seed_sd"] == pytest.approx(
        math.sqrt(200)
    )
    assert got["p_value_per_seed"] == pytest.approx([0.25, 1.0])
    assert 0 < got["p_value"] <= 1 and not got["excludes_zero"]


def test_lc_over_seeds_refits_each_seed():
    rng = np.random.default_rng(4)

    def annotations(p_win):
        return [
            {
                "instruction": f"q{i}",
                "output_1": "r" * int(rng.integers(5, 60)),
                "output_2": "a" * int(rng.integers(5, 60)),
                "preference": 2.0 if rng.random() < p_win else 1.0,
            }
            for i in range(40)
        ]

    b = [annotations(0.4), annotations(0.4)]
    t = [annotations(0.6), annotations(0.5)]
    two = stats.lc_diff_seeds(b, t, 6, seed=2)  # each resample refits 4 GLMs
    per_seed = [stats.lc_diff_ci(x, y, 2)["diff"] for x, y in zip(b, t)]
    assert two["per_seed"] == pytest.approx(per_seed) and two["n_seeds"] == 2
    assert two["diff"] == pytest.approx(np.mean(per_seed)) and two["method"] == stats.SEEDS
    assert two["ci_low"] < two["diff"] < two["ci_high"]
    # one seed: lc_diff_ci's interval (the compare stage's one-seed test checks the numbers)
    assert stats.lc_diff_seeds(b[:1], t[:1], 2)["method"] == stats.ONE_SEED


# The compare stage on hand-made stage directories: per-seed differences, not pooled rows.


def judged(tmp_path, name: str, prefs, chars) -> dict:
    """alpaca_eval and analysis stage results of one arm of one seed on len(prefs) prompts."""
    out = {}
    for stage in ("alpaca_eval", "analysis"):
        path = tmp_path / f"{stage}-{name}-000000000000"
        path.mkdir()
        out[stage] = StageResult(path.name, path, {}, True)
    scored = [
        {"instruction": f"q{i}", "output_1": "r" * 20, "output_2": "a" * int(c), "preference": p}
        for i, (p, c) in enumerate(zip(prefs, chars))
    ]
    (out["alpaca_eval"].path / "scored.json").write_text(json.dumps(scored))
    chars = [int(c) for c in chars]
    per_output = {"chars": chars, "words": [c / 5 for c in chars], "log_diversity": [None] * 30}
    (out["analysis"].path / "per_output.json").write_text(json.dumps(per_output))
    return out


CFG = OmegaConf.create({"resamples": 1000, "lc_resamples": 6, "level": 0.95, "seed": 0})


def seed_pairs(tmp_path, n_seeds: int) -> list[ArmPair]:
    rng = np.random.default_rng(9)
    pairs = []
    for s in range(n_seeds):
        base_chars = rng.integers(50, 200, 30)
        pairs.append(
            ArmPair(
                s,
                judged(tmp_path, f"b{s}", rng.choice([1.0, 2.0], 30), base_chars),
                judged(tmp_path, f"t{s}", rng.choice([1.0, 2.0], 30), base_chars + 40 * s),
            )
        )
    return pairs


def test_compare_stage_reports_per_seed_differences_and_their_between_seed_sd(tmp_path):
    pairs = seed_pairs(tmp_path, 2)
    m = compare(pairs, CFG, Store(tmp_path / "store")).metrics
    assert m["n_seeds"] == 2 and m["n_prompts"] == 30
    chars = m["chars"]
    assert chars["n_seeds"] == 2 and chars["n"] == 30 and chars["method"] == stats.SEEDS
    assert chars["per_seed"] == pytest.approx([0.0, 40.0])  # seed 1 adds 40 characters
    assert chars["between_seed_sd"] == pytest.approx(40 / math.sqrt(2))
    for name in ("win_rate", "lc_win_rate", "words"):
        assert m[name]["n_seeds"] == 2 and m[name]["between_seed_sd"] is not None
    assert m["log_diversity"] is None  # no answer reached K in any seed


def test_compare_stage_with_one_seed_keeps_its_numbers(tmp_path):
    (pair,) = seed_pairs(tmp_path, 1)
    m = compare([pair], CFG, Store(tmp_path / "store")).metrics
    scored = [
        json.loads((pair_side["alpaca_eval"].path / "scored.json").read_text())
        for pair_side in (pair.base, pair.treated)
    ]
    prefs = [[r["preference"] for r in s] for s in scored]
    common = dict(seed=0, level=0.95, power=0.8)
    assert m["win_rate"] == {
        **stats.winrate_diff_ci(prefs[0], prefs[1], 1000, **common),
        "n_seeds": 1,
        "between_seed_sd": None,
        "method": stats.ONE_SEED,
    }
    lc = stats.lc_diff_ci(scored[0], scored[1], 6, **common)
    assert {k: m["lc_win_rate"][k] for k in lc} == lc


@pytest.mark.e2e
def test_two_seeds_on_the_tiny_stack_report_the_between_seed_sd(tmp_path):
    store = tmp_path / "store"
    result = run_pipeline(store, *SMOKE, "seeds=[1,2]", "logger=disabled")
    assert result.returncode == 0, result.stderr[-3000:]
    (stage,) = stage_dirs(store, "compare")
    m = json.loads((stage / "metrics.json").read_text())
    assert m["n_seeds"] == 2
    for d in [m[name] for name in ("win_rate", "lc_win_rate", "chars", "words")] + list(
        m["openllm"].values()
    ):
        assert d["n_seeds"] == 2 and d["method"] == stats.SEEDS and len(d["per_seed"]) == 2
        assert d["between_seed_sd"] == pytest.approx(np.std(d["per_seed"], ddof=1))
        assert d["diff"] == pytest.approx(np.mean(d["per_seed"]))
    assert m["chars"]["n"] == m["n_prompts"]  # prompts per seed, no longer the pooled rows
    report = (store / "results" / "default" / "REPORT.md").read_text()
    block = report.split("## Findings")[1].split("\n## ")[0]
    assert f"{m['n_prompts']} prompts, 2 seeds (per-seed differences" in block
    assert f"n={m['n_prompts']} prompts x 2 seeds; between-seed SD" in block
    assert "n=16 questions x 2 seeds; between-seed SD" in block
    assert "one training seed" not in block
