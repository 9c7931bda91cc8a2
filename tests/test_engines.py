"""Generation engines: the worker protocol (hf engine on the tiny model, CPU), its failures, the
generate stage through the worker, vLLM on a GPU where one and vllm exist; the generate
stage's key and check(cfg): engine=hf keeps every key computed before engines existed,
engine=vllm and its settings enter the key, every vLLM misconfiguration is explained, and the
GPU count of a CPU-only torch comes from the driver."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import pipeline.stages.generate as generate_stage
from pipeline.data.loading import format_prompt, load_prompts
from pipeline.generation import engines
from pipeline.generation.batched import generate_batched
from pipeline.generation.engines import EngineError, generate_in_subprocess, make_request
from pipeline.models import devices
from pipeline.models.loading import base_model_dir, load_model_and_tokenizer
from pipeline.store.store import StageResult, Store, stage_key
from tests.support.composed import composed
from tests.support.skips import needs_cuda, needs_vllm

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = "finetune-tiny-llama_base-0123456789ab"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, model dir, formatted prompts) of model=tiny generate=tiny.

    The random tiny model answers every prompt alike ("de de de"); weights drawn wider make
    answers differ and one end early, so a mix-up of order or counts would show.
    """
    cfg = composed("model=tiny", "generate=tiny")
    model_dir = scrambled(cfg, tmp_path_factory.mktemp("tiny"))
    prompts = load_prompts(cfg.generate.prompts, cfg.generate.dataset_name, cfg.generate.limit)
    return cfg, model_dir, [format_prompt(p, for_training=False) for p in prompts]


def scrambled(cfg, root: Path) -> str:
    """The tiny base model of `cfg` with its matrices redrawn from N(0, 0.5^2), saved in root."""
    base = base_model_dir(cfg.model, Store(root / "cache"))
    model, tok = load_model_and_tokenizer(base, cfg.model.dtype)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return str(root / "model")


def request_of(cfg, model_dir, texts, **decoding):
    gen = cfg.generate
    settings = {
        "max_new_tokens": gen.max_new_tokens,
        "max_total_length": gen.max_total_length,
        "repetition_penalty": gen.repetition_penalty,
        "batch_size": gen.batch_size,
    }
    return make_request("hf", model_dir, cfg.model.dtype, texts, **(settings | decoding))


def test_worker_module_needs_only_the_standard_library(tmp_path):
    # -S: no site-packages at all, as in a venv without this project's dependencies.
    req, resp = tmp_path / "request.json", tmp_path / "response.json"
    req.write_text(
        json.dumps(
            make_request(
                "nonesuch",
                "m",
                "float32",
                ["p"],
                max_new_tokens=1,
                max_total_length=8,
                repetition_penalty=1.0,
            )
        )
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    worker = [
        sys.executable,
        "-S",
        "-m",
        "pipeline.generation.worker",
        "worker",
        str(req),
        str(resp),
    ]
    done = subprocess.run(worker, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stderr
    assert json.loads(resp.read_text()) == {
        "protocol": 1,
        "error": "ValueError: engine 'nonesuch' is unknown; registered: hf, vllm",
    }
    usage = subprocess.run(
        [sys.executable, "-S", "-m", "pipeline.generation.worker"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert usage.returncode == 2 and "usage:" in usage.stderr


@pytest.mark.e2e  # a whole command in fresh interpreters: tens of seconds
def test_hf_worker_gives_exactly_the_in_process_texts_and_counts(tiny, tmp_path):
    cfg, model_dir, texts = tiny
    model, tok = load_model_and_tokenizer(model_dir, cfg.model.dtype)
    gen = cfg.generate

    def in_process(min_new):
        return generate_batched(
            model,
            tok,
            texts,
            gen.batch_size,
            gen.max_new_tokens,
            gen.max_total_length,
            gen.repetition_penalty,
            min_new,
        )

    free, want = in_process(0), in_process(12)
    assert free[1] == [16, 9, 16, 16, 16, 16] and len(set(free[0])) == 6  # one stops at EOS
    min_new = 12  # the worker must pass it on: without it the second answer would stop at 9
    request = request_of(cfg, model_dir, texts, min_new_tokens=min_new)
    got = generate_in_subprocess("hf", sys.executable, request, tmp_path)
    assert (got["outputs"], got["new_tokens"]) == (want[0], want[1])
    assert got["new_tokens"] == [16] * 6 and got["outputs"][1].startswith(free[0][1])
    assert got["library"].startswith("transformers ") and got["runtime_s"] > 0
    sent = json.loads((tmp_path / "request.json").read_text())
    assert sent["engine"] == "hf" and sent["prompts"] == texts
    assert sent["decoding"] == {
        "greedy": True,
        "max_new_tokens": 16,
        "max_total_length": 1024,
        "repetition_penalty": 1.2,
        "min_new_tokens": min_new,
        "batch_size": 4,
    }


def test_an_engine_error_names_the_worker_log_and_quotes_it(tiny, tmp_path):
    cfg, _, texts = tiny
    request = request_of(cfg, str(tmp_path / "no-such-model"), texts[:1])
    with pytest.raises(EngineError) as err:
        generate_in_subprocess("hf", sys.executable, request, tmp_path / "engine")
    log = tmp_path / "engine" / "worker.log"
    message = str(err.value)
    assert f"its log is {log}" in message and "raised ValueError: could not load model" in message
    assert "Traceback" in log.read_text() and "  | " in message  # the log's tail is quoted


def test_a_worker_crash_without_response_names_the_worker_log(tiny, tmp_path):
    cfg, model_dir, texts = tiny
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\necho 'CUDA error: out of memory' >&2\nexit 139\n")
    crashing.chmod(0o755)
    work = tmp_path / "engine"
    work.mkdir()
    (work / "response.json").write_text('{"outputs": ["stale"], "new_tokens": [1]}')
    with pytest.raises(EngineError) as err:
        generate_in_subprocess("vllm", str(crashing), request_of(cfg, model_dir, texts[:1]), work)
    message = str(err.value)
    assert "generation worker (engine vllm) exited with code 139" in message
    assert f"its log is {work / 'worker.log'}" in message
    assert "  | CUDA error: out of memory" in message
    assert not (work / "response.json").exists()  # the stale response was not taken


def test_a_missing_interpreter_is_named(tiny, tmp_path):
    cfg, model_dir, texts = tiny
    with pytest.raises(EngineError, match=r"generate.settings.python='/nonexistent/python' is not"):
        generate_in_subprocess(
            "vllm", "/nonexistent/python", request_of(cfg, model_dir, texts), tmp_path
        )


@pytest.mark.e2e  # a whole command in fresh interpreters: tens of seconds
def test_the_stage_through_the_worker_writes_the_same_outputs_json(tiny, tmp_path, monkeypatch):
    cfg, model_dir, _ = tiny
    # Relative paths, as the default paths.store=runs gives: the worker must still find them.
    monkeypatch.chdir(tmp_path)
    ft = Path("finetune")
    ft.mkdir()
    (ft / "model").symlink_to(model_dir)
    finetuned = StageResult(UPSTREAM, ft, {}, reused=True)
    store = Store(Path("store"))
    in_process = generate_stage.generate(finetuned, cfg.generate, cfg.model.dtype, store)

    # engine=vllm's path (request, worker, response) with the hf engine behind the worker.
    seen = {}

    def hf_behind_worker(engine, python, request, work):
        seen.update(engine=engine, python=python, options=request["options"])
        return generate_in_subprocess("hf", sys.executable, request, work)

    monkeypatch.setattr(engines, "generate_in_subprocess", hf_behind_worker)
    gen = OmegaConf.merge(cfg.generate, {"engine": "vllm"})
    gen.settings = {"python": "/venv/python"}  # vllm's own settings, in place of hf's (none)
    worker = generate_stage.generate(finetuned, gen, cfg.model.dtype, store)

    assert worker.key != in_process.key
    assert seen == {
        "engine": "vllm",
        "python": "/venv/python",
        "options": {
            "tensor_parallel_size": 1,
            "gpu_memory_utilization": 0.9,
            "max_model_len": None,
        },
    }
    assert (worker.path / "outputs.json").read_text() == (
        in_process.path / "outputs.json"
    ).read_text()
    assert (worker.path / "engine" / "worker.log").is_file()
    same = {k: v for k, v in in_process.metrics.items() if "runtime" not in k and "per_s" not in k}
    assert {k: worker.metrics[k] for k in same} == same
    assert worker.metrics["gen_engine"] == "vllm" and "gen_engine" not in in_process.metrics
    assert worker.metrics["gen_engine_library"].startswith("transformers ")


def test_vllm_engine_agrees_with_the_hf_engine_on_a_gpu(tmp_path):
    needs_cuda("vLLM needs one")
    python = needs_vllm()
    # head_dim 64 (hidden 128 / 2 heads): the tiny model's head_dim 8 is below what vLLM's
    # FlashAttention kernels take.
    cfg = composed(
        "model=tiny", "generate=tiny", "model.arch.hidden_size=128", "model.arch.num_heads=2"
    )
    model_dir = scrambled(cfg, tmp_path)
    prompts = load_prompts(cfg.generate.prompts, cfg.generate.dataset_name, cfg.generate.limit)
    texts = [format_prompt(p, for_training=False) for p in prompts]
    request = request_of(cfg, model_dir, texts)
    hf = generate_in_subprocess("hf", sys.executable, request, tmp_path / "hf")
    request["options"] = {
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.3,
        "max_model_len": None,
    }
    vllm = generate_in_subprocess("vllm", python, request, tmp_path / "vllm")
    assert vllm["library"].startswith("vllm ")
    assert all(1 <= n <= 16 for n in vllm["new_tokens"])
    # Both decode float32 greedily; different kernels may still flip a near-tied argmax, so
    # most (not necessarily all) answers must match exactly.
    same = sum(a == b for a, b in zip(hf["outputs"], vllm["outputs"]))
    assert same >= 4, (hf["outputs"], vllm["outputs"])


@pytest.fixture
def a_gpu_held(monkeypatch):
    """One 80 GiB CUDA GPU, patched in: `state` sets what is free and what this process holds;
    `calls` records what reached the worker and what released memory first."""
    gib = 1024**3
    state = {"free": 10 * gib, "held": 60 * gib}
    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (state["free"], 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i=0: state["held"])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))

    def worker(engine, python, request, work):
        calls.append("worker")
        n = len(request["prompts"])
        return {"outputs": ["x"] * n, "new_tokens": [1] * n, "runtime_s": 0.0, "library": "v"}

    monkeypatch.setattr(engines, "generate_in_subprocess", worker)
    return state, calls


def test_vllm_does_not_start_on_a_gpu_this_process_still_holds(a_gpu_held, tmp_path):
    """After an in-process finetune, 60 of 80 GiB still held: refused before the worker starts,
    with the numbers and the setting that fits; with the memory released, the worker starts."""
    state, calls = a_gpu_held
    cfg = composed("model=tiny", "generate=tiny", "generate.engine=vllm")
    vllm = engines.engine("vllm")
    args = (tmp_path, ["hi"], cfg.generate, "bfloat16", 4, 0, "g", tmp_path)
    with pytest.raises(EngineError, match=r"10\.0 GiB free of 80\.0.*holds 60\.0 GiB") as err:
        vllm.generate(*args)
    assert "generate.settings.gpu_memory_utilization=0.12 or lower" in str(err.value)
    assert calls == ["empty_cache"]  # released first, then measured; the worker never started
    state.update(free=76 * 1024**3, held=0)
    outputs, counts, _, _ = vllm.generate(*args)
    assert outputs == ["x"] and calls[-1] == "worker"


UPSTREAM = "finetune-tiny-llama_base-0123456789ab"


# Keys of the generate stage computed before the schema had `engine` and `vllm` (commit
# 3c9999d~1; generate.settings since issue 29), for the upstream key UPSTREAM: stores filled then
# must still be found.
KEYS_BEFORE_ENGINES = {
    ("model=tiny", "generate=tiny"): "generate-tiny-llama_base-a6d8dd70a8bf",
    (
        "model=tiny",
        "generate=cpu",
        "generate.batch_size=10",
    ): "generate-tiny-llama_base-67904b302fc1",
    ("model=llama2_7b", "generate=paper"): "generate-tiny-llama_base-cc566341da40",
}


@pytest.mark.parametrize("overrides", list(KEYS_BEFORE_ENGINES))
def test_engine_hf_keeps_every_generate_key(overrides, monkeypatch):
    # The fp32 batch size left the key later, on purpose (key_rules.generate_params,
    # tests/test_precision.py), and generate=cpu's batch went from 10 to 50 (it is given as it
    # was then); held here: the engine settings moved no key.
    from pipeline.store import key_rules

    monkeypatch.setattr(key_rules, "generate_params", lambda params, dtype, device: params)
    cfg = composed(*overrides)
    if cfg.model.dtype == "auto":  # what `auto` resolves to on a bf16 GPU, where it was keyed
        cfg.model.dtype = "bfloat16"
    params = generate_stage.generate_params(cfg.generate, cfg.model.dtype)
    plain = OmegaConf.to_container(cfg.generate, resolve=True)
    for k in ("reference", "engine", "settings"):
        plain.pop(k)
    assert params == plain | {"dtype": cfg.model.dtype}
    # Version 1: the keys were computed then; version 2 (padding-free penalty) is a deliberate
    # change of what is computed, and the params (what this test holds) are unchanged.
    key = stage_key("generate", "tiny-llama_base", params, [UPSTREAM], 1)
    assert key == KEYS_BEFORE_ENGINES[overrides]


def test_engine_vllm_and_its_settings_enter_the_key_but_not_the_interpreter_path():
    def key(*overrides):
        cfg = composed("model=tiny", "generate=tiny", *overrides)
        params = generate_stage.generate_params(cfg.generate, cfg.model.dtype)
        return stage_key("generate", "x", params, [UPSTREAM], 1), params

    hf_key, _ = key()
    vllm_key, params = key("generate.engine=vllm", "generate.settings.python=/a/python")
    assert params["engine"] == "vllm" and params["vllm"] == {
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "max_model_len": None,
    }
    assert vllm_key != hf_key
    assert key("generate.engine=vllm", "generate.settings.python=/b/python")[0] == vllm_key
    assert key("generate.engine=vllm", "generate.settings.tensor_parallel_size=2")[0] != vllm_key
    # generate.settings are the selected engine's own: hf has none, so vLLM's are refused for it,
    # naming the engine and the key (before: accepted and ignored).
    with pytest.raises(ValueError) as err:
        key("generate.settings.tensor_parallel_size=4")
    assert (
        "generate.settings.tensor_parallel_size: generate.engine='hf' has no settings of its own"
        in str(err.value)
    )


def test_check_passes_the_default_and_explains_every_vllm_misconfiguration(tmp_path, monkeypatch):
    generate_stage.check(composed("model=tiny", "generate=tiny"))

    def fails(*overrides):
        with pytest.raises(ValueError) as err:
            generate_stage.check(composed("model=tiny", "generate=tiny", *overrides))
        return str(err.value)

    msg = fails("generate.engine=tgi")
    assert "generate.engine='tgi' is unknown; registered engines: hf, vllm" in msg
    assert "pipeline/generation/engine_kinds/tgi.py" in msg and "@register_engine('tgi')" in msg
    msg = fails("generate.engine=vllm")
    assert "generate.settings.python is not set" in msg and "pip install vllm" in msg
    assert "generate.engine=hf" in msg
    plain = tmp_path / "python"
    plain.write_text("not executable")
    msg = fails("generate.engine=vllm", f"generate.settings.python={plain}")
    assert f"generate.settings.python='{plain}' is not an executable file" in msg
    vllm_here = importlib.util.find_spec("vllm") is not None
    if not vllm_here:
        msg = fails("generate.engine=vllm", f"generate.settings.python={sys.executable}")
        assert "has no vllm installed" in msg and "-m pip install vllm" in msg
    monkeypatch.setattr(engines, "_has_module", lambda python, module: True)
    monkeypatch.setattr(engines, "visible_cuda_gpus", lambda: 0)
    msg = fails("generate.engine=vllm", f"generate.settings.python={sys.executable}")
    assert "needs a CUDA GPU and none is visible" in msg and "generate.engine=hf" in msg
    monkeypatch.setattr(engines, "visible_cuda_gpus", lambda: 1)
    generate_stage.check(
        composed(
            "model=tiny",
            "generate=tiny",
            "generate.engine=vllm",
            f"generate.settings.python={sys.executable}",
        )
    )
    msg = fails(
        "generate.engine=vllm",
        f"generate.settings.python={sys.executable}",
        "generate.settings.tensor_parallel_size=2",
    )
    assert "tensor_parallel_size=2 needs as many GPUs; 1 visible" in msg


@pytest.mark.parametrize(
    "visible,count", [(None, 2), ("0", 1), ("1,0", 2), ("-1", 0), ("", 0), ("1,-1,0", 1)]
)
def test_gpus_of_the_driver_count_when_torch_is_cpu_only(tmp_path, monkeypatch, visible, count):
    import torch

    # A CPU-only torch on a GPU node: the driver's GPU list, cut by CUDA_VISIBLE_DEVICES.
    for i in range(2):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
    monkeypatch.setattr(devices, "NVIDIA_GPUS", tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert devices.visible_cuda_gpus() == count
    monkeypatch.setattr(devices, "NVIDIA_GPUS", tmp_path / "absent")
    assert devices.visible_cuda_gpus() == 0
