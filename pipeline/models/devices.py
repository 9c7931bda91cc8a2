"""The one place that decides where a model runs and in which precision, by capability.

Every model load of the pipeline (finetune, generate, overfit, lm-eval, the local judge) asks
here: CUDA when this process has a GPU, else the CPU; `dtype: auto` is bf16 where the device
runs it natively (CUDA with bf16 support; a CPU with AMX-BF16 or AVX512-BF16) and fp32
elsewhere. The resolved values, never `auto`, are written back into the config before any stage
key is computed, so keys and reports name what really ran.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic
CPUINFO = Path("/proc/cpuinfo")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the driver knows


def compute_device() -> str:
    """`cuda` when this process can use a CUDA GPU, else `cpu`."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_gpu_count() -> int:
    """CUDA GPUs this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16(device: str) -> bool:
    """Does `device` compute bf16 natively (fast), rather than emulating it (slow)?"""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def resolve_dtype(setting: str, device: str | None = None, bf16: bool | None = None) -> str:
    """`auto` -> bfloat16 where native on `device`, else float32; an explicit dtype unchanged.
    `bf16`: whether `device` runs bf16 natively, when it is not this process's to ask (a job's
    GPU seen from the login node); None asks this process's hardware."""
    if setting not in DTYPE_CHOICES:
        raise ValueError(f"dtype {setting!r} is unknown; use one of {DTYPE_CHOICES}")
    if setting != "auto":
        return setting
    native = native_bf16(device or compute_device()) if bf16 is None else bf16
    return "bfloat16" if native else "float32"


def resolve_precision(cfg, device: str | None = None, bf16: bool | None = None) -> None:
    """Write the resolved precision into `cfg` (in place), before any key: every model config's
    dtype; the Trainer's bf16 mixed precision (finetune.bf16), which runs only where the model's
    dtype resolved to bf16 (a CPU without native bf16 would emulate it at a quarter of fp32's
    speed, or refuse); and the dtype the weights train in (finetune.weights_dtype, see
    training_weights_dtype). `device`, `bf16`: the hardware of the process that will run it,
    where that is not this one (the dry run resolves as the job's node will; see resolve_dtype)."""
    cfg.model.dtype = resolve_dtype(cfg.model.dtype, device, bf16)
    if "finetune" in cfg:
        ft = cfg.finetune
        ft.bf16 = bool(ft.bf16) and cfg.model.dtype == "bfloat16"
        ft.weights_dtype = weights_dtype(ft, cfg.model.dtype, device)
        ft.loss_logits = loss_logits(ft, cfg.model.dtype, device)
    judge_model = cfg.judge.settings.get("model") if "judge" in cfg else None
    if judge_model is not None:
        judge_model.dtype = resolve_dtype(judge_model.dtype, device, bf16)


def weights_dtype(finetune, model_dtype: str, device: str | None = None) -> str:
    """finetune.weights_dtype resolved (auto: see training_weights_dtype) for a model of
    `model_dtype` on `device` (None: this process's)."""
    setting = str(finetune.weights_dtype)
    if setting != "auto":
        return setting
    mixed = bool(finetune.bf16) and model_dtype == "bfloat16"
    return training_weights_dtype(model_dtype, mixed, device or compute_device())


def loss_logits(finetune, model_dtype: str, device: str | None = None) -> str:
    """finetune.loss_logits resolved for a model of `model_dtype` on `device` (None: this
    process's). auto: `response` on a CPU under bf16 mixed precision, where it was measured
    (1.2x a training step of the default, losses equal to 4 decimals); `all` elsewhere, so that
    fp32 training keeps the bits (and stage keys) of its earlier runs: selecting rows changes
    the GEMMs' and the loss's summation order (last-bit differences), not the loss."""
    setting = str(finetune.loss_logits)
    if setting != "auto":
        return setting
    mixed = bool(finetune.bf16) and model_dtype == "bfloat16"
    return "response" if mixed and (device or compute_device()) == "cpu" else "all"


def training_weights_dtype(model_dtype: str, mixed_bf16: bool, device: str) -> str:
    """The dtype the weights (and so AdamW's states) train in, for finetune.weights_dtype=auto.

    On a GPU, model.dtype: bf16 weights under bf16 mixed precision are the paper's pure bf16
    (8 B/param; one 80 GB GPU holds a 7B full fine-tune). On a CPU, memory is not the limit and
    pure bf16 loses updates (bench_precision: loss 12.86 vs 11.28 after 6 AdamW steps on the
    default's model), so bf16 mixed precision keeps fp32 weights and AdamW and runs the forward
    and backward under bf16 autocast; the trained weights are written in model.dtype."""
    if device == "cpu" and mixed_bf16 and model_dtype == "bfloat16":
        return "float32"
    return model_dtype


def job_precision(cfg, gpus: int) -> None:
    """resolve_precision as a SLURM job of `gpus` GPUs per node will resolve it on its node: CUDA
    with bf16 when it has GPUs (every data-centre GPU since the A100 runs bf16 natively; the login
    node's own CPU says nothing about them), this machine's CPU when it has none."""
    if gpus:
        resolve_precision(cfg, "cuda", bf16=True)
    else:
        resolve_precision(cfg, "cpu")


# Share of each GPU's free memory kept beside the weights and the KV cache, as the memory plan
# keeps it (train/memory_plan.RESERVE): the CUDA context, prefill activations (a 70B MLP at batch
# 16 x 2048 tokens is ~1.9 GB), the cache's growth by concatenation, fragmentation.
INFERENCE_HEADROOM = 0.10
GIB = 1024**3


def kv_bytes_per_token(config, dtype: str) -> int:
    """KV cache bytes of one token: keys and values of every layer's key-value heads."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * layers * kv_heads * head_dim * DTYPES[dtype].itemsize


@dataclass(frozen=True)
class Placement:
    """A model's layers over a node's GPUs for generation, and what each GPU then holds."""

    device_map: dict  # module name -> GPU index (from_pretrained's device_map)
    free_gb: tuple  # GiB free on each GPU before loading
    weights_gb: tuple  # GiB of weights placed on each GPU
    kv_gb: tuple  # GiB of KV cache each GPU's layers hold at the decode's full length

    @property
    def left_gb(self) -> tuple:
        """GiB each GPU has left once weights and a full KV cache are in."""
        return tuple(f - w - k for f, w, k in zip(self.free_gb, self.weights_gb, self.kv_gb))

    @property
    def fits(self) -> bool:
        """Every module on a GPU, and every GPU keeps INFERENCE_HEADROOM of its free memory."""
        on_gpus = all(isinstance(d, int) for d in self.device_map.values())
        return on_gpus and all(
            left >= INFERENCE_HEADROOM * free for left, free in zip(self.left_gb, self.free_gb)
        )

    def describe(self) -> str:
        return "; ".join(
            f"GPU {i}: {w:.1f} GiB weights + {k:.1f} GiB KV cache of {f:.1f} GiB free"
            for i, (f, w, k) in enumerate(zip(self.free_gb, self.weights_gb, self.kv_gb))
        )


@contextmanager
def _quiet_accelerate():
    """accelerate warns 'Device N is not available' for every GPU of a placement computed for
    another machine's GPUs (the tests, a dry run), and about offloaded buffers of a placement
    that check_placement refuses anyway; neither says anything there."""
    import warnings

    log = logging.getLogger("accelerate.utils.modeling")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # "...buffer for offloaded layers": a placement that offloads is refused anyway
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        log.setLevel(level)


def gpu_placement(config, dtype: str, free_bytes: list[int], kv_tokens: int) -> Placement:
    """Place a model of `config` in `dtype` on GPUs with `free_bytes` free each, keeping on every
    GPU the KV cache of its own layers for `kv_tokens` tokens (batch x max total length) plus
    INFERENCE_HEADROOM: all on GPU 0 when it fits there, else balanced over every GPU. Computed
    on a meta model: nothing is loaded.

    accelerate's `sequential` map fills GPU 0 to the brim first (70B on 8 x 79 GiB: 77 GiB on GPU
    0, 51.5 on GPU 1, nothing on 2-7), leaving GPU 0 ~2 GiB for a cache that grows every decode
    step. Here each decoder layer carries its KV cache as a placeholder buffer while the map is
    made, so accelerate sizes every layer with the cache it will hold on its GPU.
    """
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes
    from transformers import AutoModelForCausalLM

    torch_dtype = DTYPES[dtype]
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    no_split = list(model._no_split_modules or [])
    weights = compute_module_sizes(model, dtype=torch_dtype)
    layers = {n for n, m in model.named_modules() if type(m).__name__ in no_split}
    kv_layer = kv_bytes_per_token(config, dtype) // config.num_hidden_layers * kv_tokens
    for name in layers:
        reserve = torch.empty(kv_layer, dtype=torch.uint8, device="meta")
        model.get_submodule(name).register_buffer("_kv_cache_reserve", reserve, persistent=False)
    usable = [int(free * (1 - INFERENCE_HEADROOM)) for free in free_bytes]

    def placed(device_map: dict) -> Placement:
        on, kv = [0.0] * len(free_bytes), [0.0] * len(free_bytes)
        for name, where in device_map.items():
            if isinstance(where, int):
                on[where] += weights[name]
                inside = name + "." if name else ""  # "" is the whole model
                held = sum(1 for n in layers if n == name or n.startswith(inside))
                kv[where] += kv_layer * held
        return Placement(
            dict(device_map),
            tuple(f / GIB for f in free_bytes),
            tuple(w / GIB for w in on),
            tuple(k / GIB for k in kv),
        )

    one = placed(_device_map(model, {0: usable[0]}, no_split, torch_dtype))
    if one.fits or len(free_bytes) == 1:  # a model that fits one GPU stays on one
        return one
    return placed(_device_map(model, dict(enumerate(usable)), no_split, torch_dtype, True))


def _device_map(model, budget: dict, no_split: list, dtype, balance: bool = False) -> dict:
    """accelerate's map of `model` into GPU `budget`s (bytes), balanced over them if asked."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    with _quiet_accelerate():
        if balance:
            balanced = get_balanced_memory(
                model, max_memory=budget, no_split_module_classes=no_split, dtype=dtype
            )
            # Never more than a GPU has: the balance adds a layer of slack to each budget.
            budget = {i: min(b, budget[i]) for i, b in balanced.items() if i in budget}
        return infer_auto_device_map(
            model, max_memory=budget, no_split_module_classes=no_split, dtype=dtype
        )


def check_placement(placement: Placement, gen_keys: str) -> Placement:
    """Raise ValueError naming the fix when `placement` does not fit; return it otherwise."""
    if placement.fits:
        return placement
    off = sorted({str(d) for d in placement.device_map.values() if not isinstance(d, int)})
    where = f" ({', '.join(off)} would hold the rest)" if off else ""
    raise ValueError(
        f"the model does not fit these GPUs for generation with its KV cache{where}: "
        f"{placement.describe()}; {INFERENCE_HEADROOM:.0%} of each GPU is kept for the CUDA "
        f"context and prefill. {gen_keys}: lower generate.batch_size (the KV cache is "
        "batch x max_total_length tokens), or use generate.engine=vllm with "
        "generate.settings.tensor_parallel_size set to the node's GPUs, or more GPUs"
    )


def inference_placement(
    device: str, location: str | None = None, dtype: str | None = None, kv_tokens: int = 0
) -> dict:
    """from_pretrained arguments that put a model for inference on `device`.

    On CUDA the weights go straight to the GPU. With several GPUs visible, gpu_placement: on GPU
    0 when the model and the KV cache of `kv_tokens` tokens (a generation's batch x max total
    length; 0 = weights only) fit there, else balanced over all of them with each GPU keeping
    the cache of its own layers, instead of accelerate's `sequential`, which fills GPU 0 first
    and leaves it no room for the cache; refused (ValueError) when that cannot fit. Without the
    model's `location` (the local judge), accelerate's `sequential`.
    """
    if device != "cuda":
        return {}
    gpus = cuda_gpu_count()
    if gpus < 2:
        return {"device_map": "cuda:0"}
    if location is None or dtype is None:
        return {"device_map": "sequential"}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location)
    free = [torch.cuda.mem_get_info(i)[0] for i in range(gpus)]
    placement = check_placement(
        gpu_placement(config, dtype, free, kv_tokens), f"{location} on {gpus} GPUs"
    )
    return {"device_map": placement.device_map}


def release_accelerator_memory() -> None:
    """Free what this process's dead models still hold: the next stage (vLLM in its own
    process, above all) needs the GPU's memory, and PyTorch's caching allocator keeps it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class GpuMemory:
    """One GPU's memory as this process sees it, in GiB."""

    index: int
    free_gb: float  # free on the device (every process's use counted)
    total_gb: float
    held_gb: float  # reserved by this process's caching allocator (live tensors and cache)


def gpu_memory(gpus: int) -> list[GpuMemory]:
    """Free, total and this process's reserved memory of GPUs 0..gpus-1, after releasing what
    dead models still hold (release_accelerator_memory); empty without CUDA."""
    if not torch.cuda.is_available():
        return []
    release_accelerator_memory()
    out = []
    for i in range(min(gpus, torch.cuda.device_count())):
        free, total = torch.cuda.mem_get_info(i)
        out.append(GpuMemory(i, free / GIB, total / GIB, torch.cuda.memory_reserved(i) / GIB))
    return out


def visible_cuda_gpus() -> int:
    """CUDA GPUs this process may use: torch's count, else the NVIDIA driver's (a CPU-only
    torch on a GPU node), limited by CUDA_VISIBLE_DEVICES."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    n = len(list(NVIDIA_GPUS.iterdir())) if NVIDIA_GPUS.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for v in visible.split(","):  # CUDA stops at the first invalid entry ("-1" hides all)
            if not v.strip() or v.strip().startswith("-"):
                break
            ids.append(v)
        n = min(n, len(ids))
    return n
