"""hf: transformers generate, in the pipeline's process (the default) or behind the worker."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.generation.engines import Engine, register_engine


@register_engine("hf")
class HfEngine(Engine):
    """Batched greedy generation (generation.batched) on this process's device."""

    def key_params(self, settings: dict) -> dict:
        from pipeline.models.devices import compute_device
        from pipeline.store.key_rules import hf_engine_params

        return hf_engine_params(compute_device())

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
        """In this process; resumable by batch (work/progress.jsonl); the GPU handed back."""
        from pipeline.generation.batched import generate_batched
        from pipeline.models.devices import compute_device, release_accelerator_memory
        from pipeline.models.loading import load_model_and_tokenizer

        # The KV cache of a full batch: every GPU of a model spread over several keeps room for it.
        model, tok = load_model_and_tokenizer(
            str(model_dir),
            dtype,
            device=compute_device(),
            kv_tokens=gen_cfg.batch_size * gen_cfg.max_total_length,
        )
        started = time.time()
        outputs, counts = generate_batched(
            model,
            tok,
            texts,
            gen_cfg.batch_size,
            max_new,
            gen_cfg.max_total_length,
            gen_cfg.repetition_penalty,
            min_new,
            desc=f"generate {label}",
            progress=work / "progress.jsonl",
        )  # a requeued job continues where it stopped
        elapsed = time.time() - started
        del model
        release_accelerator_memory()  # the next stage (vLLM above all) may need the whole GPU
        return outputs, counts, elapsed, {}

    def run(self, request: dict) -> dict:
        import transformers

        from pipeline.generation.batched import generate_batched
        from pipeline.models.devices import compute_device
        from pipeline.models.loading import load_model_and_tokenizer

        dec = request["decoding"]
        model, tok = load_model_and_tokenizer(
            request["model_dir"],
            request["dtype"],
            device=compute_device(),
            kv_tokens=dec["batch_size"] * dec["max_total_length"],
        )
        started = time.time()
        outputs, counts = generate_batched(
            model,
            tok,
            request["prompts"],
            dec["batch_size"],
            dec["max_new_tokens"],
            dec["max_total_length"],
            dec["repetition_penalty"],
            dec["min_new_tokens"],
            desc="generate (hf worker)",
        )
        return {
            "outputs": outputs,
            "new_tokens": counts,
            "runtime_s": time.time() - started,
            "library": f"transformers {transformers.__version__}",
        }
