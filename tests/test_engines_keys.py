"""The generate stage's key and its check(cfg): engine=hf keeps every key computed before
engines existed, engine=vllm and its settings enter the key, every vLLM misconfiguration is
explained, and the GPU count of a CPU-only torch comes from the driver."""

import importlib.util
import sys

import pytest
from omegaconf import OmegaConf

import pipeline.stages.generate as generate_stage
from pipeline.generation import engines
from pipeline.models import devices
from pipeline.store.store import stage_key
from tests.support.composed import composed

UPSTREAM = "finetune-tiny-llama_base-0123456789ab"


# Keys of the generate stage computed before the schema had `engine` and `vllm` (commit
# 3c9999d~1; generate.settings since issue 29), for the upstream key UPSTREAM: stores filled then
# must still be found.
KEYS_BEFORE_ENGINES = {
    ("model=tiny", "generate=tiny"): "generate-tiny-llama_base-a6d8dd70a8bf",
    ("model=tiny", "generate=cpu"): "generate-tiny-llama_base-67904b302fc1",
    ("model=llama2_7b", "generate=paper"): "generate-tiny-llama_base-cc566341da40",
}


@pytest.mark.parametrize("overrides", list(KEYS_BEFORE_ENGINES))
def test_engine_hf_keeps_every_generate_key(overrides):
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
