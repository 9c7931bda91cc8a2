"""Precision on this CPU, measured: what `dtype: auto` picks here and what each choice costs.

In one run, on the default's own model (SmolLM2-135M) and shapes: GEMM throughput in fp32 and
bf16 (the bound a training step can reach), training tokens/s and the loss after a few AdamW
steps for fp32, bf16 autocast (fp32 weights) and pure bf16 (the paper's code), and generation
tokens/s in fp32 and bf16 for transformers' generate (the path before the pipeline's decoder)
and the pipeline's decoder, beside the rate the GEMM throughput allows, with whether the answers
are the same. The ratios are what matter (same run, same machine). Writes
results/bench/precision.json and .md.

Run: python scripts/bench_precision.py [--steps 6] [--prompts 50] [--max-new 160]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.models.devices import CPU_BF16_FLAGS, cpu_flags, resolve_dtype  # noqa: E402

GEMM_SHAPES = [(1280, 576, 1536), (1280, 576, 49152), (2048, 2048, 2048)]  # m, k, n


def gemm_gflops(dtype: torch.dtype, m: int, k: int, n: int, repeats: int = 5) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up: kernels chosen, memory touched
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - started) / 1e9


def _default_model():
    from omegaconf import OmegaConf

    from pipeline.models.loading import base_model_dir, load_model_and_tokenizer
    from pipeline.store.store import Store
    from tests.support.composed import composed

    cfg = composed()
    location = base_model_dir(cfg.model, Store(Path(OmegaConf.select(cfg, "paths.cache"))))
    return location, load_model_and_tokenizer


def train_tokens_per_s(location: str, load, mode: str, steps: int) -> dict:
    """AdamW steps on batch 4 x 300 tokens: fp32, bf16 autocast, or the model in pure bf16."""
    model, _ = load(location, "bfloat16" if mode == "pure_bf16" else "float32")
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 300))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    losses, started = [], None
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()  # step 0 is warm-up
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast_bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(loss), 4))
    rate = steps * ids.numel() / (time.perf_counter() - started)
    return {"mode": mode, "tokens_per_s": round(rate, 1), "losses": losses}


def _with_transformers_generate(model, tok, texts, batch: int, max_new: int):
    """The path the pipeline took before its own decoder: transformers' generate per batch
    (every row in every step until the batch's longest answer ends), the same penalty."""
    from transformers import LogitsProcessorList

    from pipeline.generation.greedy import PenaltyIgnoringPadding

    tok.padding_side = "left"
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    outputs, counts = [""] * len(texts), [0] * len(texts)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True)
        pads = (enc["attention_mask"] == 0).sum(dim=1)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new,
                repetition_penalty=1.0,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                logits_processor=LogitsProcessorList([PenaltyIgnoringPadding(1.2, pads)]),
            )
        for row, i in enumerate(idx):
            new = out[row, enc["input_ids"].shape[1] :].tolist()
            new = new[: new.index(tok.eos_token_id) + 1] if tok.eos_token_id in new else new
            outputs[i] = tok.decode(new, skip_special_tokens=True).strip()
            counts[i] = len(new)
    return outputs, counts


def generation(location: str, load, dtype: str, n: int, max_new: int, limit: float) -> list:
    """New tokens/s on the default's prompts and decoding, for transformers' generate at the old
    default batch (10) and the pipeline's decoder (answers leave their batch as they end) at 10
    and at all prompts in one batch; beside `limit`, the rate the measured GEMM throughput
    would allow (2 x params FLOPs per new token)."""
    from pipeline.data.loading import format_prompt, load_prompts
    from pipeline.generation.batched import generate_batched

    model, tok = load(location, dtype)
    prompts = load_prompts("pkg:default_eval.json", "alpaca_eval", n)
    texts = [format_prompt(p, for_training=False) for p in prompts]
    rows, first = [], None
    for engine, batch in (("transformers generate", 10), ("pipeline decoder", 10),
                          ("pipeline decoder", n)):  # fmt: skip
        started = time.perf_counter()
        if engine == "transformers generate":
            outputs, counts = _with_transformers_generate(model, tok, texts, batch, max_new)
        else:
            outputs, counts = generate_batched(model, tok, texts, batch, max_new, 2048, 1.2)
        seconds = time.perf_counter() - started
        first = outputs if first is None else first
        rows.append(
            {
                "dtype": dtype,
                "engine": engine,
                "batch": batch,
                "prompts": n,
                "seconds": round(seconds, 1),
                "new_tokens_per_s": round(sum(counts) / seconds, 1),
                "gemm_limit_tokens_per_s": round(limit, 1),
                "mean_chars": round(sum(map(len, outputs)) / len(outputs), 1),
                "same_answers_as_transformers_generate": outputs == first,
            }
        )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed AdamW steps per mode")
    parser.add_argument("--prompts", type=int, default=50, help="default prompts generated")
    parser.add_argument("--max-new", type=int, default=160, help="new tokens per answer at most")
    opts = parser.parse_args(argv)
    flags = cpu_flags()
    result = {
        "cpu": platform.processor() or platform.machine(),
        "native_bf16_flags": sorted(f for f in CPU_BF16_FLAGS if f in flags),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "auto_resolves_to": resolve_dtype("auto", "cpu"),
        "threads": torch.get_num_threads(),
    }
    result["gemm_gflops"] = [
        {
            "shape": s,
            "fp32": round(gemm_gflops(torch.float32, *s), 1),
            "bf16": round(gemm_gflops(torch.bfloat16, *s), 1),
        }
        for s in GEMM_SHAPES
    ]
    location, load = _default_model()
    result["training"] = [
        train_tokens_per_s(location, load, mode, opts.steps)
        for mode in ("fp32", "autocast_bf16", "pure_bf16")
    ]
    params = 134.5e6  # SmolLM2-135M
    best = {d: max(g[d] for g in result["gemm_gflops"]) for d in ("fp32", "bf16")}
    result["generation"] = [
        row
        for dtype, key in (("float32", "fp32"), ("bfloat16", "bf16"))
        for row in generation(
            location, load, dtype, opts.prompts, opts.max_new, best[key] * 1e9 / (2 * params)
        )
    ]
    out = ROOT / "results" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (out / "precision.md").write_text(render(result), encoding="utf-8")
    print(render(result))
    return 0


def render(r: dict) -> str:
    fp32 = r["training"][0]["tokens_per_s"]
    lines = [
        f"# Precision on this CPU ({r['torch_cpu_capability']}, {r['threads']} threads, "
        f"native bf16 flags: {', '.join(r['native_bf16_flags']) or 'none'})",
        "",
        f"`dtype: auto` resolves to **{r['auto_resolves_to']}** here. Written by "
        "`python scripts/bench_precision.py` (one run: the ratios compare).",
        "",
        "| GEMM m x k x n | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {' x '.join(map(str, g['shape']))} | {g['fp32']} | {g['bf16']} | "
        f"{g['bf16'] / g['fp32']:.2f} |"
        for g in r["gemm_gflops"]
    ]
    lines += [
        "",
        "| training (SmolLM2-135M, 4 x 300 tokens) | tokens/s | vs fp32 | losses |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t['mode']} | {t['tokens_per_s']} | {t['tokens_per_s'] / fp32:.2f} | "
        f"{' '.join(map(str, t['losses']))} |"
        for t in r["training"]
    ]
    lines += [
        "",
        f"| generation ({r['generation'][0]['prompts']} default prompts) | engine | batch "
        "| seconds | new tokens/s | GEMM limit "
        "| mean chars | same answers as transformers' generate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {g['dtype']} | {g['engine']} | {g['batch']} | {g['seconds']} | "
        f"{g['new_tokens_per_s']} | {g['gemm_limit_tokens_per_s']} | {g['mean_chars']} | "
        f"{g['same_answers_as_transformers_generate']} |"
        for g in r["generation"]
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
