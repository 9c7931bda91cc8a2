"""A judge that answers garbage (or fails) never poisons the verdict cache, and a corrupt cache
file is moved aside and rebuilt.

FakeJudge is an OpenAI-compatible chat-completions server on 127.0.0.1 answering the logprobs
call alpaca_eval's openai_completions makes (test_secrets.py uses it too).
"""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from composed import composed
from pipeline.judging.judges import JudgeError, Reference, annotator, judge_pairs
from pipeline.store.store import StageResult, Store
from pipeline.stages.alpaca_eval_stage import alpaca_eval_stage

BROKEN = "broken"  # instructions containing this get a garbage answer while the judge is broken


def _token(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


class FakeJudge:
    """Answers m/M logprobs (a valid weighted verdict); `garbage` prompts get text without them,
    and the first `fail_next` requests get HTTP 500 (the OpenAI client retries those)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.garbage: set[str] = set()
        self.fail_next = 0
        self.answered = {"valid": 0, "garbage": 0, "http500": 0}
        self.auth: list[str] = []  # the Authorization header of every request
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, request: dict) -> tuple[int, dict]:
        prompt = json.dumps(request.get("messages", ""))
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                self.answered["http500"] += 1
                return 500, {"error": {"message": "fake overload", "type": "server_error"}}
            kind = "garbage" if any(g in prompt for g in self.garbage) else "valid"
            self.answered[kind] += 1
        if kind == "garbage":
            message, logprobs = "I cannot compare these", None
        else:
            message = "m"
            logprobs = {"content": [{**_token("m", -0.4),
                                     "top_logprobs": [_token("m", -0.4), _token("M", -1.1)]}]}
        choice = {"index": 0, "finish_reason": "length", "logprobs": logprobs,
                  "message": {"role": "assistant", "content": message}}
        return 200, {"id": "fake", "object": "chat.completion", "created": 0,
                     "model": request.get("model"), "choices": [choice],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with judge.lock:
                    judge.auth.append(self.headers.get("Authorization"))
                status, answer = judge._answer(json.loads(body or b"{}"))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "1")  # the client's retry waits 1 ms
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_judge():
    judge = FakeJudge()
    yield judge
    judge.close()


def compatible_judge(url: str, key_env: str = "JUDGE_API_KEY"):
    cfg = composed("judge=openai_compatible").judge
    OmegaConf.update(cfg, "base_url", url)
    OmegaConf.update(cfg, "served_model", "fake-judge")
    OmegaConf.update(cfg, "api_key_env", key_env)
    return cfg


def fake_generate(tmp_path: Path, n: int, broken: int) -> tuple[StageResult, Reference]:
    """A generate stage's outputs (the first `broken` instructions mention BROKEN) and references."""
    outputs = [{"instruction": f"Question {i}{' ' + BROKEN if i < broken else ''}?",
                "output": f"model answer {i} " * (i + 1), "generator": "model", "dataset": "t"}
               for i in range(n)]
    stage_dir = tmp_path / "generate-fake-0123456789ab"
    stage_dir.mkdir()
    (stage_dir / "outputs.json").write_text(json.dumps(outputs))
    refs = [{"instruction": o["instruction"], "output": f"reference {i}"}
            for i, o in enumerate(outputs)]
    return (StageResult(stage_dir.name, stage_dir, {}, reused=True),
            Reference("ref", "refkey0123456789", refs))


def cached_preferences(path: Path) -> list:
    return [row["preference"] for row in json.loads(path.read_text())]


def test_garbage_then_http_500_then_valid_judge_reasks_exactly_the_invalid_pairs(
        tmp_path, fake_judge, monkeypatch):
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
        return {"completions": ["Hmm, no idea" if answers["broken"] and BROKEN in p else
                                "Output (b)" for p in prompts]}

    return completions


def pairs(n: int, broken: int) -> list[dict]:
    return [{"instruction": f"Q{i}{' ' + BROKEN if i < broken else ''}", "output_1": f"ref {i}",
             "output_2": f"model {i}", "generator_1": "ref", "generator_2": "model"}
            for i in range(n)]


def test_local_judge_garbage_is_not_cached_and_only_those_pairs_are_asked_again(tmp_path):
    cfg, cache = composed("judge=local_tiny").judge, Store(tmp_path / "cache")
    answers = {"asked": 0, "broken": True}
    with pytest.raises(JudgeError, match=r"judge=local-tiny: 2 of 5 pairs got an invalid "
                                         r"verdict \(4 answers.*'Hmm, no idea'"):
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

    from pipeline.judging.judges import ANNOTATORS_DIR

    cfg, cache = composed("judge=local_tiny").judge, Store(tmp_path / "cache")
    answers = {"asked": 0, "broken": True}
    plain = PairwiseAnnotator(  # what earlier versions of the pipeline ran: -1 cached for garbage
        annotators_config=str(ANNOTATORS_DIR / cfg.annotator / "configs.yaml"),
        caching_path=str(tmp_path / "annotations.json"), is_randomize_output_order=False,
        fn_completions=local_fn(answers))
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
