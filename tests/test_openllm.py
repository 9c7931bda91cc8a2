"""openllm stage on the tiny model with the local task set: scores in [0,1], the leaderboard's
few-shot
counts are what lm-eval used, a rerun is a store hit."""

import json
from pathlib import Path

import pytest

from pipeline.stages.openllm import LOCAL_DATA, LOCAL_TASKS, openllm, validate_openllm
from pipeline.store.store import Store
from tests.support.composed import composed

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def leaderboard_on_local_files(limit: int):
    return composed(
        "openllm=leaderboard_v1", "openllm.task_set=local", f"openllm.limit={limit}"
    ).openllm


@pytest.fixture(scope="module")
def tiny_finetuned(tmp_path_factory):
    """A real (tiny) finetune stage to evaluate."""
    from pipeline.stages.finetune import finetune

    root = tmp_path_factory.mktemp("store")
    cfg = composed("model=tiny", "noise=off", "finetune=tiny", "finetune.max_steps=4")
    model, data, noise, train = cfg.model, cfg.data, cfg.noise, cfg.finetune
    return finetune(
        model, data, noise, train, Store(root), Store(root / "cache"), report_to=[]
    ), Store(root)


def test_leaderboard_shots_are_what_lm_eval_used_and_rerun_is_a_store_hit(tiny_finetuned):
    finetuned, store = tiny_finetuned
    cfg = leaderboard_on_local_files(limit=8)
    first = openllm(finetuned, cfg, "float32", store)
    assert not first.reused
    m = first.metrics
    for short in ("arc", "hellaswag", "mmlu", "truthfulqa"):
        assert 0.0 <= m[f"openllm_{short}"] <= 1.0
    assert m["openllm_average"] == pytest.approx(
        sum(m[f"openllm_{s}"] for s in ("arc", "hellaswag", "mmlu", "truthfulqa")) / 4
    )
    results = json.loads((first.path / "lm_eval_results.json").read_text())
    used = {task: results["n-shot"][f"{task}_local"] for task in LOCAL_TASKS}
    assert used == {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0}
    assert all(results["n-samples"][f"{t}_local"]["effective"] == 8 for t in LOCAL_TASKS)
    assert (m["openllm_arc_n_shot"], m["openllm_mmlu_n_shot"]) == (25, 5)

    again = openllm(finetuned, cfg, "float32", store)
    assert again.reused and again.metrics == m and again.path == first.path


def test_local_files_have_enough_questions_and_few_shot_examples():
    def rows(name):
        return len((LOCAL_DATA / name).read_text().splitlines())

    assert rows("arc_challenge.test.jsonl") >= 20 and rows("arc_challenge.train.jsonl") >= 25
    assert rows("hellaswag.validation.jsonl") >= 20 and rows("hellaswag.train.jsonl") >= 10
    assert rows("mmlu.test.jsonl") >= 20 and rows("mmlu.dev.jsonl") >= 5
    assert rows("truthfulqa_mc2.validation.jsonl") >= 20


def test_bad_openllm_config_is_rejected():
    cfg = leaderboard_on_local_files(limit=1)
    cfg.tasks.arc.task = "gsm8k"
    with pytest.raises(ValueError, match="no local data"):
        validate_openllm(cfg)
    with pytest.raises(ValueError, match="task_set"):  # a choice field: a typo fails when set
        cfg.task_set = "cloud"
