"""Precision on this CPU, measured: what `dtype: auto` picks here and what each choice costs.

In one run, on the default's own model (SmolLM2-135M) and shapes: GEMM throughput in fp32 and
bf16 (the bound a training step can reach), training tokens/s and the loss after a few AdamW
steps for fp32, bf16 autocast (fp32 weights) and pure bf16 (the paper's code), and generation
tokens/s per batch size in fp32 and bf16 with whether the answers change with the batch. The
ratios are what matter (same run, same machine). Writes results/bench/precision.json and .md.

Run: python scripts/bench_precision.py [--steps 6] [--prompts 20]
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


def generation(location: str, load, dtype: str, batch_sizes: list[int], n: int) -> list[dict]:
    from pipeline.data.loading import format_prompt, load_prompts
    from pipeline.generation.batched import generate_batched

    model, tok = load(location, dtype)
    prompts = load_prompts("pkg:default_eval.json", "alpaca_eval", n)
    texts = [format_prompt(p, for_training=False) for p in prompts]
    rows, first = [], None
    for batch in batch_sizes:
        started = time.perf_counter()
        outputs, counts = generate_batched(model, tok, texts, batch, 60, 2048, 1.2)
        rate = sum(counts) / (time.perf_counter() - started)
        first = outputs if first is None else first
        rows.append(
            {
                "dtype": dtype,
                "batch": batch,
                "new_tokens_per_s": round(rate, 1),
                "mean_chars": round(sum(map(len, outputs)) / len(outputs), 1),
                "same_answers_as_first_batch_size": outputs == first,
            }
        )
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed AdamW steps per mode")
    parser.add_argument("--prompts", type=int, default=20, help="default prompts generated")
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
    result["generation"] = [
        row
        for dtype in ("float32", "bfloat16")
        for row in generation(location, load, dtype, [10, 20], opts.prompts)
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
        "| generation | batch | new tokens/s | mean chars | same answers as batch 10 |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {g['dtype']} | {g['batch']} | {g['new_tokens_per_s']} | {g['mean_chars']} | "
        f"{g['same_answers_as_first_batch_size']} |"
        for g in r["generation"]
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
