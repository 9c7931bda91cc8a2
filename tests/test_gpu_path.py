"""The GPU path, checked on a CPU: where each model goes, in which precision, and what the
Trainer and accelerate are told (issue 18). CUDA is patched in where no GPU exists; FSDP runs
for real through accelerate's own prepare on gloo (world size 1), in a subprocess so that its
process group and accelerate's singletons stay out of the other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.models import devices
from tests.support.composed import composed

ROOT = Path(__file__).resolve().parents[1]


class Loaded(Exception):
    """Raised by a patched loader: the test has seen what it was asked."""


@pytest.fixture
def one_cuda_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def _recording_loader(seen: dict):
    def load(location, dtype, revision=None, load_in_4bit=False, device=None, **kw):
        seen.update(location=location, dtype=dtype, device=device, **kw)
        raise Loaded

    return load


def test_generate_loads_its_model_on_the_gpu_when_there_is_one(one_cuda_gpu, monkeypatch, tmp_path):
    from pipeline.models import loading
    from pipeline.stages import generate

    seen: dict = {}
    # The hf engine (generation/engine_kinds/hf.py) loads through models.loading at call time.
    monkeypatch.setattr(loading, "load_model_and_tokenizer", _recording_loader(seen))
    cfg = composed("model=tiny", "generate=tiny")
    prompts = [{"instruction": "Say hi.", "input": "", "dataset": "x"}]
    with pytest.raises(Loaded):
        generate._generate(tmp_path, prompts, cfg.generate, "float32", "g", None, tmp_path)
    assert seen["device"] == "cuda"
    # ... and the device is part of what the stage key hashes (other numerics than the CPU's)
    assert generate.generate_params(cfg.generate, "float32")["device"] == "cuda"


def test_generate_keys_on_the_cpu_have_no_device(monkeypatch):
    from pipeline.stages import generate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = composed("model=tiny", "generate=tiny")
    assert "device" not in generate.generate_params(cfg.generate, "float32")


def test_overfit_and_the_hf_worker_load_on_the_gpu(one_cuda_gpu, monkeypatch, tmp_path):
    from pipeline.generation import engines
    from pipeline.models import loading as models
    from pipeline.stages import overfit
    from pipeline.store.store import StageResult, Store

    seen: dict = {}
    monkeypatch.setattr(overfit, "load_model_and_tokenizer", _recording_loader(seen))
    cfg = composed("model=tiny", "finetune=tiny", "overfit=tiny")
    finetuned = StageResult("finetune-tiny-0123456789ab", tmp_path / "ft", {}, False)
    with pytest.raises(Loaded):
        overfit.overfit(finetuned, cfg.overfit, cfg.data, 64, "float32", Store(tmp_path / "s"))
    assert seen["device"] == "cuda"

    seen.clear()
    monkeypatch.setattr(models, "load_model_and_tokenizer", _recording_loader(seen))
    request = engines.make_request(
        "hf",
        str(tmp_path),
        "float32",
        ["hi"],
        max_new_tokens=4,
        max_total_length=64,
        repetition_penalty=1.0,
    )
    with pytest.raises(Loaded):
        engines._hf_engine(request)
    assert seen["device"] == "cuda"


@pytest.mark.parametrize("gpus, expected", [(1, "cuda:0"), (8, set(range(8)))])
def test_inference_weights_go_to_the_gpus(monkeypatch, gpus, expected):
    """One GPU: all on it. Several: balanced over all of them (tests/test_gpu_placement.py),
    so a 70B model spans the node with room for its KV cache on every GPU."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from pipeline.models import loading as models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (10**6, 80 * 10**9))
    tiny = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=16,
        num_attention_heads=4,
    )  # 1.4 MB in bf16 over GPUs with 1 MB free: more than one GPU holds layers
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: tiny)
    seen: dict = {}

    def from_pretrained(location, **kwargs):
        seen.update(kwargs)
        raise Loaded

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(Loaded):
        models.load_model_and_tokenizer("/m", "bfloat16", device="cuda")
    placed = seen["device_map"]
    # several: a map of modules over the GPUs (its balance: tests/test_gpu_placement.py)
    assert placed == expected if gpus == 1 else 1 < len(set(placed.values())) <= len(expected)
    seen.clear()
    with pytest.raises(Loaded):  # training loads leave placement to the Trainer
        models.load_model_and_tokenizer("/m", "bfloat16")
    assert "device_map" not in seen


def test_lm_eval_runs_on_the_gpu_and_splits_a_model_over_several(tmp_path):
    from pipeline.stages.openllm import hflm_placement

    assert hflm_placement("cpu", 0, tmp_path) == {"device": "cpu"}
    assert hflm_placement("cuda", 1, tmp_path) == {"device": "cuda"}
    split = hflm_placement("cuda", 8, tmp_path)  # 70B: 138 GB in bf16 is no single GPU's
    assert split["parallelize"] is True and "device" not in split
    assert split["offload_folder"].startswith(str(tmp_path))  # never ./offload of the cwd


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx512f", "amx_bf16"}, "bfloat16"),
        ({"avx512f", "avx512_bf16"}, "bfloat16"),
        ({"avx512f", "avx2"}, "float32"),
        (set(), "float32"),
    ],
)
def test_auto_dtype_on_a_cpu_is_bf16_only_where_native(monkeypatch, flags, expected):
    monkeypatch.setattr(devices, "cpu_flags", lambda: flags)
    assert devices.resolve_dtype("auto", "cpu") == expected
    assert devices.resolve_dtype("float32", "cpu") == "float32"  # explicit wins


def test_auto_dtype_on_cuda_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.resolve_dtype("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.resolve_dtype("auto", "cuda") == "float32"
    with pytest.raises(ValueError, match="bf32"):
        devices.resolve_dtype("bf32")


def test_the_resolved_dtype_not_auto_is_what_the_point_runs_with(monkeypatch):
    from pipeline.plan import check_all

    monkeypatch.setattr(devices, "cpu_flags", lambda: set())
    cfg = composed("model=llama2_7b", "finetune=tiny", "generate=tiny", "judge=local_tiny")
    assert cfg.model.dtype == "auto"
    devices.resolve_precision(cfg)
    assert cfg.model.dtype == "float32" and cfg.judge.settings.model.dtype == "float32"
    assert "resolve_precision(cfg)" in Path(check_all.__code__.co_filename).read_text()


@pytest.mark.parametrize("checkpointing", [True, False])
def test_training_arguments_build_on_every_supported_transformers(tmp_path, checkpointing):
    """transformers 5.17 (the GPU image's) has no `activation_checkpointing` argument (a
    TypeError at every finetune), 5.25 has it and calls `gradient_checkpointing` a deprecated
    alias: the switch goes under the name this transformers declares, with no warning."""
    import warnings

    from omegaconf import OmegaConf

    from pipeline.config.finetune import finetune_settings
    from pipeline.train.trainer_args import training_arguments

    tiny = composed("finetune=tiny").finetune
    cfg = finetune_settings(OmegaConf.merge(tiny, {"gradient_checkpointing": checkpointing}))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*checkpointing.*", category=FutureWarning)
        args = training_arguments(cfg, [], tmp_path, 1)
    assert args.gradient_checkpointing is checkpointing  # 5.25 mirrors the new name into it
    assert getattr(args, "activation_checkpointing", checkpointing) is checkpointing


def test_lora_adapters_train_and_merge_on_the_installed_peft():
    """The LoRA path (pipeline.train.lora) on whatever peft is installed: CI runs this on the
    declared floor too (peft 0.17 imports transformers' HybridCache, gone in transformers 5)."""
    from pipeline.config.finetune import LoraConfig
    from pipeline.train.lora import merged, with_lora
    from scripts.gpu_rows import tiny_llama

    model, _ = tiny_llama(torch.float32)
    ids = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    lora = LoraConfig(r=4, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"])
    wrapped = with_lora(model, lora, False)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    assert 0 < sum(p.numel() for p in trainable) < sum(p.numel() for p in wrapped.parameters())
    optimiser = torch.optim.AdamW(trainable, lr=1e-2)
    wrapped(input_ids=ids, labels=ids).loss.backward()
    optimiser.step()
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
        plain = merged(wrapped, None, False)
        after = plain(input_ids=ids).logits
    assert type(plain).__name__ == "LlamaForCausalLM"  # plain weights, loadable anywhere
    assert torch.allclose(adapted, after, atol=1e-5) and not torch.allclose(before, after)


def _fsdp_probe(fp32_master: bool, tmp_path: Path) -> dict:
    """Run scripts/gpu_fsdp_checks.py's FSDP probe (accelerate's own fsdp2_prepare_model on a
    bf16 Llama, gloo, world size 1) in a fresh process; returns what it measured."""
    out = tmp_path / "probe.json"
    code = (
        "import sys, json; from scripts.gpu_fsdp_checks import fsdp_probe; "
        f"json.dump(fsdp_probe({fp32_master}, sys.argv[1]), open(sys.argv[2], 'w'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ck"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("fp32_master, dtype", [(False, "torch.bfloat16"), (True, "torch.float32")])
def test_fsdp_trains_the_precision_the_key_says(tmp_path, fp32_master, dtype):
    """fp32_master_weights false: bf16 parameters after accelerate's prepare (8 B/param);
    true: fp32 masters. Sharded checkpoints; rank-0 loading switched on before the load."""
    probe = _fsdp_probe(fp32_master, tmp_path)
    assert probe["param_dtypes"] == [dtype]
    assert probe["mixed_precision"] == ("bf16" if fp32_master else "no")
    assert probe["state_dict_type"] == "StateDictType.SHARDED_STATE_DICT"
    assert probe["rank0_loading_seen_by_from_pretrained"] is True
    assert probe["activation_checkpointing"] == {"training_argument": False, "fsdp": True}
