"""alpaca_eval stage: win-rate maths is alpaca_eval's, the local judge runs offline, verdicts are
cached,
API judges without a key fail before any work, the reference against itself scores 50%."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import pipeline.config.schema  # noqa: F401  (registers the config schema)
from pipeline.judging.judges import (
    JudgeError,
    annotator,
    judge_pairs,
    load_reference,
    validate_judge,
)
from pipeline.metrics.winrate import winrate_metrics
from pipeline.stages.alpaca_eval_stage import alpaca_eval_stage
from pipeline.store.store import StageResult, Store
from tests.support.composed import SMOKE
from tests.support.skips import needs_shared_data

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def judge_cfg(name: str):
    """The judge config as the pipeline composes it (schema defaults + the option's YAML)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"judge={name}"]).judge


def test_winrate_equals_alpaca_evals_get_winrate():
    from alpaca_eval.metrics import get_winrate

    annotations = [{"preference": p} for p in (2, 2, 1, 1.5, 2, 1)]
    ours = winrate_metrics(annotations)
    theirs = get_winrate(annotations)
    assert ours == {k: float(v) for k, v in theirs.items()}
    assert ours["win_rate"] == pytest.approx(100 * (1 + 1 + 0 + 0.5 + 1 + 0) / 6)
    assert (ours["n_wins"], ours["n_wins_base"], ours["n_draws"], ours["n_total"]) == (3, 2, 1, 6)


def test_winrate_script_prints_the_same_metrics(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(
        json.dumps([{"preference": p, "output_2": "x" * n} for p, n in ((2, 3), (1, 5), (1.5, 4))])
    )
    out = subprocess.run(
        [sys.executable, "scripts/winrate.py", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (
        got["win_rate"] == pytest.approx(50.0)
        and got["n_total"] == 3
        and got["avg_length"] == pytest.approx(4.0)
    )


class CountingJudge:
    """Wraps the real local judge's completion function and counts the prompts it is asked."""

    def __init__(self, inner):
        self.inner, self.prompts = inner, 0

    def __call__(self, prompts, **kwargs):
        self.prompts += len(prompts)
        return self.inner(prompts, **kwargs)


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    from pipeline.judging.kinds import judge_settings
    from pipeline.judging.kinds.local import local_judge_completions
    from pipeline.models.loading import base_model_dir

    cfg = judge_cfg("local_tiny")
    cache = Store(tmp_path_factory.mktemp("cache"))
    model_dir = base_model_dir(judge_settings(cfg).model, cache)
    return cfg, cache, local_judge_completions(model_dir, "float32", 4, 1000)


def pairs(n=5):
    return [
        {
            "instruction": f"Question {i}?",
            "output_1": f"reference answer {i}",
            "output_2": f"model answer number {i} " * (i + 1),
            "generator_1": "ref",
            "generator_2": "model",
        }
        for i in range(n)
    ]


def test_local_judge_runs_offline_in_both_orders_and_never_reasks_a_judged_pair(
    tmp_path, tiny_judge
):
    cfg, cache, inner = tiny_judge
    judge = CountingJudge(inner)
    scored = judge_pairs(
        annotator(cfg, tmp_path, cache, fn_completions=judge), pairs(), both_orders=True
    )
    assert judge.prompts == 10  # 5 pairs x 2 orders
    assert all(r["preference"] in (1.0, 1.5, 2.0) for r in scored)
    for (
        r
    ) in scored:  # the combined verdict is the mean of the forward one and the flipped backward one
        assert r["preference"] == pytest.approx(
            (r["preference_forward"] + 3 - r["preference_backward"]) / 2
        )
    cached = json.loads((tmp_path / "annotations.json").read_text())
    assert len(cached) == 10

    again = CountingJudge(inner)
    rescored = judge_pairs(
        annotator(cfg, tmp_path, cache, fn_completions=again),
        pairs() + pairs(7)[5:],
        both_orders=True,
    )
    assert again.prompts == 4  # only the 2 new pairs, in 2 orders
    assert [r["preference"] for r in rescored[:5]] == [r["preference"] for r in scored]


def test_identical_outputs_are_draws_without_asking_the_judge(tmp_path, tiny_judge):
    cfg, cache, inner = tiny_judge
    judge = CountingJudge(inner)
    same = [{**p, "output_2": p["output_1"]} for p in pairs()]
    scored = judge_pairs(
        annotator(cfg, tmp_path, cache, fn_completions=judge), same, both_orders=True
    )
    assert judge.prompts == 0 and winrate_metrics(scored)["win_rate"] == 50.0


@needs_shared_data("data", "alpaca_eval_v1_reference.json")
def test_alpaca_eval_1_reference_against_itself_is_50_percent_on_all_805(tmp_path):
    reference = load_reference(str(SHARED / "alpaca_eval_v1_reference.json"))
    assert len(reference.records) == 805 and reference.label == "text_davinci_003"
    stage_dir = tmp_path / "generate-reference-0"
    stage_dir.mkdir()
    (stage_dir / "outputs.json").write_text(json.dumps(reference.records))
    as_generated = StageResult("generate-reference-0", stage_dir, {}, reused=True)
    store = Store(tmp_path / "store")
    result = alpaca_eval_stage(
        as_generated, reference, judge_cfg("local_tiny"), store, Store(tmp_path / "cache")
    )
    assert (
        result.metrics["win_rate"] == 50.0
        and result.metrics["n_total"] == 805
        and result.metrics["n_draws"] == 805
    )


@pytest.mark.parametrize(
    "name", ["alpaca_eval_gpt4", "chatgpt_fn", "weighted_alpaca_eval_gpt4_turbo"]
)
def test_api_judge_without_key_is_rejected(name, monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(JudgeError, match="OPENAI_API_KEY"):
        validate_judge(judge_cfg(name))


def test_paper_judges_select_alpaca_eval_1_and_the_turbo_judge_2():
    assert (
        judge_cfg("alpaca_eval_gpt4").alpaca_eval_version == 1
        and judge_cfg("chatgpt_fn").alpaca_eval_version == 1
    )
    assert judge_cfg("weighted_alpaca_eval_gpt4_turbo").alpaca_eval_version == 2
    assert judge_cfg("weighted_alpaca_eval_gpt4_turbo").lc_data is None  # LC v1 when given the data


@pytest.mark.e2e
def test_missing_api_key_fails_before_any_training(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.run",
            *SMOKE,
            "judge=alpaca_eval_gpt4",
            f"paths.store={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "OPENAI_API_KEY is not set" in result.stderr
    assert not any(tmp_path.glob("finetune-*")) and not (tmp_path / "cache").exists()
