"""The checks of scripts/gpu_acceptance.py (all but FSDP: scripts/gpu_fsdp_checks.py).

Each check is `check_<name>(expect, work) -> Row`: `expect` is the device the run is meant for
("cuda" on a GPU node, "cpu" elsewhere), `work` a scratch directory of its own. A check measures
into a plain record, then a `judge_<name>` function turns that record into a row: the judges are
what tests/test_gpu_acceptance.py feeds broken records (and, where a CPU can run it, broken code)
to see FAIL. Where the pipeline places a model itself (finetune, generation, lm-eval) the check
measures where it went: asked for CUDA and trained on the CPU is a FAIL, not a pass.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from scripts.gpu_rows import (
    STACK,
    Row,
    below,
    composed,
    declared_floors,
    eval_prompts,
    finite,
    gb,
    mfu,
    needs_cuda,
    tiny_llama,
    verdict,
)

MIB = 2**20


# -- the stack: torch, transformers, accelerate, peft against pyproject.toml's floors -------------


def check_stack(expect: str, work: Path) -> Row:
    import importlib.metadata

    import torch

    versions = {name: importlib.metadata.version(name) for name in STACK}
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    row = judge_stack(versions, declared_floors(), expect, gpu)
    # What the carried wheels take from the node (datasets 5.2 wants pyarrow >= 24): shown only.
    found = []
    for name in ("pyarrow", "fsspec", "huggingface-hub", "numpy", "datasets", "lm-eval"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    row.measured += f"; beside them: {', '.join(found)}"
    return row


def judge_stack(versions: dict, floors: dict, expect: str, gpu: str | None) -> Row:
    failures = [
        f"{name} {versions[name]} is below the declared floor {floors[name]}"
        for name in STACK
        if name in floors and below(versions[name], floors[name])
    ]
    if expect == "cuda" and gpu is None:
        failures.append("CUDA was asked for and torch sees no GPU")
    measured = ", ".join(f"{n} {v}" for n, v in versions.items()) + f"; GPU: {gpu or 'none'}"
    expected = "at least " + ", ".join(f"{n} {v}" for n, v in floors.items())
    return verdict("stack vs declared floors", expected, measured, failures)


# -- NEFTune on a padded bf16 batch ----------------------------------------------------------------

NEFT_ALPHA = 5.0
NEFT_LENGTHS = (333, 120)  # one row of 333 real tokens, one of 120 padded to 333
NEFT_D = 4096  # LLaMA-2-7B's embedding width


@dataclass
class NeftRecord:
    dtype: str  # of the noisy embeddings
    device: str
    lengths: list  # real tokens per row
    norms: list  # per row, of the noise added
    scales: list  # per row, least-squares fit of noise / eps (the draws, replayed)
    padding_max: float  # largest |noise| on a padded position
    d: int
    alpha: float


def check_neft(expect: str, work: Path) -> Row:
    return judge_neft(measure_neft(expect), expect)


def measure_neft(device: str) -> NeftRecord:
    """The pipeline's hook on a zero-layer bf16 Llama of width 4096 with zero embeddings, so the
    embedding output is exactly the noise; the draws are replayed from the generator state."""
    import torch

    from pipeline.data.loading import pad_batch
    from pipeline.train.noise import attach_neftune
    from pipeline.train.noise_kinds import sampler

    model, _ = tiny_llama(torch.bfloat16, hidden=NEFT_D, layers=0, heads=32, inter=64)
    model.to(device).train()
    emb = model.get_input_embeddings()
    with torch.no_grad():
        emb.weight.zero_()
    features = [{"input_ids": [5] * n, "labels": [5] * n} for n in NEFT_LENGTHS]
    batch = {k: v.to(device) for k, v in pad_batch(features, 0).items() if k != "labels"}
    generator = torch.Generator(device=device).manual_seed(0)
    before = generator.get_state()
    handle = attach_neftune(model, NEFT_ALPHA, "uniform", "per_example", generator=generator)
    seen = {}
    hook = emb.register_forward_hook(lambda m, i, o: seen.update(out=o.detach()))
    with torch.no_grad():
        model(**batch)
    hook.remove()
    handle.remove()
    noise = seen["out"]
    replay = torch.Generator(device=device)
    replay.set_state(before)
    eps = sampler("uniform")(torch.zeros_like(noise), 1.0, replay).float()
    mask = batch["attention_mask"].bool()
    norms, scales = [], []
    for row in range(noise.shape[0]):
        real, e = noise[row][mask[row]].float(), eps[row][mask[row]]
        norms.append(real.norm().item())
        scales.append(((real * e).sum() / (e * e).sum()).item())
    pad = noise[~mask]
    return NeftRecord(
        dtype=str(noise.dtype).removeprefix("torch."),
        device=noise.device.type,
        lengths=mask.sum(dim=1).tolist(),
        norms=norms,
        scales=scales,
        padding_max=pad.abs().max().item() if pad.numel() else 0.0,
        d=noise.shape[-1],
        alpha=NEFT_ALPHA,
    )


def judge_neft(rec: NeftRecord, expect: str) -> Row:
    """Norm per row about alpha/sqrt(3) (1%); the scale of each row alpha/sqrt(L_i d) to 0.05%
    (a length rounded in bf16, 333 -> 334, is 0.15% off; the padded length is 40% off); no
    noise on padding; bf16 on the device asked for."""
    expected_norm = rec.alpha / math.sqrt(3)
    failures = []
    for length, norm, scale in zip(rec.lengths, rec.norms, rec.scales):
        if abs(norm / expected_norm - 1) > 0.01:
            failures.append(f"row of {length} tokens: noise norm {norm:.4f}")
        exact = rec.alpha / math.sqrt(length * rec.d)
        if abs(scale / exact - 1) > 5e-4:
            failures.append(f"row of {length} tokens: scale {scale / exact - 1:+.2%} off")
    if rec.padding_max != 0:
        failures.append(f"padding noised (max |noise| {rec.padding_max:.2e})")
    if rec.dtype != "bfloat16":
        failures.append(f"noise in {rec.dtype}")
    if rec.device != expect:
        failures.append(f"ran on {rec.device}, {expect} asked")
    off = [s / (rec.alpha / math.sqrt(n * rec.d)) - 1 for n, s in zip(rec.lengths, rec.scales)]
    measured = (
        f"rows of {'/'.join(map(str, rec.lengths))} tokens, d={rec.d}: norms "
        f"{', '.join(f'{n:.4f}' for n in rec.norms)}; scale/exact - 1: "
        f"{', '.join(f'{x:+.1e}' for x in off)}"
        f"; max |noise| on padding {rec.padding_max:g}; {rec.dtype} on {rec.device}"
    )
    expected = (
        f"norm {expected_norm:.4f} (alpha {rec.alpha:g}/sqrt 3) +-1%, scale alpha/sqrt(L_i d) "
        "+-0.05%, 0 on padding, bf16"
    )
    return verdict("NEFT on a padded bf16 batch", expected, measured, failures)


# -- the finetune stage on one device, then the memory it leaves ----------------------------------

# The tiny model and its finetune=tiny, at a learning rate that makes its loss fall clearly
# (bf16 weights train less than fp32 at finetune=tiny's 1e-3: -2% in 24 steps).
FINETUNE_CPU = (
    "model=tiny",
    "finetune=tiny",
    "data=default",
    "noise=uniform",
    "finetune.learning_rate=3e-3",
)
# On a GPU a model large enough (~200M parameters, 1.6 GB of bf16 states) that memory it kept
# after the stage would show; one checkpoint, at the end.
FINETUNE_GPU = (
    "model.arch.hidden_size=1024",
    "model.arch.intermediate_size=2816",
    "model.arch.num_layers=16",
    "model.arch.num_heads=16",
    "finetune.save_steps=24",
)
# bf16 weights; on a GPU with the Trainer's bf16 flag too (the paper's recipe), which a CPU without
# bf16 arithmetic refuses (TrainingArguments: "Your setup doesn't support bf16/gpu").
FINETUNE_BF16 = {
    "cpu": ("model.dtype=bfloat16",),
    "cuda": ("model.dtype=bfloat16", "finetune.bf16=true"),
}
RELEASE_SLACK_BYTES = 256 * MIB  # cuBLAS workspaces stay allocated per stream (tens of MiB)


@dataclass
class FinetuneRecord:
    train_device: str  # of the model's parameters when Trainer.train started
    train_dtype: str
    noise_calls: int  # forward passes the NEFT hook noised
    noise_devices: list  # device:dtype of what it noised
    losses: list  # the stage's loss_log.json
    metrics: dict  # the stage's metrics
    peak_allocated: int | None = None  # CUDA bytes during the stage (None on a CPU)
    reserved_before: int | None = None  # CUDA bytes reserved before the stage ...
    reserved_after: int | None = None  # ... and after it returned
    allocated_after: int | None = None
    extra: dict = field(default_factory=dict)


def check_finetune(expect: str, work: Path) -> Row:
    """`pipeline.stages.finetune`'s check and finetune(): what 43 of the 48 paper points run."""
    return judge_finetune(measure_finetune(expect, work), expect)


def measure_finetune(expect: str, work: Path) -> FinetuneRecord:
    """Run the stage on the config for `expect` and record where and how it trained."""
    import torch
    import transformers
    from omegaconf import OmegaConf

    import pipeline.train.noise as noise_module
    from pipeline.stages import finetune as stage
    from pipeline.store.store import Store

    gpu = torch.cuda.is_available()
    cuda = expect == "cuda"
    cfg = composed(*FINETUNE_CPU, *FINETUNE_BF16[expect], *(FINETUNE_GPU if cuda else ()))
    stage.check(cfg)
    seen: dict = {"calls": 0, "where": set()}
    # The hook draws through noise._scaled_noise (every kind's entries at NEFTune's scale),
    # looked up at each call: wrapping it counts what the hook really noised.
    original_train, original_noise = transformers.Trainer.train, noise_module._scaled_noise

    def train(self, *args, **kwargs):
        param = next(self.model.parameters())
        seen.update(device=param.device.type, dtype=str(param.dtype).removeprefix("torch."))
        return original_train(self, *args, **kwargs)

    def scaled_noise(embeds, *args, **kwargs):
        seen["calls"] += 1
        seen["where"].add(f"{embeds.device.type}:{str(embeds.dtype).removeprefix('torch.')}")
        return original_noise(embeds, *args, **kwargs)

    transformers.Trainer.train, noise_module._scaled_noise = train, scaled_noise
    try:
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        reserved_before = torch.cuda.memory_reserved() if gpu else None
        result = stage.finetune(
            cfg.model,
            cfg.data,
            cfg.noise,
            OmegaConf.merge(cfg.finetune, {"seed": 0}),
            Store(work / "store"),
            Store(work / "cache"),
            [],
        )
    finally:
        transformers.Trainer.train, noise_module._scaled_noise = original_train, original_noise
    log = json.loads((result.path / "loss_log.json").read_text(encoding="utf-8"))
    rec = FinetuneRecord(
        train_device=seen.get("device", "?"),
        train_dtype=seen.get("dtype", "?"),
        noise_calls=seen["calls"],
        noise_devices=sorted(seen["where"]),
        losses=[float(e["loss"]) for e in log],
        metrics=result.metrics,
    )
    if gpu:
        rec.peak_allocated = torch.cuda.max_memory_allocated()
        rec.reserved_before, rec.reserved_after = reserved_before, torch.cuda.memory_reserved()
        rec.allocated_after = torch.cuda.memory_allocated()
    return rec


def judge_finetune(rec: FinetuneRecord, expect: str) -> Row:
    """Trained on the device asked for, in bf16, the NEFT hook noising every forward there, the
    loss falling by at least 5% (mean of the first third of the log to the last third), and on
    CUDA the stage's memory handed back before the next stage (reserved within 256 MiB of
    before)."""
    failures = []
    if rec.train_device != expect:
        failures.append(f"trained on {rec.train_device}, {expect} asked")
    if rec.train_dtype != "bfloat16":
        failures.append(f"trained in {rec.train_dtype}")
    if rec.noise_calls == 0 or rec.noise_devices != [f"{expect}:bfloat16"]:
        failures.append(f"NEFT noised {rec.noise_calls} forwards on {rec.noise_devices}")
    if rec.metrics.get("noise_kind") != "uniform":
        failures.append(f"metrics say noise {rec.metrics.get('noise_kind')}")
    losses = rec.losses
    third = max(1, len(losses) // 3)
    head, tail = losses[:third], losses[-third:]
    if len(losses) < 3 or not all(map(finite, losses)) or not sum(tail) < 0.95 * sum(head):
        failures.append(f"loss did not fall by 5% (first to last third of the log): {losses}")
    memory = "memory: n/a on a CPU"
    if expect == "cuda":
        if rec.reserved_after is None:
            failures.append("no CUDA memory measured")
        else:
            kept = rec.reserved_after - rec.reserved_before
            memory = (
                f"peak {gb(rec.peak_allocated):.2f} GB during the stage, "
                f"{kept / MIB:.0f} MiB reserved and {rec.allocated_after / MIB:.0f} MiB "
                "allocated after it"
            )
            if kept > RELEASE_SLACK_BYTES:
                failures.append(f"the stage kept {gb(kept):.2f} GB reserved for the next stage")
            if rec.peak_allocated < 4 * RELEASE_SLACK_BYTES:
                failures.append("the stage used too little memory to show its release")
    first, last = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
    measured = (
        f"trained on {rec.train_device} in {rec.train_dtype}; NEFT on {rec.noise_calls} "
        f"forwards ({', '.join(rec.noise_devices)}); loss {first:.3f} -> {last:.3f}"
        f" over {rec.metrics.get('train_steps')} steps; {memory}"
    )
    expected = f"{expect}, bf16, NEFT on, loss -5% (first to last third); CUDA: memory released"
    return verdict("finetune stage (one device)", expected, measured, failures)


# -- LLaMA-2-7B shape: peak memory against every term of the memory plan ---------------------------

PROBE_STEPS = 3


@dataclass
class MemoryRecord:
    n_params: int
    plan_terms: list  # [(term, GB)] of pipeline.train.memory_plan, for this config
    plan_total: float  # GB
    usable: float | None  # GB the plan may use on this GPU
    weights: float  # GB measured: parameters
    gradients: float  # GB measured: .grad before the optimiser step
    adam_states: float  # GB measured: the optimiser's state tensors
    peak_allocated: float  # GB
    peak_reserved: float  # GB
    step_s: list  # seconds per optimiser step
    tokens_per_step: int
    gpu: str = ""
    mfu: str = ""


# meta-llama/Llama-2-7b-hf's config.json
LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    pad_token_id=0,
)
PROBE_CONFIG = ("model=llama2_7b", "finetune=paper", f"finetune.max_steps={PROBE_STEPS}")
MEMORY_CHECK = "LLaMA-2-7B shape: memory plan, tokens/s, MFU"
MEMORY_EXPECTED = (
    "peak allocated 90-100% of the plan; reserved within the usable memory; "
    "weights/grads/AdamW states within 3% of their terms"
)


def check_memory_7b(expect: str, work: Path) -> Row:
    """A random LLaMA-2-7B (config only, no download) in bf16 on the GPU, trained by the
    Trainer with the pipeline's training arguments for finetune=paper (per-device batch 4,
    accumulation 32, checkpointing) at 512 tokens for 3 steps, NEFT attached."""
    if expect != "cuda":
        return needs_cuda(MEMORY_CHECK, MEMORY_EXPECTED, "a 7B model's memory is a GPU measurement")
    return judge_memory(measure_training_memory(LLAMA2_7B, PROBE_CONFIG, work, "cuda"))


def measure_training_memory(llama: dict, overrides: tuple, work: Path, device: str) -> MemoryRecord:
    """Train a random Llama of config `llama` in bf16 on `device` as the config `overrides`
    says (the pipeline's training arguments; no checkpoint written) for its max_steps; memory
    figures are CUDA's (0 elsewhere: tests run this on a CPU for its plumbing)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback

    from pipeline.config.finetune import finetune_settings
    from pipeline.data.loading import pad_batch
    from pipeline.train.memory_plan import finetune_plan
    from pipeline.train.noise import attach_neftune
    from pipeline.train.trainer_args import training_arguments

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    cfg = composed(*overrides)
    plan, _ = finetune_plan(cfg)
    train = finetune_settings(cfg.finetune)
    args = training_arguments(train, [], work / "checkpoints", 1)
    args.save_strategy = type(args.save_strategy)("no")  # a 7B checkpoint: 40 GB, a minute
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**llama), dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    handle = attach_neftune(model, 5.0, "uniform", "per_example")
    length, steps = int(train.max_length), int(train.max_steps)
    ids = torch.randint(1, llama["vocab_size"], (train.effective_batch_size * steps, length))
    data = [{"input_ids": row.tolist(), "labels": row.tolist()} for row in ids]
    seen: dict = {"step_s": []}

    class Measure(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            seen["t"] = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            seen["gradients"] = sum(g.numel() * g.element_size() for g in grads)

        def on_step_end(self, args, state, control, **kw):
            sync()
            seen["step_s"].append(time.perf_counter() - seen["t"])

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=lambda feats: pad_batch(feats, 0),
        callbacks=[Measure()],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    handle.remove()
    states = [t for s in trainer.optimizer.state.values() for t in s.values()]
    rec = MemoryRecord(
        n_params=n_params,
        plan_terms=[list(term) for term in plan.terms],
        plan_total=plan.per_gpu_gb,
        usable=plan.usable_gb,
        weights=gb(sum(p.numel() * p.element_size() for p in model.parameters())),
        gradients=gb(seen.get("gradients", 0)),
        adam_states=gb(
            sum(t.numel() * t.element_size() for t in states if torch.is_tensor(t) and t.dim())
        ),
        peak_allocated=gb(torch.cuda.max_memory_allocated()) if cuda else 0.0,
        peak_reserved=gb(torch.cuda.max_memory_reserved()) if cuda else 0.0,
        step_s=seen["step_s"],
        tokens_per_step=train.effective_batch_size * length,
        gpu=torch.cuda.get_device_name() if cuda else device,
    )
    if cuda and len(rec.step_s) >= 3:
        rec.mfu = mfu(n_params, 2 * rec.tokens_per_step / sum(rec.step_s[1:3]))
    return rec


def judge_memory(rec: MemoryRecord) -> Row:
    """The plan is every term: the peak may not exceed it (a term left out shows here: the
    AdamW temporary is 13.5 GB of 7B) nor fall below 90% of it (a term counted twice)."""
    terms = dict(rec.plan_terms)
    failures = []
    ratio = rec.peak_allocated / rec.plan_total
    if not 0.9 <= ratio <= 1.0:
        failures.append(f"peak allocated is {ratio:.1%} of the plan")
    if rec.usable is not None and rec.peak_reserved > rec.usable:
        failures.append(f"reserved {rec.peak_reserved:.1f} GB > usable {rec.usable:.1f} GB")
    for term, measured in (
        ("weights", rec.weights),
        ("gradients", rec.gradients),
        ("AdamW states", rec.adam_states),
    ):
        planned = terms.get(term, 0.0)
        if not planned or abs(measured / planned - 1) > 0.03:
            failures.append(f"{term}: measured {measured:.2f} GB, planned {planned:.2f} GB")
    if len(rec.step_s) < 3:
        failures.append(f"{len(rec.step_s)} steps timed, 3 expected")
    speed = ""
    if len(rec.step_s) >= 3:
        tokens_per_s = 2 * rec.tokens_per_step / sum(rec.step_s[1:3])
        speed = f"; steps 2-3: {tokens_per_s:,.0f} tokens/s, MFU {rec.mfu}"
    measured = (
        f"{rec.gpu}, {rec.n_params / 1e9:.2f}B params: peak allocated {rec.peak_allocated:.1f} "
        f"GB, reserved {rec.peak_reserved:.1f} GB; measured weights {rec.weights:.1f}, grads "
        f"{rec.gradients:.1f}, AdamW states {rec.adam_states:.1f}; plan "
        + ", ".join(f"{t} {v:.1f}" for t, v in rec.plan_terms)
        + f" = {rec.plan_total:.1f} of {rec.usable or float('nan'):.1f} GB usable"
        + f"; step s {', '.join(f'{s:.1f}' for s in rec.step_s)}{speed}"
    )
    return verdict(MEMORY_CHECK, MEMORY_EXPECTED, measured, failures)


# -- generation: batched == alone in fp32, the bf16 differences counted ---------------------------

GEN_PROMPTS, GEN_TOKENS = 8, 24


@dataclass
class GenerationRecord:
    device: str  # where the pipeline's loader put the model
    alone: list  # fp32 answers, one prompt per call
    batched: list  # fp32 answers, all prompts in one batch
    bf16_differ: int | None = None  # bf16 answers that differ alone vs batched
    bf16_device: str = ""


def check_generation(expect: str, work: Path) -> Row:
    return judge_generation(measure_generation(work), expect)


def measure_generation(work: Path) -> GenerationRecord:
    """A saved random model (init std 0.2: its greedy choices are not near ties) loaded by the
    pipeline's loader for generation, answers of the pipeline's batched generation (left
    padding, repetition penalty 1.2 over real tokens)."""
    import torch

    from pipeline.generation.batched import generate_batched
    from pipeline.models.devices import compute_device
    from pipeline.models.loading import load_model_and_tokenizer

    model, tok = tiny_llama(torch.float32, init_std=0.2)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    texts = eval_prompts(GEN_PROMPTS)

    def answers(dtype: str):
        loaded, tok = load_model_and_tokenizer(str(work / "model"), dtype, device=compute_device())
        alone = [generate_batched(loaded, tok, [t], 1, GEN_TOKENS, 1024, 1.2)[0][0] for t in texts]
        batched = generate_batched(loaded, tok, texts, len(texts), GEN_TOKENS, 1024, 1.2)[0]
        return loaded.device.type, alone, batched

    device, alone, batched = answers("float32")
    rec = GenerationRecord(device, alone, batched)
    rec.bf16_device, bf16_alone, bf16_batched = answers("bfloat16")
    rec.bf16_differ = sum(a != b for a, b in zip(bf16_alone, bf16_batched))
    return rec


def judge_generation(rec: GenerationRecord, expect: str) -> Row:
    failures = []
    if rec.device != expect:
        failures.append(f"generated on {rec.device}, {expect} asked")
    differ = sum(a != b for a, b in zip(rec.alone, rec.batched))
    if differ or len(rec.alone) != len(rec.batched):
        failures.append(f"{differ} of {len(rec.alone)} fp32 answers differ alone vs batched")
    empty = sum(not a.strip() for a in rec.alone + rec.batched)
    if empty or not rec.alone:
        failures.append(f"{empty} empty answers")
    measured = (
        f"on {rec.device}: fp32 {differ} of {len(rec.alone)} differ, {empty} empty; bf16 "
        f"{rec.bf16_differ} of {len(rec.alone)} differ alone vs batched (counted, not judged)"
    )
    expected = f"{expect}; fp32: 0 differ, none empty"
    return verdict(
        f"generation, {GEN_PROMPTS} prompts alone vs one batch", expected, measured, failures
    )


# -- lm-eval: a score of a shipped task, on the device asked for ----------------------------------


@dataclass
class LmEvalRecord:
    device: str  # of lm-eval's model
    scores: dict  # metrics.json of the openllm stage: openllm_<task> -> number
    n: int | None = None  # questions scored


def check_lm_eval(expect: str, work: Path) -> Row:
    return judge_lm_eval(measure_lm_eval(work), expect)


def measure_lm_eval(work: Path) -> LmEvalRecord:
    """The openllm stage (lm-eval's HFLM and simple_evaluate) on one shipped task, ARC-challenge
    on the local files, over a saved random model."""
    import lm_eval.models.huggingface as hf_models
    import torch

    from pipeline.stages.openllm import openllm
    from pipeline.store.store import StageResult, Store

    model, tok = tiny_llama(torch.float32)
    model.save_pretrained(work / "ft" / "model")
    tok.save_pretrained(work / "ft" / "model")
    cfg = composed(
        "openllm=local_cpu",
        "openllm.limit=8",
        "~openllm.tasks.hellaswag",
        "~openllm.tasks.mmlu",
        "~openllm.tasks.truthfulqa",
    )
    seen = {}
    original = hf_models.HFLM.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["device"] = next(self.model.parameters()).device.type

    hf_models.HFLM.__init__ = init
    try:
        finetuned = StageResult("finetune-tiny-000000000000", work / "ft", {}, False)
        result = openllm(finetuned, cfg.openllm, "float32", Store(work / "store"))
    finally:
        hf_models.HFLM.__init__ = original
    per_question = json.loads((result.path / "per_question.json").read_text(encoding="utf-8"))
    return LmEvalRecord(
        device=seen.get("device", "?"),
        scores={k: v for k, v in result.metrics.items() if k.startswith("openllm_")},
        n=len(per_question.get("arc", [])),
    )


def judge_lm_eval(rec: LmEvalRecord, expect: str) -> Row:
    failures = []
    if rec.device != expect:
        failures.append(f"lm-eval's model on {rec.device}, {expect} asked")
    score = rec.scores.get("openllm_arc")
    if not (finite(score) and 0 <= score <= 1):
        failures.append(f"no ARC score: {rec.scores}")
    if not rec.n:
        failures.append("no question scored")
    measured = (
        f"on {rec.device}: ARC-challenge (local, 3-shot) acc_norm {score} over {rec.n} questions"
    )
    return verdict(
        "lm-eval scores a shipped task", f"{expect}; a score in [0, 1]", measured, failures
    )
