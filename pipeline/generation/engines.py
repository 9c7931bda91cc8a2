"""Generation engines behind one subprocess worker: hf (transformers generate) and vllm.

vLLM pins its own torch and transformers, so it runs in a Python environment of its own
(generate.settings.python with generate.engine=vllm). The generate stage writes a request into
its work dir and starts

    <python> -m pipeline.generation.worker worker <request.json> <response.json>

with this project's root on PYTHONPATH. This module imports only the standard library at top
level, since that environment has none of the project's dependencies; an engine imports its
library when it runs. The hf engine behind the same entry point is the in-process path
(generation.batched.generate_batched) and tests the protocol on a CPU.

request.json   {"protocol": 1, "engine": "hf" | "vllm", "model_dir": str, "dtype": str,
                "prompts": [str, ...] (formatted prompt texts, in order),
                "decoding": {"greedy": true, "max_new_tokens": int, "max_total_length": int,
                             "repetition_penalty": float, "min_new_tokens": int,
                             "batch_size": int (hf only: vLLM schedules its own batches)},
                "options": {the engine's settings (generate.settings) less `python`, e.g. vllm:
                            "tensor_parallel_size": int, "gpu_memory_utilization": float,
                            "max_model_len": int | null}}
response.json  {"protocol": 1, "engine": str, "library": "<name> <version>",
                "outputs": [str, ...], "new_tokens": [int, ...] (both in prompt order),
                "runtime_s": float (generation only, model load excluded)}
           or  {"protocol": 1, "error": "<ExceptionType>: <message>"} when the engine raised.
The worker's stdout and stderr go to worker.log beside the request; any failure (an error
response, a non-zero exit, a missing or malformed response) raises EngineError naming that log
and quoting its last lines.

Engines are registered by name (generate.engine): one module each in
pipeline/generation/engine_kinds/, an Engine subclass decorated with @register_engine, found with
pkgutil, its own settings a dataclass beside it (Settings; generate.settings in the config).
Those modules, like this one, import only the standard library at top level.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import fields
from pathlib import Path

from pipeline.logs import log_tail
from pipeline.registry import NoSettings, Registry
from pipeline.store.key_rules import engine_params

PROTOCOL = 1
PROJECT_ROOT = Path(__file__).resolve().parents[2]
VENV_HINT = (
    "create one (python -m venv ~/vllm-env && ~/vllm-env/bin/pip install vllm) and set "
    "generate.settings.python=~/vllm-env/bin/python, or use generate.engine=hf"
)
# Field metadata of a setting that is a location, not a setting of what is computed (an
# interpreter's path): it never enters the generate key.
LOCATION = {"hashed": False}


class EngineError(RuntimeError):
    """The generation worker failed; the message names its log."""


class Engine:
    """One generation engine: its checks and key params (parent side), its generation."""

    name = "?"  # set by @register_engine
    Settings: type = NoSettings  # the dataclass of generate.settings for this engine

    def settings(self, gen_cfg):
        """generate.settings, typed as this engine's Settings (checked; defaults filled in)."""
        return ENGINES.settings(gen_cfg)

    def check(self, gen_cfg) -> None:
        """Fail before any work when the engine cannot run here; say how to fix it."""

    def gpus_needed(self, gen_cfg) -> int:
        """GPUs a job must ask for beside training's (the dry run and the SLURM launcher)."""
        return 0

    def key_params(self, settings: dict) -> dict:
        """What of the engine enters the generate key: its name and its typed settings (plain),
        never a location (a field with LOCATION metadata, such as the interpreter path)."""
        places = {f.name for f in fields(self.Settings) if f.metadata.get("hashed") is False}
        return engine_params(self.name, {k: v for k, v in settings.items() if k not in places})

    def generate(
        self,
        model_dir: Path,
        texts: list[str],
        gen_cfg,
        dtype: str,
        max_new: int,
        min_new: int,
        label: str,
        work: Path,
    ) -> tuple[list, list, float, dict]:
        """(answers, new-token counts, generation seconds, metrics): by default through a worker
        started by generate.settings.python, with generate.settings (less python) as options."""
        from omegaconf import OmegaConf

        options = OmegaConf.to_container(self.settings(gen_cfg), resolve=True)
        python = options.pop("python", None)
        request = make_request(
            self.name,
            str(model_dir),
            dtype,
            texts,
            max_new_tokens=max_new,
            max_total_length=gen_cfg.max_total_length,
            min_new_tokens=min_new,
            repetition_penalty=gen_cfg.repetition_penalty,
            batch_size=gen_cfg.batch_size,
            options=options,
        )
        started = time.time()
        response = generate_in_subprocess(self.name, python, request, work / "engine")
        metrics = {
            "gen_engine": self.name,
            "gen_engine_library": response["library"],
            "gen_worker_wall_s": round(time.time() - started, 2),
        }
        # runtime_s: generation only, model load excluded; the worker's wall in the metrics
        return response["outputs"], response["new_tokens"], response["runtime_s"], metrics

    def run(self, request: dict) -> dict:
        """Worker side: answer `request` (imports the engine's library only now)."""
        raise NotImplementedError


ENGINES = Registry(
    "generate.engine",
    "engines",
    "pipeline.generation.engine_kinds",
    lambda name: (
        f"A new engine is pipeline/generation/engine_kinds/{name}.py (an Engine subclass "
        f"decorated with @register_engine({name!r})), its settings a Settings dataclass "
        "beside it (generate.settings in the config)"
    ),
)


def register_engine(name: str):
    """Class decorator: an instance of the Engine subclass becomes generate.engine=`name`."""
    return ENGINES.register(name, instantiate=True)


def engine_names() -> tuple[str, ...]:
    """Every registered generate.engine."""
    return ENGINES.names()


def engine(name: str) -> Engine:
    """The engine registered as `name`; unknown: ValueError naming them and what to add."""
    return ENGINES.get(name)


def make_request(
    engine: str,
    model_dir: str,
    dtype: str,
    prompts: list[str],
    *,
    max_new_tokens: int,
    max_total_length: int,
    repetition_penalty: float,
    min_new_tokens: int = 0,
    batch_size: int = 16,
    options: dict | None = None,
) -> dict:
    """A worker request: greedy decoding of `prompts` (already formatted) with these caps."""
    decoding = {
        "greedy": True,
        "max_new_tokens": int(max_new_tokens),
        "max_total_length": int(max_total_length),
        "repetition_penalty": float(repetition_penalty),
        "min_new_tokens": int(min_new_tokens),
        "batch_size": int(batch_size),
    }
    # The worker may not share this process's working directory: send a local dir absolute.
    local = Path(model_dir)
    model_dir = str(local.resolve()) if local.exists() else str(model_dir)
    return {
        "protocol": PROTOCOL,
        "engine": engine,
        "model_dir": model_dir,
        "dtype": dtype,
        "prompts": list(prompts),
        "decoding": decoding,
        "options": dict(options or {}),
    }


def resolve_python(python: str | None) -> str | None:
    """The interpreter's path (`~` expanded, bare names looked up on PATH); None if unusable."""
    return shutil.which(os.path.expanduser(python)) if python else None


def generate_in_subprocess(
    engine: str, python: str, request: dict, work: Path, timeout: float | None = None
) -> dict:
    """Run `request` with `engine` in a worker started by `python`; return the response.

    Writes request.json, response.json and worker.log into `work`.
    """
    exe = resolve_python(python)
    if exe is None:
        raise EngineError(
            f"generate.settings.python={python!r} is not an executable interpreter; " + VENV_HINT
        )
    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    req, resp, log = work / "request.json", work / "response.json", work / "worker.log"
    resp.unlink(missing_ok=True)  # a stale response must never pass for this run's
    write_json(req, {**request, "engine": engine})
    # Only the project on the path: an inherited PYTHONPATH could shadow the pinned torch of
    # the engine's environment with this one's.
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    cmd = [exe, "-m", "pipeline.generation.worker", "worker", str(req), str(resp)]
    with open(log, "w", encoding="utf-8") as fh:
        try:
            done = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise EngineError(
                _failure(engine, f"ran past {timeout} s and was stopped", log)
            ) from None
    response = _read_response(resp)
    if response is not None and "error" in response:
        raise EngineError(_failure(engine, f"raised {response['error']}", log))
    if done.returncode != 0:
        raise EngineError(_failure(engine, f"exited with code {done.returncode}", log))
    if response is None:
        raise EngineError(_failure(engine, f"wrote no readable response {resp}", log))
    n = len(request["prompts"])
    if len(response.get("outputs", ())) != n or len(response.get("new_tokens", ())) != n:
        raise EngineError(
            _failure(engine, f"answered {len(response.get('outputs', ()))} of {n} prompts", log)
        )
    return response


def _failure(engine: str, what: str, log: Path) -> str:
    return f"generation worker (engine {engine}) {what}; {log_tail(log)}"


def _read_response(path: Path) -> dict | None:
    try:
        response = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return response if isinstance(response, dict) else None


def write_json(path: Path, obj) -> None:
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


def check_engine(gen_cfg) -> None:
    """Fail before any work when generate.engine is unknown, its settings are not its own (an
    unknown key, a wrong type), or it cannot run here."""
    chosen = engine(gen_cfg.engine)
    ENGINES.settings(gen_cfg)
    chosen.check(gen_cfg)


def engine_settings(gen_cfg):
    """generate.settings typed as generate.engine's Settings, in place (see Registry.settings)."""
    return ENGINES.settings(gen_cfg)


def _hf_engine(request: dict) -> dict:
    """The hf engine's worker side (kept by name: tests call it)."""
    return engine("hf").run(request)
