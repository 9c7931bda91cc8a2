"""One-GPU acceptance of the paper-scale path: what only a GPU can show, in one short run.

Checks, each a row of the table it writes: the device a model generates on; bf16 training
steps with the NEFT hook (noise norm per sequence about alpha/sqrt(3)), tokens/s and MFU; FSDP
at world size 1 through accelerate's own prepare (parameter dtype for both fp32_master_weights
settings, sharded checkpoints, rank-0 loading) and, on a GPU, through the real Trainer under
torchrun (a checkpoint's files, the consolidated weights' dtype); peak GPU memory of a random
~1B Llama against the memory plan; answers identical alone and in one batch (fp32); lm-eval's
model on the GPU. On a CPU it runs the same code on a tiny model (CI runs it: it cannot rot);
a check that needs CUDA says "needs CUDA" there, not "pass".

Needs only torch, transformers, peft and accelerate (lm-eval optional: its row says whether it
was installed). Under 8 minutes on one H100/H200.

Run: python scripts/gpu_acceptance.py                  (GPU node: writes results/bench/gpu.md)
     python scripts/gpu_acceptance.py --out /tmp/a.md  (anywhere; on a CPU the tiny model)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.models.devices import compute_device, resolve_dtype  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU


def tiny_llama(dtype, hidden=32, layers=2, vocab=None, heads=4, inter=64):
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.models.loading import build_tiny_tokenizer

    tok = build_tiny_tokenizer(512)
    config = LlamaConfig(
        vocab_size=vocab or len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dtype), tok


def _prompts(n: int) -> list[str]:
    from pipeline.data.loading import ASSETS, format_prompt

    rows = json.loads((ASSETS / "default_eval.json").read_text(encoding="utf-8"))[:n]
    return [
        format_prompt({"instruction": r["instruction"], "input": r.get("input", "")}, False)
        for r in rows
    ]


def check_inference_device(device: str) -> dict:
    """Where a saved model lands when the pipeline loads it for generation."""
    import tempfile

    from pipeline.generation.batched import generate_batched
    from pipeline.models.loading import load_model_and_tokenizer

    model, tok = tiny_llama(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        loaded, tok = load_model_and_tokenizer(tmp, "float32", device=device)
        generate_batched(loaded, tok, _prompts(2), 2, 8, 1024, 1.2)
    where = str(loaded.device)
    return {
        "check": "generation device",
        "measured": where,
        "expected": device,
        "ok": where.startswith(device),
    }


def check_neft_training(device: str, big: bool) -> dict:
    """bf16 steps with the NEFT hook: noise norm per sequence, loss, tokens/s, MFU."""
    from pipeline.train.noise import attach_neftune

    dtype = getattr(torch, resolve_dtype("auto", device))
    shape = dict(hidden=2048, layers=16, vocab=32000, heads=16, inter=5632) if big else {}
    model, _ = tiny_llama(dtype, **shape)
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    batch, length, alpha = (4, 512, 5.0) if big else (2, 64, 5.0)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=device)
    emb = model.get_input_embeddings()
    clean = emb(ids).detach()
    handle = attach_neftune(model, alpha, "uniform", "per_example")
    captured = {}  # registered after the noise hook, so it sees the noisy embeddings
    hook = emb.register_forward_hook(lambda m, i, o: captured.update(out=o.detach()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    hook.remove()
    norm = (captured["out"].float() - clean.float()).flatten(1).norm(dim=1).mean().item()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses, steps = [], 6
    _sync(device)
    started = time.time()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    _sync(device)
    handle.remove()
    tokens_per_s = steps * batch * length / (time.time() - started)
    mfu = _mfu(n_params, tokens_per_s, device)
    expected = alpha / math.sqrt(3)
    ok = abs(norm / expected - 1) < 0.05 and all(math.isfinite(x) for x in losses)
    return {
        "check": f"NEFT {dtype} training ({n_params / 1e6:.0f}M params)",
        "measured": f"noise norm {norm:.3f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
        f"{tokens_per_s:,.0f} tokens/s; MFU {mfu}",
        "expected": f"norm {expected:.3f} (alpha/sqrt(3)) +-5%",
        "ok": ok,
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _mfu(n_params: int, tokens_per_s: float, device: str) -> str:
    if device != "cuda":
        return "n/a (CPU)"
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    if peak is None:
        return f"n/a (no peak known for {name})"
    return f"{6 * n_params * tokens_per_s / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s"


def check_memory_plan(device: str) -> dict:
    """Peak GPU memory of AdamW steps on a random ~1B Llama (bf16) vs the memory plan."""
    from pipeline.train.memory_plan import activation_gb, plan_memory

    row = {"check": "memory plan, ~1B Llama, bf16 AdamW"}
    if device != "cuda":
        return row | {"measured": "needs CUDA", "expected": "within 25% of the plan", "ok": None}
    model, _ = tiny_llama(torch.bfloat16, hidden=2048, layers=16, vocab=32000, heads=16, inter=5632)
    model.to(device).train()
    model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    batch, length = 4, 512
    ids = torch.randint(0, 32000, (batch, length), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    peak = torch.cuda.max_memory_allocated() / 1e9
    config = model.config
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, 32000)
    plan = plan_memory(
        n_params,
        "none",
        1,
        precision="bf16",
        activations_gb=activation_gb(shape, batch, length, True),
    )
    planned = plan.per_gpu_gb
    return row | {
        "measured": f"peak {peak:.2f} GB ({n_params / 1e9:.2f}B params)",
        "expected": f"plan {planned:.2f} GB, within 25%",
        "ok": abs(peak / planned - 1) < 0.25,
    }


def check_batch_invariance(device: str) -> dict:
    from pipeline.generation.batched import generate_batched

    model, tok = tiny_llama(torch.float32)
    model.to(device)
    texts = _prompts(8)
    alone = [generate_batched(model, tok, [t], 1, 24, 1024, 1.2)[0][0] for t in texts]
    batched = generate_batched(model, tok, texts, 8, 24, 1024, 1.2)[0]
    differ = sum(a != b for a, b in zip(alone, batched))
    return {
        "check": "fp32 answers alone vs one batch of 8",
        "measured": f"{differ} differ",
        "expected": "0 differ",
        "ok": differ == 0,
    }


def check_lm_eval(device: str, work: Path) -> dict:
    row = {"check": "lm-eval HFLM placement", "expected": f"model on {device}"}
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return row | {"measured": "lm-eval not installed (bring its wheel)", "ok": None}
    from pipeline.models.devices import cuda_gpu_count
    from pipeline.stages.openllm import hflm_placement

    model, tok = tiny_llama(torch.float32)
    model.save_pretrained(work / "lm")
    tok.save_pretrained(work / "lm")
    lm = HFLM(
        pretrained=str(work / "lm"),
        dtype=torch.float32,
        batch_size=2,
        **hflm_placement(device, cuda_gpu_count(), work),
    )
    where = str(lm.model.device)
    return row | {"measured": where, "ok": where.startswith(device)}


BEGIN, END = "<!-- gpu_acceptance: begin -->", "<!-- gpu_acceptance: end -->"


def write_table(out: Path, table: str) -> None:
    """Write `table` to `out`, or between its BEGIN/END markers when it has them (gpu.md keeps
    the history of earlier GPU checks around the table)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = out.read_text(encoding="utf-8") if out.is_file() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        table = f"{head}{BEGIN}\n{table}{END}{rest.partition(END)[2]}"
    out.write_text(table, encoding="utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="markdown table to write")
    opts = parser.parse_args(argv)
    import tempfile

    from scripts.gpu_fsdp_checks import check_fsdp_prepare, check_fsdp_trainer

    device = compute_device()
    out = opts.out or ROOT / "results/bench" / (
        "gpu.md" if device == "cuda" else "gpu_acceptance_cpu.md"
    )
    rows, started = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for check in (
            lambda: check_inference_device(device),
            lambda: check_neft_training(device, big=device == "cuda"),
            lambda: check_fsdp_prepare(work),
            lambda: check_fsdp_trainer(work, device),
            lambda: check_memory_plan(device),
            lambda: check_batch_invariance(device),
            lambda: check_lm_eval(device, work),
        ):
            rows.append(check())
            print(json.dumps(rows[-1]), flush=True)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (no CUDA)"
    lines = [
        f"### GPU acceptance ({name}, torch {torch.__version__}, {time.time() - started:.0f} s)",
        "",
        "Written by `python scripts/gpu_acceptance.py`.",
        "",
        "| check | measured | expected | result |",
        "|---|---|---|---|",
    ]
    verdict = {True: "pass", False: "FAIL", None: "not run here"}
    lines += [
        f"| {r['check']} | {r['measured']} | {r['expected']} | {verdict[r['ok']]} |" for r in rows
    ]
    write_table(out, "\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 1 if any(r["ok"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
