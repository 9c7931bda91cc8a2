"""A judge that answers garbage (or fails) never poisons the verdict cache, and a corrupt cache
file is moved aside and rebuilt.

The fake judge (an OpenAI-compatible server) is tests/support/fake_judge.py, shared with
test_secrets.py.
"""

import json
import math
from pathlib import Path

import pytest

from pipeline.judging.judges import JudgeError, annotator, judge_pairs
from pipeline.stages.alpaca_eval_stage import alpaca_eval_stage
from pipeline.store.store import Store
from tests.support.composed import composed
from tests.support.fake_judge import BROKEN, compatible_judge, fake_generate


def cached_preferences(path: Path) -> list:
    return [row["preference"] for row in json.loads(path.read_text())]


def test_garbage_then_http_500_then_valid_judge_reasks_exactly_the_invalid_pairs(
    tmp_path, fake_judge, monkeypatch
):
    monkeypatch.setenv("JUDGE_API_KEY", "token")
    cfg = compatible_judge(fake_judge.url)
    generated, reference = fake_generate(tmp_path, n=5, broken=2)
    store, cache = Store(tmp_path / "store"), Store(tmp_path / "cache")

    fake_judge.garbage = {BROKEN}
    with pytest.raises(JudgeError) as failed:
        alpaca_eval_stage(generated, reference, cfg, store, cache)
    message = str(failed.value)
    assert "judge=openai-compatible: 2 of 5 pairs got an invalid verdict" in message
    assert "2 answers were not a preference in [1, 2]" in message
    assert "I cannot compare these" in message and "annotations.json" in message
    assert fake_judge.answered == {"valid": 3, "garbage": 2, "http500": 0}
    (partial,) = (tmp_path / "store").glob("alpaca_eval-*.partial")
    prefs = cached_preferences(partial / "annotations.json")
    assert len(prefs) == 3 and all(1 <= p <= 2 for p in prefs)  # no -1, no null

    fake_judge.garbage, fake_judge.fail_next = set(), 2  # repaired, but overloaded at first
    result = alpaca_eval_stage(generated, reference, cfg, store, cache)
    assert fake_judge.answered == {"valid": 5, "garbage": 2, "http500": 2}  # only the 2 re-asked
    assert result.metrics["n_total"] == 5 and not result.reused
    scored = json.loads((result.path / "scored.json").read_text())
    want = 2 - math.exp(-0.4) / (math.exp(-0.4) + math.exp(-1.1))  # the fake's m/M logprobs
    for s in scored:  # alpaca_eval shows each pair in a random order and flips the verdict back
        assert min(abs(s["preference"] - want), abs(s["preference"] - (3 - want))) < 1e-9
    assert len(cached_preferences(result.path / "annotations.json")) == 5


def local_fn(answers: dict):
    """A local judge's fn_completions: garbage for prompts mentioning BROKEN while broken."""

    def completions(prompts, **_):
        answers["asked"] += len(prompts)
        return {
            "completions": [
                "Hmm, no idea" if answers["broken"] and BROKEN in p else "Output (b)"
                for p in prompts
            ]
        }

    return completions


def pairs(n: int, broken: int) -> list[dict]:
    return [
        {
            "instruction": f"Q{i}{' ' + BROKEN if i < broken else ''}",
            "output_1": f"ref {i}",
            "output_2": f"model {i}",
            "generator_1": "ref",
            "generator_2": "model",
        }
        for i in range(n)
    ]


def test_local_judge_garbage_is_not_cached_and_only_those_pairs_are_asked_again(tmp_path):
    cfg, cache = composed("judge=local_tiny").judge, Store(tmp_path / "cache")
    answers = {"asked": 0, "broken": True}
    with pytest.raises(
        JudgeError,
        match=r"judge=local-tiny: 2 of 5 pairs got an invalid "
        r"verdict \(4 answers.*'Hmm, no idea'",
    ):
        judge_pairs(annotator(cfg, tmp_path, cache, local_fn(answers)), pairs(5, 2), True)
    assert answers["asked"] == 10  # 5 pairs x 2 orders
    assert cached_preferences(tmp_path / "annotations.json") == [2.0] * 6  # 3 pairs, 2 orders

    answers.update(asked=0, broken=False)
    scored = judge_pairs(annotator(cfg, tmp_path, cache, local_fn(answers)), pairs(5, 2), True)
    assert answers["asked"] == 4  # the 2 broken pairs, both orders, nothing else
    assert [s["preference"] for s in scored] == [1.5] * 5  # "(b)" in both orders: a draw
    assert len(cached_preferences(tmp_path / "annotations.json")) == 10


def test_a_cache_poisoned_by_alpaca_eval_defaults_is_cleaned_and_reasked(tmp_path, capsys):
    from alpaca_eval.annotators import PairwiseAnnotator

    from pipeline.judging.kinds.local import ANNOTATORS_DIR

    cfg, cache = composed("judge=local_tiny").judge, Store(tmp_path / "cache")
    answers = {"asked": 0, "broken": True}
    plain = PairwiseAnnotator(  # what earlier versions of the pipeline ran: -1 cached for garbage
        annotators_config=str(ANNOTATORS_DIR / cfg.annotator / "configs.yaml"),
        caching_path=str(tmp_path / "annotations.json"),
        is_randomize_output_order=False,
        fn_completions=local_fn(answers),
    )
    plain.annotate_pairs(pairs(4, 3))
    assert sorted(cached_preferences(tmp_path / "annotations.json")) == [-1, -1, -1, 2]

    answers.update(asked=0, broken=False)
    scored = judge_pairs(annotator(cfg, tmp_path, cache, local_fn(answers)), pairs(4, 3), False)
    assert answers["asked"] == 3 and [s["preference"] for s in scored] == [2.0] * 4
    assert "dropped 3 cached entries that are not a verdict in [1, 2]" in capsys.readouterr().out
    assert cached_preferences(tmp_path / "annotations.json") == [2.0] * 4


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_corrupt_cache_file_is_quarantined_and_rebuilt(tmp_path, capsys, damage):
    cfg, cache = composed("judge=local_tiny").judge, Store(tmp_path / "cache")
    answers = {"asked": 0, "broken": False}
    judge_pairs(annotator(cfg, tmp_path, cache, local_fn(answers)), pairs(3, 0), True)
    path = tmp_path / "annotations.json"
    text = path.read_text()
    bad = "" if damage == "empty" else text[: len(text) // 2]  # a kill or a full disk mid-write
    path.write_text(bad)

    answers["asked"] = 0
    scored = judge_pairs(annotator(cfg, tmp_path, cache, local_fn(answers)), pairs(3, 0), True)
    assert answers["asked"] == 6 and [s["preference"] for s in scored] == [1.5] * 3
    (aside,) = tmp_path.glob("annotations.json.corrupt-*")
    assert aside.read_text() == bad  # kept as it was, for inspection
    out = capsys.readouterr().out
    assert f"verdict cache {path} is unreadable" in out and f"moved aside to {aside}" in out
    assert len(cached_preferences(path)) == 6
    assert not list(tmp_path.glob(".annotations.json.*.tmp"))  # written atomically, no leftovers
