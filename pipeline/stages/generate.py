"""generate stage: batched greedy generation from a fine-tuned model, AlpacaEval-format outputs.

Prompts are sorted by length and batched with left padding; outputs.json holds one record per
prompt in input order: {instruction, output, generator, dataset}.
generate.engine=hf (default) runs transformers in this process; generate.engine=vllm runs vLLM in
its own environment through the worker of pipeline.generation.engines (same outputs.json).

Run: python -m pipeline.run            (generates from both fine-tuned models of the default)
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.data.loading import (
    DataError,
    check_source,
    format_prompt,
    judged_instruction,
    load_prompts,
)
from pipeline.generation.engines import check_engine, engine, engine_settings
from pipeline.models.devices import compute_device
from pipeline.stages.contract import Call, Context
from pipeline.store import key_rules
from pipeline.store.store import StageResult, Store, readable_of, stage_key, write_json_atomic

VERSION = 2  # 2: the repetition penalty skips left padding (an answer no longer depends on its
# batch), and the batch goes to the model's device


# The most characters one token can stand for in the tokenizers this project names: a
# SentencePiece piece (LLaMA) is at most 16, SmolLM2's longest token is 81 characters (a run of
# spaces), the tiny BPE's 14. The generate check has no tokenizer (loading one takes 5-15 s, or
# the hub), so a prompt is measured in characters: one longer than this many times
# max_total_length cannot fit in any of them, and is refused before training. A prompt under the
# bound may still be too long in tokens: that is found when it is tokenized, in the stage.
MAX_CHARS_PER_TOKEN = 128


def check(cfg) -> None:
    """Cheap: the decoding numbers are in range, the prompt file exists and its rows are valid
    (none too long for max_total_length), the engine can run here, and every length-control
    variant fits the decoding caps."""
    gen = cfg.generate
    _check_decoding(gen)
    check_source(gen.prompts, "generate.prompts")
    if gen.limit is not None and gen.limit < 1:
        raise ValueError(
            f"generate.limit={gen.limit}: give a number of prompts >= 1, or null for all of them"
        )
    if not gen.prompts.startswith("hf:"):  # rows too: a bad one must not wait for training
        prompts = load_prompts(gen.prompts, gen.dataset_name, gen.limit)
        _check_prompt_lengths(prompts, gen)
    check_engine(cfg.generate)  # the registry's engine (unknown: names them), its own checks
    if cfg.length_control.enabled:
        for name, v in cfg.length_control.variants.items():
            _check_variant({"name": name, **OmegaConf.to_container(v, resolve=True)}, cfg.generate)


def _check_decoding(gen_cfg) -> None:
    """Each number of generate in its range, named before the engine would fail on it."""
    for key in ("batch_size", "max_new_tokens"):
        if gen_cfg[key] < 1:
            raise ValueError(f"generate.{key}={gen_cfg[key]}: must be >= 1")
    if gen_cfg.max_total_length < 2:
        raise ValueError(
            f"generate.max_total_length={gen_cfg.max_total_length}: prompt + answer tokens, "
            "must be >= 2 (the paper's 2048)"
        )
    penalty = float(gen_cfg.repetition_penalty)
    if not (math.isfinite(penalty) and penalty > 0):
        raise ValueError(
            f"generate.repetition_penalty={gen_cfg.repetition_penalty}: a finite number > 0 "
            "(1.0 = off, the paper's 1.2)"
        )


def _check_prompt_lengths(prompts: list[dict], gen_cfg) -> None:
    """No prompt longer in characters than max_total_length - 1 tokens can be (one new token
    must fit beside it); see MAX_CHARS_PER_TOKEN."""
    bound = MAX_CHARS_PER_TOKEN * (gen_cfg.max_total_length - 1)
    for i, prompt in enumerate(prompts):
        chars = len(format_prompt(prompt, for_training=False))
        if chars > bound:
            raise DataError(
                f"generate.prompts: {gen_cfg.prompts}: row {i} has {chars} characters: more "
                f"than generate.max_total_length={gen_cfg.max_total_length} tokens can hold "
                f"with one new token (no token here is over {MAX_CHARS_PER_TOKEN} characters); "
                "shorten or drop that row, or raise generate.max_total_length"
            )


def run(cfg, ctx: Context, call: Call) -> StageResult:
    """Plan entry: answer the evaluation prompts with the chain's fine-tuned model."""
    variant = None
    if call.variant is not None:
        settings = cfg.length_control.variants[call.variant]
        variant = {"name": call.variant, **OmegaConf.to_container(settings, resolve=True)}
    return generate(call.upstream["finetune"], cfg.generate, cfg.model.dtype, ctx.store, variant)


def _check_variant(variant: dict, gen_cfg) -> None:
    name, low, high = variant["name"], variant["min_new_tokens"], variant["max_new_tokens"]
    if high is not None and high < low:
        raise ValueError(
            f"length_control.variants.{name}: max_new_tokens={high} is below "
            f"min_new_tokens={low}; raise max_new_tokens"
        )
    if high is None and gen_cfg.max_new_tokens < low:
        raise ValueError(
            f"length_control.variants.{name}: min_new_tokens={low} exceeds "
            f"generate.max_new_tokens={gen_cfg.max_new_tokens}; set the variant's "
            "max_new_tokens"
        )


def generate(
    finetuned: StageResult, gen_cfg, dtype: str, store: Store, variant: dict | None = None
) -> StageResult:
    """Generate answers to `gen_cfg.prompts` with the model of the `finetuned` stage.

    `variant` (Table 5's length control: name, instruction_suffix, min_new_tokens,
    max_new_tokens) changes the prompts and decoding; outputs.json keeps the original
    instructions, so the judge sees the task as posed.
    """
    prompts = load_prompts(gen_cfg.prompts, gen_cfg.dataset_name, gen_cfg.limit)
    params = generate_params(gen_cfg, dtype)
    generator = finetuned.key.removeprefix("finetune-")
    readable = readable_of(finetuned.key)
    if variant is not None:
        params |= {"variant": dict(variant)}  # only then: plain generations keep their keys
        _check_variant(variant, gen_cfg)
        generator, readable = f"{generator}_{variant['name']}", f"{readable}_{variant['name']}"
    key = stage_key("generate", readable, params, [finetuned.key], VERSION)
    return store.materialize(
        key,
        lambda work: _generate(
            finetuned.path / "model", prompts, gen_cfg, dtype, generator, variant, work
        ),
        config=params,
        resumable=True,  # keeps progress.jsonl of a killed run
    )


def generate_params(gen_cfg, dtype: str) -> dict:
    """The part of the generate config the stage key hashes, plus the weights' dtype.

    The reference is for judging; it does not change what is generated. The engine and its
    typed settings (generate.settings) enter only when it is not the default hf, so every key
    computed before engines existed is still found; the interpreter path never does (a location,
    not a setting). The hf engine's device enters where it is not the CPU
    (store/key_rules.py device_params), the batch size only where it can change an answer
    (key_rules.generate_params).
    """
    settings = OmegaConf.to_container(engine_settings(gen_cfg), resolve=True, enum_to_str=True)
    params = OmegaConf.to_container(gen_cfg, resolve=True, enum_to_str=True)
    params.pop("reference", None)
    params.pop("settings", None)
    name = params.pop("engine", "hf")
    params = key_rules.generate_params(params, str(dtype), compute_device())
    # dtype as plain str: model.dtype is the schema's Enum member
    return params | engine(name).key_params(settings) | {"dtype": str(dtype)}


def _generate(
    model_dir: Path,
    prompts: list[dict],
    cfg,
    dtype: str,
    generator: str,
    variant: dict | None,
    work: Path,
) -> dict:
    suffix = variant["instruction_suffix"] if variant else ""
    min_new = variant["min_new_tokens"] if variant else 0
    max_new = (
        variant["max_new_tokens"]
        if variant and variant["max_new_tokens"] is not None
        else cfg.max_new_tokens
    )
    texts = [
        format_prompt(p | {"instruction": p["instruction"] + suffix}, for_training=False)
        for p in prompts
    ]
    outputs, new_token_counts, elapsed, engine_metrics = engine(cfg.engine).generate(
        model_dir, texts, cfg, str(dtype), max_new, min_new, generator, work
    )
    records = [
        {
            "instruction": judged_instruction(p),
            "output": o,
            "generator": generator,
            "dataset": p["dataset"],
        }
        for p, o in zip(prompts, outputs)
    ]
    write_json_atomic(work / "outputs.json", records)
    return {
        "gen_n_outputs": len(records),
        "gen_n_empty": sum(not r["output"] for r in records),
        "gen_n_hit_max_new_tokens": sum(n >= max_new for n in new_token_counts),
        "gen_mean_new_tokens": round(sum(new_token_counts) / len(records), 2),
        "gen_min_new_tokens": min(new_token_counts),
        "gen_mean_output_chars": round(sum(len(r["output"]) for r in records) / len(records), 2),
        "gen_runtime_s": round(elapsed, 2),
        "gen_new_tokens_per_s": round(sum(new_token_counts) / max(elapsed, 1e-9), 2),
    } | engine_metrics
