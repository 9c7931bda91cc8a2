"""vllm: vLLM in its own Python environment (generate.vllm.python), behind the worker."""

from __future__ import annotations

import os
import time

from pipeline.generation import engines
from pipeline.generation.engines import VENV_HINT, Engine, register_engine, resolve_python


@register_engine("vllm")
class VllmEngine(Engine):
    """Greedy decoding with vLLM's own batching; needs a CUDA GPU and a venv with vllm."""

    def gpus_needed(self, gen_cfg) -> int:
        return int(gen_cfg.vllm.tensor_parallel_size)

    def check(self, gen_cfg) -> None:
        python, tp = gen_cfg.vllm.python, gen_cfg.vllm.tensor_parallel_size
        if not python:
            raise ValueError(
                "generate.engine=vllm runs vLLM in its own Python environment "
                "(vLLM pins its own torch), and generate.vllm.python is not set: " + VENV_HINT
            )
        exe = resolve_python(python)
        if exe is None:
            raise ValueError(
                f"generate.vllm.python={python!r} is not an executable file: " + VENV_HINT
            )
        if not engines._has_module(exe, "vllm"):
            raise ValueError(
                f"generate.vllm.python={python!r} has no vllm installed: run "
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
                f"generate.vllm.tensor_parallel_size={tp} needs as many GPUs; "
                f"{gpus} visible: lower it or run on more GPUs"
            )

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
