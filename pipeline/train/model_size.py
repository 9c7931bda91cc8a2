"""How big a model is, for the memory plan: its parameter count and shape, known by name for the
paper's models, counted from the architecture of a tiny or local one; the GPU's memory.
"""

from __future__ import annotations

import json
from pathlib import Path

# Parameter counts of the paper's models (and the CPU default), by model.name.
KNOWN_PARAMS = {
    "llama2-7b": 6.74e9,
    "llama2-13b": 13.0e9,
    "llama2-70b": 69.0e9,
    "llama1-7b": 6.74e9,
    "llama1-30b": 32.5e9,
    "opt-6.7b": 6.66e9,
    "llama2-7b-chat": 6.74e9,
    "smollm2-135m": 1.35e8,
}
# (hidden size, layers, attention heads, vocabulary) of those models, for the activations.
KNOWN_SHAPES = {
    "llama2-7b": (4096, 32, 32, 32000),
    "llama2-7b-chat": (4096, 32, 32, 32000),
    "llama1-7b": (4096, 32, 32, 32000),
    "llama2-13b": (5120, 40, 40, 32000),
    "llama1-30b": (6656, 60, 52, 32000),
    "llama2-70b": (8192, 80, 64, 32000),
    "opt-6.7b": (4096, 32, 32, 50272),
    "smollm2-135m": (576, 30, 9, 49152),
}

# Key-value heads where fewer than the attention heads (grouped-query attention): the KV cache.
KNOWN_KV_HEADS = {"llama2-70b": 8}


def gpu_memory_gb(configured: float | None = None) -> float | None:
    """Memory of GPU 0 in GB when torch sees a CUDA GPU, else `configured` (None = unknown)."""
    try:
        import torch
    except ImportError:
        return configured
    cuda = torch.cuda.is_available()
    return torch.cuda.get_device_properties(0).total_memory / 1e9 if cuda else configured


def count_params(arch: dict) -> int:
    """Parameters of a Llama-style decoder from its config (a config.json dict or a TinyArch)."""
    get = arch.get
    d, vocab = get("hidden_size"), get("vocab_size")
    layers = get("num_hidden_layers", get("num_layers"))
    heads = get("num_attention_heads", get("num_heads"))
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or d // heads
    attn = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2  # q, o and k, v
    mlp = 3 * d * get("intermediate_size")  # gate, up, down
    tied = get("tie_word_embeddings", False)
    return vocab * d * (1 if tied else 2) + layers * (attn + mlp + 2 * d) + d


def _local_arch(model_cfg) -> dict | None:
    """The architecture dict of a tiny or local model (None for others)."""
    if model_cfg.source == "tiny" and model_cfg.arch is not None:
        # The tiny model ties its embeddings (pipeline.models.loading._build_tiny).
        return dict(model_cfg.arch) | {"tie_word_embeddings": True}
    config = Path(str(model_cfg.id)) / "config.json"
    if model_cfg.source == "local" and config.is_file():
        return json.loads(config.read_text(encoding="utf-8"))
    return None


def model_params(model_cfg, n_params: float | None = None) -> float:
    """Parameter count of a model config: given, known by name, or counted from its arch."""
    if n_params is not None:
        return float(n_params)
    if model_cfg.name in KNOWN_PARAMS:
        return KNOWN_PARAMS[model_cfg.name]
    arch = _local_arch(model_cfg)
    if arch is not None:
        return float(count_params(arch))
    raise ValueError(
        f"model {model_cfg.name!r}: parameter count unknown for the memory plan; "
        "set finetune.distributed.n_params (e.g. finetune.distributed.n_params=7e9)"
    )


def model_shape(model_cfg) -> tuple | None:
    """(hidden, layers, heads, vocab) of a model config; None when unknown."""
    if model_cfg.name in KNOWN_SHAPES:
        return KNOWN_SHAPES[model_cfg.name]
    arch = _local_arch(model_cfg)
    if arch is None:
        return None
    get = arch.get
    return (
        get("hidden_size"),
        get("num_hidden_layers", get("num_layers")),
        get("num_attention_heads", get("num_heads")),
        get("vocab_size"),
    )
