"""The one place that decides where a model runs and in which precision, by capability.

Every model load of the pipeline (finetune, generate, overfit, lm-eval, the local judge) asks
here: CUDA when this process has a GPU, else the CPU; `dtype: auto` is bf16 where the device
runs it natively (CUDA with bf16 support; a CPU with AMX-BF16 or AVX512-BF16) and fp32
elsewhere. The resolved values, never `auto`, are written back into the config before any stage
key is computed, so keys and reports name what really ran.
"""

from __future__ import annotations

import gc
import os
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


def resolve_dtype(setting: str, device: str | None = None) -> str:
    """`auto` -> bfloat16 where native on `device`, else float32; an explicit dtype unchanged."""
    if setting not in DTYPE_CHOICES:
        raise ValueError(f"dtype {setting!r} is unknown; use one of {DTYPE_CHOICES}")
    if setting != "auto":
        return setting
    return "bfloat16" if native_bf16(device or compute_device()) else "float32"


def resolve_precision(cfg) -> None:
    """Write the resolved dtype into every model config of `cfg` (in place), before any key."""
    cfg.model.dtype = resolve_dtype(cfg.model.dtype)
    judge_model = cfg.judge.get("model") if "judge" in cfg else None
    if judge_model is not None:
        judge_model.dtype = resolve_dtype(judge_model.dtype)


def inference_placement(device: str) -> dict:
    """from_pretrained arguments that put a model for inference on `device`.

    On CUDA the weights go straight to the GPU; with several GPUs visible, `sequential` fills
    the first before the next, so a model that fits one GPU stays on one and a 70B model spans
    the node (accelerate's big-model inference), instead of landing whole on the host.
    """
    if device != "cuda":
        return {}
    return {"device_map": "sequential" if cuda_gpu_count() > 1 else "cuda:0"}


def device_key_params(device: str) -> dict:
    """What of the device enters an inference stage's key: nothing on the CPU (keys computed
    before devices were recorded are still found), the device elsewhere (other numerics)."""
    return {} if device == "cpu" else {"device": device}


def release_accelerator_memory() -> None:
    """Free what this process's dead models still hold: the next stage (vLLM in its own
    process, above all) needs the GPU's memory, and PyTorch's caching allocator keeps it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
