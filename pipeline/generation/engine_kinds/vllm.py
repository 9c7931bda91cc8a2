"""vllm: vLLM in its own Python environment (generate.settings.python), behind the worker."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipeline.generation import engines
from pipeline.generation.engines import (
    LOCATION,
    VENV_HINT,
    Engine,
    EngineError,
    register_engine,
    resolve_python,
)
from pipeline.logs import get_logger

LOG = get_logger("generate")
HELD_WARN_GIB = 1.0  # this process holding more than this when vLLM starts is worth a warning


@dataclass
class VllmSettings:
    """generate.settings of generate.engine=vllm."""

    # interpreter of a separate venv with vllm (it pins its own torch); a location: not hashed
    python: Optional[str] = field(default=None, metadata=LOCATION)
    tensor_parallel_size: int = 1  # GPUs one model is split over
    gpu_memory_utilization: float = 0.9  # share of each GPU's memory vLLM may take
    max_model_len: Optional[int] = None  # null = generate.max_total_length


@register_engine("vllm")
class VllmEngine(Engine):
    """Greedy decoding with vLLM's own batching; needs a CUDA GPU and a venv with vllm."""

    Settings = VllmSettings

    def gpus_needed(self, gen_cfg) -> int:
        return int(self.settings(gen_cfg).tensor_parallel_size)

    def check(self, gen_cfg) -> None:
        settings = self.settings(gen_cfg)
        python, tp = settings.python, settings.tensor_parallel_size
        if not python:
            raise ValueError(
                "generate.engine=vllm runs vLLM in its own Python environment "
                "(vLLM pins its own torch), and generate.settings.python is not set: " + VENV_HINT
            )
        exe = resolve_python(python)
        if exe is None:
            raise ValueError(
                f"generate.settings.python={python!r} is not an executable file: " + VENV_HINT
            )
        if not engines._has_module(exe, "vllm"):
            raise ValueError(
                f"generate.settings.python={python!r} has no vllm installed: run "
                f"`{exe} -m pip install vllm`, or use generate.engine=hf"
            )
        gpus = engines.visible_cuda_gpus()
        if gpus == 0:
            raise ValueError(
                "generate.engine=vllm needs a CUDA GPU and none is visible here "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
                ": run the generate stage on a GPU node (e.g. launcher=slurm), or "
                "set generate.engine=hf"
            )
        if tp > gpus:
            raise ValueError(
                f"generate.settings.tensor_parallel_size={tp} needs as many GPUs; "
                f"{gpus} visible: lower it or run on more GPUs"
            )

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
        """Through the worker, once the GPUs vLLM will take are free enough (check_gpus_free)."""
        check_gpus_free(self.settings(gen_cfg))
        return super().generate(model_dir, texts, gen_cfg, dtype, max_new, min_new, label, work)

    def run(self, request: dict) -> dict:
        import vllm
        from vllm import LLM, SamplingParams

        dec, opt = request["decoding"], request["options"]
        limit = min(dec["max_total_length"], opt.get("max_model_len") or dec["max_total_length"])
        llm = LLM(
            model=request["model_dir"],
            dtype=request["dtype"],
            seed=0,
            max_model_len=limit,
            tensor_parallel_size=opt.get("tensor_parallel_size", 1),
            gpu_memory_utilization=opt.get("gpu_memory_utilization", 0.9),
        )
        tok, low = llm.get_tokenizer(), max(dec["min_new_tokens"], 1)
        params = []
        for text in request["prompts"]:
            # The cap is per prompt (vLLM does not pad), like the hf engine's per-batch cap.
            room = limit - len(tok(text)["input_ids"])
            if room < low:
                raise ValueError(
                    f"a prompt leaves {room} new tokens within max total length "
                    f"{limit}; at least {low} are needed"
                )
            params.append(
                SamplingParams(
                    temperature=0.0,
                    max_tokens=min(dec["max_new_tokens"], room),
                    min_tokens=dec["min_new_tokens"],
                    repetition_penalty=dec["repetition_penalty"],
                    skip_special_tokens=True,
                )
            )
        started = time.time()
        results = llm.generate(request["prompts"], params)  # returned in prompt order
        # token_ids include the EOS that ended an answer, as the hf engine's counts do.
        return {
            "outputs": [r.outputs[0].text.strip() for r in results],
            "new_tokens": [len(r.outputs[0].token_ids) for r in results],
            "runtime_s": time.time() - started,
            "library": f"vllm {vllm.__version__}",
        }


def check_gpus_free(vllm_cfg) -> None:
    """Before vLLM starts: each of its tensor_parallel_size GPUs must have the share
    generate.settings.gpu_memory_utilization of its memory free, after this process has let go of
    what its dead models hold (models.devices.gpu_memory releases it first). A finetune that
    trained in this process, or a model an earlier stage still references, keeps memory in
    PyTorch's cache; vLLM would then fail at startup, or the two would share a GPU until one
    ran out. Raises EngineError with the numbers and the fix; warns when this process still
    holds memory that vLLM could have used."""
    from pipeline.models.devices import gpu_memory

    tp, share = int(vllm_cfg.tensor_parallel_size), float(vllm_cfg.gpu_memory_utilization)
    for gpu in gpu_memory(tp):
        others = max(0.0, gpu.total_gb - gpu.free_gb - gpu.held_gb)
        if gpu.held_gb > HELD_WARN_GIB:
            LOG.warning(
                "GPU %d: this process still holds %.1f GiB as vLLM starts (a model of an "
                "earlier stage is still referenced)",
                gpu.index,
                gpu.held_gb,
            )
        need = share * gpu.total_gb
        if gpu.free_gb < need:
            fits = math.floor(gpu.free_gb / gpu.total_gb * 100) / 100
            raise EngineError(
                f"GPU {gpu.index} has {gpu.free_gb:.1f} GiB free of {gpu.total_gb:.1f} GiB, "
                f"and vLLM is to take generate.settings.gpu_memory_utilization={share:g} of it "
                f"({need:.1f} GiB): this process holds {gpu.held_gb:.1f} GiB (a model of an "
                f"earlier stage, e.g. the finetune trained in this process), other processes "
                f"{others:.1f} GiB. Set generate.settings.gpu_memory_utilization={fits:g} or "
                "lower, free the GPU (run generate in a job of its own), or use "
                "generate.engine=hf"
            )
