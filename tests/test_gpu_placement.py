"""Where a model spread over a node's GPUs for generation goes (issue 27): computed on a meta
model, for GPUs given by their free memory, so it runs on a CPU. LLaMA-2-70B on 8 x 79.1 GiB with
the paper's decoding (batch 16, 2048 tokens): accelerate's `sequential` left GPU 0 ~2 GiB for a
KV cache that grows every decode step; the balanced placement leaves every GPU its share."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from pipeline.models import devices

GIB = 1024**3
FREE_80GB = 79.1 * GIB  # what an 80 GB H100 has free with a CUDA context
BATCH, TOTAL = 16, 2048  # generate.batch_size x generate.max_total_length (conf/generate)


def llama2_70b() -> LlamaConfig:
    """meta-llama/Llama-2-70b-hf's config.json (no hub here)."""
    return LlamaConfig(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def test_kv_cache_bytes_per_token_count_keys_and_values_of_the_kv_heads():
    # 2 (K, V) x 80 layers x 8 key-value heads x 128 head dim x 2 bytes
    assert devices.kv_bytes_per_token(llama2_70b(), "bfloat16") == 2 * 80 * 8 * 128 * 2


def test_the_70b_placement_leaves_every_gpu_the_kv_cache_its_layers_hold():
    """Every GPU holds weights, the KV cache of its own layers for batch 16 x 2048 tokens, and
    still keeps INFERENCE_HEADROOM of its free memory; all 8 GPUs carry layers."""
    config = llama2_70b()
    placement = devices.gpu_placement(config, "bfloat16", [int(FREE_80GB)] * 8, BATCH * TOTAL)
    assert set(placement.device_map.values()) == set(range(8))  # every GPU, no CPU, no disk
    kv_total = devices.kv_bytes_per_token(config, "bfloat16") * BATCH * TOTAL / GIB
    assert sum(placement.kv_gb) == pytest.approx(kv_total)  # ~10 GiB over the 80 layers
    assert sum(placement.weights_gb) == pytest.approx(128.5, abs=0.5)  # 69e9 params in bf16
    for free, weights, kv in zip(placement.free_gb, placement.weights_gb, placement.kv_gb):
        left_for_cache = free - weights
        assert kv > 0 and left_for_cache >= kv + devices.INFERENCE_HEADROOM * free
    assert max(placement.weights_gb) < 20  # balanced: ~16 GiB each, not 77 on GPU 0
    assert placement.fits


def test_the_sequential_map_the_placement_replaces_leaves_gpu_0_no_room():
    """Why: accelerate's sequential fill (what device_map="sequential" computed) puts ~77 GiB
    on GPU 0 of 79.1, less room than the KV cache share of its layers."""
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes, infer_auto_device_map
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(llama2_70b(), dtype=torch.bfloat16)
    with devices._quiet_accelerate():
        sequential = infer_auto_device_map(
            model,
            max_memory={i: int(FREE_80GB) for i in range(8)},
            no_split_module_classes=model._no_split_modules,
            dtype=torch.bfloat16,
        )
    sizes = compute_module_sizes(model, dtype=torch.bfloat16)
    gpu0 = sum(sizes[n] for n, d in sequential.items() if d == 0) / GIB
    layers0 = sum(1 for n, d in sequential.items() if d == 0 and n.startswith("model.layers."))
    kv0 = layers0 * devices.kv_bytes_per_token(llama2_70b(), "bfloat16") / 80 * BATCH * TOTAL
    assert FREE_80GB / GIB - gpu0 < kv0 / GIB + 0.1 * FREE_80GB / GIB
    assert {d for d in sequential.values()} <= {0, 1}  # GPUs 2-7 idle


def test_a_model_that_fits_one_gpu_with_its_cache_stays_on_gpu_0():
    """LLaMA-2-7B (13.5 GB + a 17 GB cache at batch 16 x 2048) on a node of 8: GPU 0 only, no
    hops between GPUs for nothing."""
    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=32000,
    )
    placement = devices.gpu_placement(config, "bfloat16", [int(FREE_80GB)] * 8, BATCH * TOTAL)
    assert set(placement.device_map.values()) == {0} and placement.fits
    assert placement.kv_gb[0] == pytest.approx(16.0)  # 2 x 32 x 32 x 128 x 2 B x 32768 tokens


def test_a_placement_that_cannot_fit_is_refused_naming_the_fix():
    """70B with its cache on one GPU: refused, naming batch size and the vllm engine."""
    placement = devices.gpu_placement(llama2_70b(), "bfloat16", [int(FREE_80GB)], BATCH * TOTAL)
    assert not placement.fits
    with pytest.raises(ValueError, match="generate.batch_size.*generate.engine=vllm"):
        devices.check_placement(placement, "llama2-70b on 1 GPU")


def test_several_gpus_get_the_balanced_map_with_the_cache_reserved(monkeypatch):
    """load_model_and_tokenizer on 8 GPUs passes from_pretrained the placement computed for the
    GPUs' free memory and the generation's KV tokens (not `sequential`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (int(FREE_80GB), 80 * 10**9))
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: llama2_70b())
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    seen: dict = {}

    class Loaded(Exception):
        pass

    def from_pretrained(location, **kwargs):
        seen.update(kwargs)
        raise Loaded

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(Loaded):
        loading.load_model_and_tokenizer("/m", "bfloat16", device="cuda", kv_tokens=BATCH * TOTAL)
    want = devices.gpu_placement(llama2_70b(), "bfloat16", [int(FREE_80GB)] * 8, BATCH * TOTAL)
    assert seen["device_map"] == want.device_map


def test_the_hf_engine_asks_for_room_for_the_kv_cache_of_a_full_batch(monkeypatch, tmp_path):
    """The placement can reserve the cache only when the engine says how big it gets: both the
    in-process path and the worker pass batch x max total length (before: nothing, so a 30B
    model on two GPUs sat on GPU 0 with no room for its cache)."""
    from omegaconf import OmegaConf

    from pipeline.generation.engines import engine
    from pipeline.models import loading

    asked = []

    def load(*args, **kwargs):
        asked.append(kwargs.get("kv_tokens"))
        raise RuntimeError("stop after the load")

    monkeypatch.setattr(loading, "load_model_and_tokenizer", load)
    gen = OmegaConf.create({"batch_size": BATCH, "max_total_length": TOTAL})
    with pytest.raises(RuntimeError, match="stop after the load"):
        engine("hf").generate(tmp_path, ["q"], gen, "float32", 8, 0, "x", tmp_path)
    request = {"model_dir": str(tmp_path), "dtype": "float32", "prompts": ["q"]}
    request["decoding"] = {"batch_size": BATCH, "max_total_length": TOTAL}
    with pytest.raises(RuntimeError, match="stop after the load"):
        engine("hf").run(request)
    assert asked == [BATCH * TOTAL, BATCH * TOTAL]
