"""Memory plan of a fine-tune before launch: does the model state fit on the GPUs it is given?

Model states are weights, gradients and AdamW's two moments (activations are not counted):
  precision "bf16"   weights, grads and both Adam states in bf16: 2+2+2+2 = 8 bytes/parameter
                     (the paper's recipe: model.dtype=bfloat16; 13B -> 104 GB, 70B -> 552 GB)
  precision "mixed"  fp32 master weights, fp32 grads, fp32 Adam states: 4+4+4+4 = 16 bytes/param
                     (also plain fp32 training: model.dtype=float32)
  LoRA               frozen base at 2 bytes/param (bf16) or about 0.52 (NF4 4-bit with double
                     quantisation), plus the trainable fraction at 16 bytes/param (PEFT keeps
                     adapters in fp32)
Strategies: none (one GPU) and ddp keep everything on every GPU; fsdp and deepspeed_zero3 shard
all of it over the world size. GB = 1e9 bytes.

Fit rule: states may use at most 80% of a GPU's memory; the other 20% is headroom for
activations (with gradient checkpointing), the CUDA context, FSDP's gathered layer and allocator
fragmentation. The smallest FSDP world size tried is 1, 2, 4, 8, then whole 8-GPU nodes.

Run: python -m pipeline.core.memory_plan    (prints the README table)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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
STRATEGIES = ("none", "ddp", "fsdp", "deepspeed_zero3")
SHARDED = ("fsdp", "deepspeed_zero3")
PRECISIONS = {"bf16": 8.0, "mixed": 16.0}
ADAPTER_BYTES = 16.0  # fp32 adapter weights, grads, two Adam states
BASE_BYTES = {False: 2.0, True: 0.52}  # frozen base: bf16 | NF4 (0.5 B + quantisation constants)
HEADROOM = 0.20  # share of GPU memory kept for activations and the runtime
DEFAULT_GPU_GB = 80.0  # an A100/H100 80 GB, assumed for advice when the GPU is unknown
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class MemoryPlan:
    """Model-state memory of one fine-tune configuration."""

    n_params: float  # parameters of the base model
    strategy: str  # none | ddp | fsdp | deepspeed_zero3
    world_size: int  # GPUs in all
    bytes_per_param: float  # model-state bytes per base parameter (before sharding)
    per_gpu_gb: float  # model states on each GPU
    total_gb: float  # model states summed over all GPUs (ddp counts every replica)
    gpu_gb: float | None  # memory of one GPU assumed; None = unknown
    fits: bool | None  # per_gpu_gb <= (1 - HEADROOM) * gpu_gb; None when gpu_gb is unknown

    @property
    def usable_gb(self) -> float | None:
        """GPU memory the model states may take (the rest is headroom)."""
        return None if self.gpu_gb is None else self.gpu_gb * (1 - HEADROOM)


def bytes_per_param(precision: str = "bf16", trainable_fraction: float | None = None,
                    load_in_4bit: bool = False) -> float:
    """Model-state bytes per base parameter; `trainable_fraction` set = LoRA over a frozen base."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; use one of {tuple(PRECISIONS)}")
    if trainable_fraction is None:
        if load_in_4bit:
            raise ValueError("a 4-bit base needs LoRA adapters: give trainable_fraction")
        return PRECISIONS[precision]
    if not 0 < trainable_fraction <= 1:
        raise ValueError(f"trainable_fraction={trainable_fraction} must be in (0, 1]")
    base = BASE_BYTES[load_in_4bit] if precision == "bf16" or load_in_4bit else 4.0
    return base + ADAPTER_BYTES * trainable_fraction


def plan_memory(n_params: float, strategy: str = "none", world_size: int = 1,
                precision: str = "bf16", trainable_fraction: float | None = None,
                load_in_4bit: bool = False, gpu_gb: float | None = None) -> MemoryPlan:
    """Estimate model-state memory per GPU and whether it fits GPUs of `gpu_gb` GB."""
    if strategy not in STRATEGIES:
        raise ValueError(f"finetune.distributed.strategy={strategy!r} is unknown; "
                         f"use one of {STRATEGIES}")
    if world_size < 1 or (strategy == "none" and world_size != 1):
        raise ValueError(f"world size {world_size} with strategy={strategy!r}: strategy none "
                         "runs on exactly one GPU; use ddp or fsdp for more")
    per_param = bytes_per_param(precision, trainable_fraction, load_in_4bit)
    states_gb = n_params * per_param / 1e9
    sharded = strategy in SHARDED
    per_gpu = states_gb / world_size if sharded else states_gb
    total = states_gb if sharded else states_gb * world_size
    fits = None if gpu_gb is None else per_gpu <= gpu_gb * (1 - HEADROOM)
    return MemoryPlan(n_params, strategy, world_size, per_param, per_gpu, total, gpu_gb, fits)


def world_sizes(limit: int = 1024):
    """World sizes tried for FSDP: 1, 2, 4, 8 GPUs on one node, then whole 8-GPU nodes."""
    yield from (1, 2, 4)
    yield from range(GPUS_PER_NODE, limit + 1, GPUS_PER_NODE)


def min_sharded_gpus(n_params: float, gpu_gb: float = DEFAULT_GPU_GB, **kw) -> int | None:
    """Smallest FSDP world size whose per-GPU model states fit (None: not within 1024 GPUs)."""
    for n in world_sizes():
        if plan_memory(n_params, "fsdp", n, gpu_gb=gpu_gb, **kw).fits:
            return n
    return None


def size_label(n_params: float) -> str:
    """6.74e9 -> '6.7B', 13e9 -> '13B', 1.35e8 -> '135M'."""
    if n_params >= 1e9:
        return f"{n_params / 1e9:.2g}B" if n_params < 1e10 else f"{n_params / 1e9:.3g}B"
    return f"{n_params / 1e6:.0f}M"


def check_plan(plan: MemoryPlan, label: str | None = None, **kw) -> MemoryPlan:
    """Raise ValueError naming the fix when `plan` does not fit; return it otherwise.

    `kw` (precision, trainable_fraction, load_in_4bit) must be those the plan was made with, so
    the advice about the FSDP world size uses the same bytes per parameter. An unknown GPU size
    (plan.fits None) passes: there is nothing to compare with.
    """
    if plan.fits is not False:
        return plan
    label = label or size_label(plan.n_params)
    where = "one GPU" if plan.world_size == 1 else f"each of {plan.world_size} GPUs"
    what = "full fine-tune" if kw.get("trainable_fraction") is None else "LoRA fine-tune"
    need = (f"{label} {what} needs about {plan.per_gpu_gb:.0f} GB of model states on {where}, "
            f"more than {plan.usable_gb:.0f} GB ({100 - HEADROOM * 100:.0f}% of "
            f"{plan.gpu_gb:.0f} GB, the rest kept for activations)")
    gpus = min_sharded_gpus(plan.n_params, plan.gpu_gb, **kw)
    if gpus is None:
        raise ValueError(f"{need}; no FSDP world size up to 1024 GPUs fits: use LoRA "
                         "(finetune=qlora) or GPUs with more memory")
    nodes = math.ceil(gpus / GPUS_PER_NODE)
    on = f"{gpus} GPUs" + (f" ({nodes} nodes of {GPUS_PER_NODE})" if nodes > 1 else "")
    raise ValueError(f"{need}; set finetune.distributed.strategy=fsdp with at least {on}")


def gpu_memory_gb(configured: float | None = None) -> float | None:
    """Memory of GPU 0 in GB when torch sees a CUDA GPU, else `configured` (None = unknown)."""
    try:
        import torch
    except ImportError:
        return configured
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 1e9
    return configured


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


def model_params(model_cfg, n_params: float | None = None) -> float:
    """Parameter count of a model config: given, known by name, or counted from its arch."""
    if n_params is not None:
        return float(n_params)
    if model_cfg.name in KNOWN_PARAMS:
        return KNOWN_PARAMS[model_cfg.name]
    if model_cfg.source == "tiny" and model_cfg.arch is not None:
        # The tiny model ties its embeddings (pipeline.core.models._build_tiny).
        return float(count_params(dict(model_cfg.arch) | {"tie_word_embeddings": True}))
    config = Path(str(model_cfg.id)) / "config.json"
    if model_cfg.source == "local" and config.is_file():
        return float(count_params(json.loads(config.read_text(encoding="utf-8"))))
    raise ValueError(f"model {model_cfg.name!r}: parameter count unknown for the memory plan; "
                     "set finetune.distributed.n_params (e.g. finetune.distributed.n_params=7e9)")


LORA_TRAINABLE_FRACTION = 0.024  # r=64 adapters on every linear layer: 2.4% of LLaMA-2-7B


def finetune_plan(cfg) -> tuple[MemoryPlan, dict]:
    """The plan of `cfg`'s fine-tune (model, finetune.lora, finetune.distributed) and the kwargs
    it was made with; GPU memory from torch, else finetune.distributed.gpu_memory_gb."""
    from pipeline.core.launch import world_size

    dist, lora = cfg.finetune.distributed, cfg.finetune.lora
    fp32 = cfg.model.dtype == "float32" or dist.fsdp.fp32_master_weights
    kw = {"precision": "mixed" if fp32 else "bf16"}
    if lora is not None:  # planned as it runs on a GPU node: auto means 4-bit there
        kw.update(trainable_fraction=LORA_TRAINABLE_FRACTION,
                  load_in_4bit=str(lora.quantize_4bit).lower() != "false")
    gpu_gb = gpu_memory_gb(dist.gpu_memory_gb)
    n_params = model_params(cfg.model, dist.n_params) if gpu_gb is not None else float("nan")
    return plan_memory(n_params, dist.strategy, world_size(dist), gpu_gb=gpu_gb, **kw), kw


def check_finetune_memory(cfg) -> MemoryPlan:
    """Refuse, before launch, a fine-tune whose model states do not fit its GPUs (the message
    names the fix); where the GPU memory is unknown (a CPU run) there is nothing to check."""
    plan, kw = finetune_plan(cfg)
    return check_plan(plan, **kw)


TABLE_MODELS = (("LLaMA-2-7B", 6.74e9), ("LLaMA-2-13B", 13.0e9), ("LLaMA-2-70B", 69.0e9))
TABLE_SETUPS = (("none", 1), ("fsdp", 4), ("fsdp", 8), ("fsdp", 16))


def memory_table(gpu_gb: float = DEFAULT_GPU_GB) -> str:
    """Markdown table: model x precision x strategy/GPUs -> model-state GB per GPU (fits or not)."""
    usable = gpu_gb * (1 - HEADROOM)
    # ddp replicates: its per-GPU column is the single GPU's at any world size.
    setups = ["none or ddp (any GPUs)" if s == "none" else f"{s} x{n}" for s, n in TABLE_SETUPS]
    header = (f"| model | params | precision (B/param) | {' | '.join(setups)} | "
              f"smallest fsdp on {gpu_gb:.0f} GB |")
    lines = [header, "|---|---|---|" + "---|" * (len(setups) + 1)]
    for name, n_params in TABLE_MODELS:
        for precision, per_param in PRECISIONS.items():
            cells = []
            for strategy, world in TABLE_SETUPS:
                plan = plan_memory(n_params, strategy, world, precision, gpu_gb=gpu_gb)
                cells.append(f"{plan.per_gpu_gb:.1f}{'' if plan.fits else ' ✗'}")
            gpus = min_sharded_gpus(n_params, gpu_gb, precision=precision)
            lines.append(f"| {name} | {n_params / 1e9:g}B | {precision} ({per_param:g}) | "
                         f"{' | '.join(cells)} | {gpus} |")
    return "\n".join(lines) + (
        f"\n\nGB of model states (weights, gradients, AdamW moments) per GPU, GB = 1e9 bytes;\n"
        f"✗: above {usable:.0f} GB, 80% of {gpu_gb:.0f} GB per GPU (20% kept for activations).\n"
        "none/ddp keep all states on every GPU; fsdp shards them over the GPUs.\n")


if __name__ == "__main__":
    print(memory_table())
