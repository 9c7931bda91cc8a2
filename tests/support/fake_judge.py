"""FakeJudge: an OpenAI-compatible chat-completions server on 127.0.0.1 answering the logprobs
call alpaca_eval's openai_completions makes (the judge-cache and secrets tests; the `fake_judge`
fixture is in tests/conftest.py), and a fake generate stage's outputs to judge."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.judging.judges import Reference
from pipeline.store.store import StageResult
from tests.support.composed import composed

BROKEN = "broken"  # instructions containing this get a garbage answer while the judge is broken


def _token(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


class FakeJudge:
    """Answers m/M logprobs (a valid weighted verdict); `garbage` prompts get text without them,
    and the first `fail_next` requests get HTTP 500 (the OpenAI client retries those). With
    `reject_key`, every request gets HTTP 401 whose error message echoes the key it was sent, in
    full, as some OpenAI-compatible servers and proxies do."""

    def __init__(self):
        self.lock = threading.Lock()
        self.garbage: set[str] = set()
        self.fail_next = 0
        self.reject_key = False
        self.answered = {"valid": 0, "garbage": 0, "http500": 0}
        self.rejected = 0  # requests answered 401 (reject_key)
        self.auth: list[str] = []  # the Authorization header of every request
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, request: dict, auth: str | None = None) -> tuple[int, dict]:
        prompt = json.dumps(request.get("messages", ""))
        with self.lock:
            if self.reject_key:
                self.rejected += 1
                key = (auth or "").removeprefix("Bearer ")
                message = (
                    f"Incorrect API key provided: {key}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys."
                )
                return 401, {
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                }
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
            logprobs = {
                "content": [
                    {**_token("m", -0.4), "top_logprobs": [_token("m", -0.4), _token("M", -1.1)]}
                ]
            }
        choice = {
            "index": 0,
            "finish_reason": "length",
            "logprobs": logprobs,
            "message": {"role": "assistant", "content": message},
        }
        return 200, {
            "id": "fake",
            "object": "chat.completion",
            "created": 0,
            "model": request.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                auth = self.headers.get("Authorization")
                with judge.lock:
                    judge.auth.append(auth)
                status, answer = judge._answer(json.loads(body or b"{}"), auth)
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


def compatible_judge(url: str, key_env: str = "JUDGE_API_KEY"):
    cfg = composed("judge=openai_compatible").judge
    OmegaConf.update(cfg, "settings.base_url", url)
    OmegaConf.update(cfg, "settings.served_model", "fake-judge")
    OmegaConf.update(cfg, "settings.api_key_env", key_env)
    return cfg


def fake_generate(tmp_path: Path, n: int, broken: int) -> tuple[StageResult, Reference]:
    """A generate stage's outputs (the first `broken` instructions mention BROKEN), references."""
    outputs = [
        {
            "instruction": f"Question {i}{' ' + BROKEN if i < broken else ''}?",
            "output": f"model answer {i} " * (i + 1),
            "generator": "model",
            "dataset": "t",
        }
        for i in range(n)
    ]
    stage_dir = tmp_path / "generate-fake-0123456789ab"
    stage_dir.mkdir()
    (stage_dir / "outputs.json").write_text(json.dumps(outputs))
    refs = [
        {"instruction": o["instruction"], "output": f"reference {i}"} for i, o in enumerate(outputs)
    ]
    return (
        StageResult(stage_dir.name, stage_dir, {}, reused=True),
        Reference("ref", "refkey0123456789", refs),
    )
