"""Memory plan of a fine-tune before launch: does it fit on the GPUs it is given?

Every term per GPU (GB = 1e9 bytes), for torch's foreach AdamW: weights and gradients (one
parameter-sized tensor each), AdamW states (exp_avg, exp_avg_sq), the AdamW temporary (the
foreach step allocates sqrt(exp_avg_sq) for every parameter at once, _multi_tensor_adam), DDP
buckets (DistributedDataParallel copies the gradients into buckets: gradient_as_bucket_view is
False by default) and activations (with gradient checkpointing: each layer's input, one layer
recomputed, the logits). Precision "bf16": parameters, grads and AdamW states in bf16, 2+2+4 =
8 bytes/parameter (the paper's recipe; FSDP with fsdp.fp32_master_weights=false). "mixed": fp32
master parameters (they are the weights FSDP shards), fp32 grads and states, 4+4+8 = 16, bf16
compute (fp32_master_weights=true, or model.dtype=float32). LoRA: a frozen base at 2 bytes/param
(bf16) or about 0.52 (NF4), fp32 adapters (PEFT's default) with their grads, states, temporary.
none and ddp keep everything on every GPU; fsdp and deepspeed_zero3 shard weights, grads, states
and the temporary (a tensor of the shard) over the world size.

Fit rule: all terms together may use 90% of a GPU; 10% is kept for the CUDA context, NCCL, FSDP's
gathered layer and fragmentation. FSDP world sizes tried: 1, 2, 4, 8, then whole 8-GPU nodes.

Run: python -m pipeline.cluster.table    (prints the README table)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.train.model_size import gpu_memory_gb, model_params, model_shape

STRATEGIES = ("none", "ddp", "fsdp", "deepspeed_zero3")
SHARDED = ("fsdp", "deepspeed_zero3")
PARAM_BYTES = {"bf16": 2.0, "mixed": 4.0}  # one parameter (its gradient, its temporary)
PRECISIONS = {p: 4 * b for p, b in PARAM_BYTES.items()}  # weights + grads + two AdamW moments
ADAPTER_BYTES = 4.0  # PEFT keeps LoRA adapters (and so their grads and states) in fp32
BASE_BYTES = {False: 2.0, True: 0.52}  # frozen base: bf16 | NF4 (0.5 B + quantisation constants)
RESERVE = 0.10  # share of GPU memory kept for the CUDA context, NCCL and fragmentation
DEFAULT_GPU_GB = 80.0  # an A100/H100 80 GB, assumed for advice when the GPU is unknown
GPUS_PER_NODE = 8
STATE_TERMS = ("weights", "gradients", "AdamW states", "master copies")
TERMS = STATE_TERMS + ("AdamW temporary", "DDP buckets", "activations")


@dataclass(frozen=True)
class MemoryPlan:
    """Memory per GPU of one fine-tune configuration, term by term."""

    n_params: float  # parameters of the base model
    strategy: str  # none | ddp | fsdp | deepspeed_zero3
    world_size: int  # GPUs in all
    bytes_per_param: float  # model-state bytes per base parameter (before sharding)
    terms: tuple  # ((name, GB on each GPU), ...) in TERMS order
    gpu_gb: float | None  # memory of one GPU assumed; None = unknown

    def term(self, name: str) -> float:
        """GB of one term (TERMS) on each GPU."""
        return dict(self.terms)[name]

    @property
    def states_gb(self) -> float:
        """Weights, gradients, AdamW states and master copies on each GPU."""
        return sum(self.term(t) for t in STATE_TERMS)

    @property
    def per_gpu_gb(self) -> float:
        """Every term on each GPU."""
        return sum(gb for _, gb in self.terms)

    @property
    def usable_gb(self) -> float | None:
        """GPU memory the plan may take (the rest is the reserve)."""
        return None if self.gpu_gb is None else self.gpu_gb * (1 - RESERVE)

    @property
    def fits(self) -> bool | None:
        """per_gpu_gb <= usable_gb; None when the GPU memory is unknown."""
        return None if self.gpu_gb is None else self.per_gpu_gb <= self.usable_gb


def state_bytes(
    precision: str = "bf16", trainable_fraction: float | None = None, load_in_4bit: bool = False
) -> dict[str, float]:
    """Bytes per base parameter of each sharded term; `trainable_fraction` = LoRA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; use one of {tuple(PRECISIONS)}")
    if trainable_fraction is None:
        if load_in_4bit:
            raise ValueError("a 4-bit base needs LoRA adapters: give trainable_fraction")
        p = PARAM_BYTES[precision]  # mixed: the fp32 parameters are the master weights
        return {
            "weights": p,
            "gradients": p,
            "AdamW states": 2 * p,
            "master copies": 0.0,
            "AdamW temporary": p,
        }
    if not 0 < trainable_fraction <= 1:
        raise ValueError(f"trainable_fraction={trainable_fraction} must be in (0, 1]")
    base = BASE_BYTES[load_in_4bit] if precision == "bf16" or load_in_4bit else 4.0
    a = ADAPTER_BYTES * trainable_fraction
    return {
        "weights": base + a,
        "gradients": a,
        "AdamW states": 2 * a,
        "master copies": 0.0,
        "AdamW temporary": a,
    }


def bytes_per_param(
    precision: str = "bf16", trainable_fraction: float | None = None, load_in_4bit: bool = False
) -> float:
    """Model-state bytes (weights, grads, AdamW states, masters) per base parameter."""
    return sum(
        b
        for t, b in state_bytes(precision, trainable_fraction, load_in_4bit).items()
        if t in STATE_TERMS
    )


def plan_memory(
    n_params: float,
    strategy: str = "none",
    world_size: int = 1,
    precision: str = "bf16",
    trainable_fraction: float | None = None,
    load_in_4bit: bool = False,
    gpu_gb: float | None = None,
    activations_gb: float = 0.0,
) -> MemoryPlan:
    """Estimate every term per GPU and whether the sum fits GPUs of `gpu_gb` GB."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"finetune.distributed.strategy={strategy!r} is unknown; use one of {STRATEGIES}"
        )
    if world_size < 1 or (strategy == "none" and world_size != 1):
        raise ValueError(
            f"world size {world_size} with strategy={strategy!r}: strategy none "
            "runs on exactly one GPU; use ddp or fsdp for more"
        )
    per_param = state_bytes(precision, trainable_fraction, load_in_4bit)
    shards = world_size if strategy in SHARDED else 1
    gb = {name: n_params * b / 1e9 / shards for name, b in per_param.items()}
    # One process trains without DDP (no buckets), whatever the strategy says.
    ddp = strategy == "ddp" and world_size > 1
    gb["DDP buckets"] = n_params * per_param["gradients"] / 1e9 if ddp else 0.0
    gb["activations"] = activations_gb
    states = bytes_per_param(precision, trainable_fraction, load_in_4bit)
    return MemoryPlan(
        n_params, strategy, world_size, states, tuple((t, gb[t]) for t in TERMS), gpu_gb
    )


def activation_gb(
    shape: tuple, batch: int, length: int, checkpointing: bool = True, dtype_bytes: float = 2.0
) -> float:
    """Activations kept for backward on one GPU (Korthikanti et al. 2022, per layer
    s*b*h*(34 + 5*a*s/h) bytes at 2 bytes/value) plus the logits (bf16, their fp32 upcast for
    the loss and its gradient); with checkpointing only each layer's input is kept, plus one
    layer being recomputed."""
    hidden, layers, heads, vocab = shape
    tokens = batch * length
    layer = tokens * hidden * (34 + 5 * heads * length / hidden) * dtype_bytes / 2
    kept = layers * tokens * hidden * dtype_bytes + layer if checkpointing else layers * layer
    logits = tokens * vocab * (dtype_bytes + 8)
    return (kept + logits) / 1e9


def world_sizes(limit: int = 1024):
    """World sizes tried for FSDP: 1, 2, 4, 8 GPUs on one node, then whole 8-GPU nodes."""
    yield from (1, 2, 4)
    yield from range(GPUS_PER_NODE, limit + 1, GPUS_PER_NODE)


def min_sharded_gpus(n_params: float, gpu_gb: float = DEFAULT_GPU_GB, **kw) -> int | None:
    """Smallest FSDP world size whose per-GPU plan fits (None: not within 1024 GPUs)."""
    for n in world_sizes():
        if plan_memory(n_params, "fsdp", n, gpu_gb=gpu_gb, **kw).fits:
            return n
    return None


def size_label(n_params: float) -> str:
    """6.74e9 -> '6.7B', 13e9 -> '13B', 1.35e8 -> '135M'."""
    if n_params < 1e9:
        return f"{n_params / 1e6:.0f}M"
    return f"{n_params / 1e9:.2g}B" if n_params < 1e10 else f"{n_params / 1e9:.3g}B"


def check_plan(plan: MemoryPlan, label: str | None = None, **kw) -> MemoryPlan:
    """Raise ValueError naming the fix when `plan` does not fit; return it otherwise.

    `kw` (precision, trainable_fraction, load_in_4bit, activations_gb) must be those the plan
    was made with, so the advice about the FSDP world size counts the same terms. An unknown
    GPU size (plan.fits None) passes: there is nothing to compare with.
    """
    if plan.fits is not False:
        return plan
    where = "one GPU" if plan.world_size == 1 else f"each of {plan.world_size} GPUs"
    what = "full fine-tune" if kw.get("trainable_fraction") is None else "LoRA fine-tune"
    need = (
        f"{label or size_label(plan.n_params)} {what} needs about {plan.per_gpu_gb:.0f} GB "
        f"on {where} "
        f"({', '.join(f'{n} {gb:.1f}' for n, gb in plan.terms if gb)}), more than "
        f"{plan.usable_gb:.0f} GB ({100 - RESERVE * 100:.0f}% of {plan.gpu_gb:.0f} GB, "
        "the rest kept for the CUDA context and fragmentation)"
    )
    gpus = min_sharded_gpus(plan.n_params, plan.gpu_gb, **kw)
    if gpus is None:
        raise ValueError(
            f"{need}; no FSDP world size up to 1024 GPUs fits: use LoRA "
            "(finetune=qlora) or GPUs with more memory"
        )
    nodes = math.ceil(gpus / GPUS_PER_NODE)
    on = f"{gpus} GPUs" + (f" ({nodes} nodes of {GPUS_PER_NODE})" if nodes > 1 else "")
    raise ValueError(f"{need}; set finetune.distributed.strategy=fsdp with at least {on}")


LORA_TRAINABLE_FRACTION = 0.024  # r=64 adapters on every linear layer: 2.4% of LLaMA-2-7B


def finetune_plan(cfg, gpu_gb: float | None = None) -> tuple[MemoryPlan, dict]:
    """The plan of `cfg`'s fine-tune (model, finetune.lora, finetune.distributed) and the kwargs
    it was made with; GPU memory `gpu_gb`, else from torch, else finetune.distributed's."""
    from pipeline.train.launch import world_size

    ft = cfg.finetune
    dist, lora = ft.distributed, ft.lora
    world = world_size(dist)
    # FSDP's fp32 master weights exist only when FSDP shards (more than one process).
    master = dist.strategy == "fsdp" and world > 1 and dist.fsdp.fp32_master_weights
    fp32 = cfg.model.dtype == "float32" or master
    kw = {"precision": "mixed" if fp32 else "bf16"}
    if lora is not None:  # planned as it runs on a GPU node: auto means 4-bit there
        kw.update(
            trainable_fraction=LORA_TRAINABLE_FRACTION,
            load_in_4bit=str(lora.quantize_4bit).lower() != "false",
        )
    gpu_gb = gpu_gb if gpu_gb is not None else gpu_memory_gb(dist.gpu_memory_gb)
    try:
        n_params = model_params(cfg.model, dist.n_params)
    except ValueError:
        if gpu_gb is not None:  # only a plan that is checked needs the count
            raise
        n_params = float("nan")
    shape = model_shape(cfg.model)
    if shape is not None:
        kw["activations_gb"] = activation_gb(
            shape,
            ft.per_device_batch_size,
            ft.max_length,
            ft.gradient_checkpointing,
            4.0 if cfg.model.dtype == "float32" else 2.0,
        )
    return plan_memory(n_params, dist.strategy, world, gpu_gb=gpu_gb, **kw), kw


def check_finetune_memory(cfg) -> MemoryPlan:
    """Refuse, before launch, a fine-tune that does not fit its GPUs (the message names the
    fix); where the GPU memory is unknown (a CPU run) there is nothing to check."""
    plan, kw = finetune_plan(cfg)
    return check_plan(plan, **kw)
