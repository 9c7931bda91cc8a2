"""generate stage: batched greedy generation from a fine-tuned model, AlpacaEval-format outputs.

Prompts are sorted by length and batched with left padding; outputs.json holds one record per
prompt in input order: {instruction, output, generator, dataset}.

Run: python -m pipeline.run            (generates from both fine-tuned models of the default)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from pipeline.data import format_prompt, load_prompts
from pipeline.models import load_model_and_tokenizer
from pipeline.store import StageResult, Store, stage_key, write_json_atomic

VERSION = 1


def generate(finetuned: StageResult, gen_cfg, dtype: str, store: Store) -> StageResult:
    """Generate answers to `gen_cfg.prompts` with the model of the `finetuned` stage."""
    prompts = load_prompts(gen_cfg.prompts, gen_cfg.dataset_name, gen_cfg.limit)
    # The reference is for judging; it does not change what is generated.
    params = {k: v for k, v in OmegaConf.to_container(gen_cfg, resolve=True).items() if k != "reference"} | {"dtype": dtype}
    generator = finetuned.key.removeprefix("finetune-")
    key = stage_key("generate", generator.rsplit("-", 1)[0], params, [finetuned.key], VERSION)
    return store.materialize(key, lambda work: _generate(finetuned.path / "model", prompts, gen_cfg, dtype, generator, work), config=params)


def _generate(model_dir: Path, prompts: list[dict], cfg, dtype: str, generator: str, work: Path) -> dict:
    model, tok = load_model_and_tokenizer(str(model_dir), dtype)
    model.eval()
    tok.padding_side = "left"
    texts = [format_prompt(p, for_training=False) for p in prompts]
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first: memory peaks early
    outputs: list[str | None] = [None] * len(texts)
    new_token_counts = [0] * len(texts)
    started = time.time()
    for start in tqdm(range(0, len(order), cfg.batch_size), desc=f"generate {generator}", unit="batch"):
        idx = order[start:start + cfg.batch_size]
        batch = tok([texts[i] for i in idx], return_tensors="pt", padding=True)
        room = cfg.max_total_length - batch["input_ids"].shape[1]
        if room <= 0:
            raise ValueError(f"prompt of {batch['input_ids'].shape[1]} tokens leaves no room within generate.max_total_length={cfg.max_total_length}")
        with torch.no_grad():
            out = model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=min(cfg.max_new_tokens, room),
                repetition_penalty=cfg.repetition_penalty,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        new = out[:, batch["input_ids"].shape[1]:]
        for row, i in enumerate(idx):
            tokens = new[row]
            n = int((tokens != tok.pad_token_id).sum()) if tok.pad_token_id != tok.eos_token_id else _until_eos(tokens, tok.eos_token_id)
            new_token_counts[i] = n
            outputs[i] = tok.decode(tokens, skip_special_tokens=True).strip()
    elapsed = time.time() - started
    records = [
        {"instruction": p["instruction"] if not p["input"] else f"{p['instruction']}\n\n{p['input']}",
         "output": o, "generator": generator, "dataset": p["dataset"]}
        for p, o in zip(prompts, outputs)
    ]
    write_json_atomic(work / "outputs.json", records)
    hit_cap = sum(n >= cfg.max_new_tokens for n in new_token_counts)
    return {
        "gen_n_outputs": len(records),
        "gen_n_empty": sum(not r["output"] for r in records),
        "gen_n_hit_max_new_tokens": hit_cap,
        "gen_mean_new_tokens": round(sum(new_token_counts) / len(records), 2),
        "gen_mean_output_chars": round(sum(len(r["output"]) for r in records) / len(records), 2),
        "gen_runtime_s": round(elapsed, 2),
        "gen_new_tokens_per_s": round(sum(new_token_counts) / max(elapsed, 1e-9), 2),
    }


def _until_eos(tokens: torch.Tensor, eos_id: int) -> int:
    hits = (tokens == eos_id).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(tokens)
