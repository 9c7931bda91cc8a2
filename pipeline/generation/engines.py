"""Generation engines behind one subprocess worker: hf (transformers generate) and vllm.

vLLM pins its own torch and transformers, so it runs in a Python environment of its own
(generate.vllm.python). The generate stage writes a request into its work dir and starts

    <python> -m pipeline.generation.engines worker <request.json> <response.json>

with this project's root on PYTHONPATH. This module imports only the standard library at top
level, since that environment has none of the project's dependencies; an engine imports its
library when it runs. The hf engine behind the same entry point is the in-process path
(generation.batched.generate_batched) and tests the protocol on a CPU.

request.json   {"protocol": 1, "engine": "hf" | "vllm", "model_dir": str, "dtype": str,
                "prompts": [str, ...] (formatted prompt texts, in order),
                "decoding": {"greedy": true, "max_new_tokens": int, "max_total_length": int,
                             "repetition_penalty": float, "min_new_tokens": int,
                             "batch_size": int (hf only: vLLM schedules its own batches)},
                "options": {"tensor_parallel_size": int, "gpu_memory_utilization": float,
                            "max_model_len": int | null} (vllm only)}
response.json  {"protocol": 1, "engine": str, "library": "<name> <version>",
                "outputs": [str, ...], "new_tokens": [int, ...] (both in prompt order),
                "runtime_s": float (generation only, model load excluded)}
           or  {"protocol": 1, "error": "<ExceptionType>: <message>"} when the engine raised.
The worker's stdout and stderr go to worker.log beside the request; any failure (an error
response, a non-zero exit, a missing or malformed response) raises EngineError naming that log
and quoting its last lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from pipeline.text.logs import log_tail

PROTOCOL = 1
ENGINES = ("hf", "vllm")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV_HINT = ("create one (python -m venv ~/vllm-env && ~/vllm-env/bin/pip install vllm) and set "
             "generate.vllm.python=~/vllm-env/bin/python, or use generate.engine=hf")


class EngineError(RuntimeError):
    """The generation worker failed; the message names its log."""


def make_request(engine: str, model_dir: str, dtype: str, prompts: list[str], *,
                 max_new_tokens: int, max_total_length: int, repetition_penalty: float,
                 min_new_tokens: int = 0, batch_size: int = 16,
                 options: dict | None = None) -> dict:
    """A worker request: greedy decoding of `prompts` (already formatted) with these caps."""
    decoding = {"greedy": True, "max_new_tokens": int(max_new_tokens),
                "max_total_length": int(max_total_length),
                "repetition_penalty": float(repetition_penalty),
                "min_new_tokens": int(min_new_tokens), "batch_size": int(batch_size)}
    # The worker may not share this process's working directory: send a local dir absolute.
    local = Path(model_dir)
    model_dir = str(local.resolve()) if local.exists() else str(model_dir)
    return {"protocol": PROTOCOL, "engine": engine, "model_dir": model_dir, "dtype": dtype,
            "prompts": list(prompts), "decoding": decoding, "options": dict(options or {})}


def resolve_python(python: str | None) -> str | None:
    """The interpreter's path (`~` expanded, bare names looked up on PATH); None if unusable."""
    return shutil.which(os.path.expanduser(python)) if python else None


def generate_in_subprocess(engine: str, python: str, request: dict, work: Path,
                           timeout: float | None = None) -> dict:
    """Run `request` with `engine` in a worker started by `python`; return the response.

    Writes request.json, response.json and worker.log into `work`.
    """
    exe = resolve_python(python)
    if exe is None:
        raise EngineError(f"generate.vllm.python={python!r} is not an executable interpreter; "
                          + VENV_HINT)
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    req, resp, log = work / "request.json", work / "response.json", work / "worker.log"
    resp.unlink(missing_ok=True)  # a stale response must never pass for this run's
    _write_json(req, {**request, "engine": engine})
    # Only the project on the path: an inherited PYTHONPATH could shadow the pinned torch of
    # the engine's environment with this one's.
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    cmd = [exe, "-m", "pipeline.generation.engines", "worker", str(req), str(resp)]
    with open(log, "w", encoding="utf-8") as fh:
        try:
            done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise EngineError(
                _failure(engine, f"ran past {timeout} s and was stopped", log)) from None
    response = _read_response(resp)
    if response is not None and "error" in response:
        raise EngineError(_failure(engine, f"raised {response['error']}", log))
    if done.returncode != 0:
        raise EngineError(_failure(engine, f"exited with code {done.returncode}", log))
    if response is None:
        raise EngineError(_failure(engine, f"wrote no readable response {resp}", log))
    n = len(request["prompts"])
    if len(response.get("outputs", ())) != n or len(response.get("new_tokens", ())) != n:
        raise EngineError(_failure(engine, f"answered {len(response.get('outputs', ()))} of "
                                           f"{n} prompts", log))
    return response



def _failure(engine: str, what: str, log: Path) -> str:
    return f"generation worker (engine {engine}) {what}; {log_tail(log)}"


def _read_response(path: Path) -> dict | None:
    try:
        response = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return response if isinstance(response, dict) else None


def _write_json(path: Path, obj) -> None:
    # Written whole then renamed, so a reader never sees half a response.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)



def visible_cuda_gpus() -> int:
    """CUDA GPUs this process may use (models.devices); imported here, not at the top, because
    the worker side of this module runs on the standard library alone."""
    from pipeline.models.devices import visible_cuda_gpus as count

    return count()


def _has_module(python: str, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    done = subprocess.run([python, "-c", probe], capture_output=True, timeout=120, check=False)
    return done.returncode == 0


def check_engine(engine: str, python: str | None = None, tensor_parallel_size: int = 1) -> None:
    """Fail before any work when the engine cannot run here; the message says how to fix it."""
    if engine not in ENGINES:
        raise ValueError(f"generate.engine={engine!r} is unknown; use one of {ENGINES}")
    if engine == "hf":
        return
    if not python:
        raise ValueError("generate.engine=vllm runs vLLM in its own Python environment (vLLM "
                         "pins its own torch), and generate.vllm.python is not set: " + VENV_HINT)
    exe = resolve_python(python)
    if exe is None:
        raise ValueError(f"generate.vllm.python={python!r} is not an executable file: "
                         + VENV_HINT)
    if not _has_module(exe, "vllm"):
        raise ValueError(f"generate.vllm.python={python!r} has no vllm installed: run "
                         f"`{exe} -m pip install vllm`, or use generate.engine=hf")
    gpus = visible_cuda_gpus()
    if gpus == 0:
        raise ValueError("generate.engine=vllm needs a CUDA GPU and none is visible here "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): "
                         "run the generate stage on a GPU node (e.g. launcher=slurm), or set "
                         "generate.engine=hf")
    if tensor_parallel_size > gpus:
        raise ValueError(f"generate.vllm.tensor_parallel_size={tensor_parallel_size} needs as "
                         f"many GPUs; {gpus} visible: lower it or run on more GPUs")


def _hf_engine(request: dict) -> dict:
    import transformers

    from pipeline.models.devices import compute_device
    from pipeline.models.loading import load_model_and_tokenizer
    from pipeline.generation.batched import generate_batched

    dec = request["decoding"]
    model, tok = load_model_and_tokenizer(request["model_dir"], request["dtype"],
                                          device=compute_device())
    started = time.time()
    outputs, counts = generate_batched(
        model, tok, request["prompts"], dec["batch_size"], dec["max_new_tokens"],
        dec["max_total_length"], dec["repetition_penalty"], dec["min_new_tokens"],
        desc="generate (hf worker)")
    return {"outputs": outputs, "new_tokens": counts, "runtime_s": time.time() - started,
            "library": f"transformers {transformers.__version__}"}


def _vllm_engine(request: dict) -> dict:
    import vllm
    from vllm import LLM, SamplingParams

    dec, opt = request["decoding"], request["options"]
    limit = min(dec["max_total_length"], opt.get("max_model_len") or dec["max_total_length"])
    llm = LLM(model=request["model_dir"], dtype=request["dtype"], seed=0, max_model_len=limit,
              tensor_parallel_size=opt.get("tensor_parallel_size", 1),
              gpu_memory_utilization=opt.get("gpu_memory_utilization", 0.9))
    tok, low = llm.get_tokenizer(), max(dec["min_new_tokens"], 1)
    params = []
    for text in request["prompts"]:
        # The cap is per prompt (vLLM does not pad), like the hf engine's per-batch cap.
        room = limit - len(tok(text)["input_ids"])
        if room < low:
            raise ValueError(f"a prompt leaves {room} new tokens within max total length "
                             f"{limit}; at least {low} are needed")
        params.append(SamplingParams(
            temperature=0.0, max_tokens=min(dec["max_new_tokens"], room),
            min_tokens=dec["min_new_tokens"], repetition_penalty=dec["repetition_penalty"],
            skip_special_tokens=True))
    started = time.time()
    results = llm.generate(request["prompts"], params)  # returned in prompt order
    # token_ids include the EOS that ended an answer, as the hf engine's counts do.
    return {"outputs": [r.outputs[0].text.strip() for r in results],
            "new_tokens": [len(r.outputs[0].token_ids) for r in results],
            "runtime_s": time.time() - started, "library": f"vllm {vllm.__version__}"}


RUNNERS = {"hf": _hf_engine, "vllm": _vllm_engine}


def run_worker(request_path: str, response_path: str) -> int:
    """Worker entry: answer the request, write the response; exit status 0 only on success."""
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    try:
        if request.get("protocol") != PROTOCOL:
            raise ValueError(f"request protocol {request.get('protocol')!r}, worker speaks "
                             f"{PROTOCOL}: the worker's project copy is out of date")
        if request.get("engine") not in RUNNERS:
            raise ValueError(f"engine {request.get('engine')!r} is unknown; use one of {ENGINES}")
        answer = RUNNERS[request["engine"]](request)
    except Exception as err:  # noqa: BLE001 (any failure goes to the parent, traceback to the log)
        traceback.print_exc()
        _write_json(Path(response_path), {"protocol": PROTOCOL,
                                          "error": f"{type(err).__name__}: {err}"})
        return 1
    answer["new_tokens"] = [int(c) for c in answer["new_tokens"]]
    _write_json(Path(response_path),
                {"protocol": PROTOCOL, "engine": request["engine"], **answer})
    return 0


def main(argv: list[str]) -> int:
    """Command line: `worker <request.json> <response.json>`."""
    if len(argv) != 3 or argv[0] != "worker":
        print("usage: python -m pipeline.generation.engines worker <request.json> <response.json>",
              file=sys.stderr)
        return 2
    return run_worker(argv[1], argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
