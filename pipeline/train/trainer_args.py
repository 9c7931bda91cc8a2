"""The Trainer's arguments for one training run, and what must be true of the process first.

Each rule here is something the Trainer or accelerate would otherwise do silently:
- one process on a node with several GPUs would be wrapped in nn.DataParallel and train
  GPU-count times the configured batch (single_device);
- FSDP with `bf16=True` makes accelerate upcast every trainable parameter to fp32 master
  weights (accelerate/utils/fsdp_utils.py, "Upcast to fp32 master weights"), so
  `fsdp.fp32_master_weights: false` (pure bf16, 8 B/param) must train without mixed precision;
- FSDP checkpoints default to a full state dict gathered on rank 0 (70B: ~1.1 TB per
  checkpoint); each rank writes its shard instead (SHARDED_STATE_DICT);
- rank-0 loading works only if ACCELERATE_USE_FSDP is set and the process group is up before
  from_pretrained (transformers/distributed/fsdp.py, is_fsdp_enabled), not when the Trainer
  builds its Accelerator later (prepare_rank0_loading);
- activation checkpointing under FSDP belongs in fsdp_config (the training argument adds a
  redundant all-gather in backward);
- the training argument that switches activation checkpointing on is `gradient_checkpointing`
  up to transformers 5.18 (the GPU image has 5.17) and `activation_checkpointing` after it,
  which keeps the old name as a deprecated alias that warns (checkpointing_argument).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import torch

from pipeline.config.finetune import FinetuneConfig
from pipeline.data.loading import SHORTEST_TRAIN_EXAMPLE
from pipeline.logs import get_logger

LOG = get_logger("finetune")

FSDP_SHARDING = ("full_shard", "shard_grad_op")  # what FSDP2 offers (hybrid_shard is FSDP1 only)
BNB_OPTIMS = ("paged_", "bnb", "8bit")  # optimiser names that need bitsandbytes
BNB_HINT = "pip install bitsandbytes (or the project's extra: pip install -e '.[gpu]')"


def has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def check_training(train_cfg) -> None:
    """Fail before anything loads on settings the Trainer would reject late, or in its terms,
    or would train as something other than they say."""
    if str(train_cfg.weights_dtype) == "float16":
        raise ValueError(
            "finetune.weights_dtype=float16: fp16 weights need a loss scaler the pipeline does "
            "not run; use auto, float32 or bfloat16"
        )
    for key in ("logging_steps", "save_steps", "per_device_batch_size", "effective_batch_size"):
        if int(train_cfg[key]) < 1:
            raise ValueError(f"finetune.{key}={train_cfg[key]}: must be >= 1")
    # transformers trains max_steps=0 as one step (only < 0 means "use epochs"); any other
    # negative would train the epochs under a stage key of its own.
    if train_cfg.max_steps != -1 and train_cfg.max_steps < 1:
        raise ValueError(
            f"finetune.max_steps={train_cfg.max_steps}: use -1 to train finetune.epochs, "
            "or >= 1 optimiser steps"
        )
    if train_cfg.max_steps == -1 and not train_cfg.epochs > 0:
        raise ValueError(f"finetune.epochs={train_cfg.epochs}: must be > 0 (or set max_steps)")
    # Below this no example keeps a response token and its EOS; -1 used to train with no cap
    # and every EOS cut off (full_ids[:-1]).
    if train_cfg.max_length < SHORTEST_TRAIN_EXAMPLE:
        raise ValueError(
            f"finetune.max_length={train_cfg.max_length}: tokens per example (prompt + response "
            f"+ EOS) must be >= {SHORTEST_TRAIN_EXAMPLE}, the shortest Alpaca example with a "
            "response token and its EOS; the paper uses 512"
        )
    lr = float(train_cfg.learning_rate)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(
            f"finetune.learning_rate={train_cfg.learning_rate}: the peak learning rate, a finite "
            "number > 0 (the paper's 5e-5)"
        )
    for key in ("warmup_ratio", "weight_decay", "max_grad_norm"):
        value = float(train_cfg[key])
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"finetune.{key}={train_cfg[key]}: must be a finite number >= 0")
    if any(tag in train_cfg.optim for tag in BNB_OPTIMS) and not has_bitsandbytes():
        raise ValueError(
            f"finetune.optim={train_cfg.optim} is a bitsandbytes optimiser and "
            f"bitsandbytes is not installed: {BNB_HINT}; or use optim=adamw_torch"
        )
    if train_cfg.lora is not None:
        use_4bit(train_cfg.lora.quantize_4bit)
    dist = train_cfg.distributed
    if dist.strategy == "fsdp" and dist.fsdp.sharding not in FSDP_SHARDING:
        raise ValueError(
            f"finetune.distributed.fsdp.sharding={dist.fsdp.sharding!r}: FSDP2 (the "
            f"Trainer's default) offers {FSDP_SHARDING}; hybrid sharding is FSDP1 "
            "only, which transformers has deprecated"
        )


def use_4bit(quantize: bool) -> bool:
    """QLoRA's NF4 base: asked for and possible, or an error that says why (never a silent
    fall back to plain LoRA on a bf16 base: that is another experiment)."""
    if not isinstance(quantize, bool):
        raise ValueError(
            f"finetune.lora.quantize_4bit={quantize!r}: use true (QLoRA, NF4 base) "
            "or false (plain LoRA)"
        )
    if quantize and not (torch.cuda.is_available() and has_bitsandbytes()):
        raise ValueError(
            "finetune.lora.quantize_4bit=true (QLoRA) needs a CUDA GPU and "
            f"bitsandbytes: {BNB_HINT}; or use plain LoRA (finetune=lora_cpu)"
        )
    return quantize


def is_launched() -> bool:
    """Is this process a rank of a torchrun launch (even of world size 1)?"""
    return "LOCAL_RANK" in os.environ


def uses_fsdp(train_cfg: FinetuneConfig) -> bool:
    return train_cfg.distributed.strategy == "fsdp" and is_launched()


def mixed_precision_bf16(train_cfg: FinetuneConfig) -> bool:
    """The Trainer's `bf16` flag. Under FSDP it is exactly fp32_master_weights: mixed precision
    makes accelerate keep fp32 masters; without it the bf16 weights train as they are."""
    if uses_fsdp(train_cfg):
        return bool(train_cfg.distributed.fsdp.fp32_master_weights)
    return bool(train_cfg.bf16)


def fsdp_config(train_cfg: FinetuneConfig) -> dict:
    """fsdp_config of TrainingArguments (FSDP2): sharding, offload, rank-0 loading, sharded
    checkpoints, FSDP's own activation checkpointing."""
    fsdp = train_cfg.distributed.fsdp
    return {
        "version": 2,
        "reshard_after_forward": fsdp.sharding == "full_shard",
        "cpu_offload": fsdp.cpu_offload,
        "cpu_ram_efficient_loading": fsdp.rank0_load,
        "state_dict_type": "SHARDED_STATE_DICT",
        "activation_checkpointing": train_cfg.gradient_checkpointing,
    }


def checkpointing_argument(training_arguments_class) -> str:
    """The name under which this transformers' TrainingArguments takes activation checkpointing
    (both call the model's checkpointing_enable in trainer.py: only the name moved)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_arguments_class)}
    new = "activation_checkpointing"
    return new if new in names else "gradient_checkpointing"


def training_arguments(ft: FinetuneConfig, report_to: list, ckpt_root: Path, world: int):
    """The one mapping from the finetune config to the Trainer's arguments (as the
    alignment-handbook's recipes go straight into SFTConfig): every finetune.* key that reaches
    TrainingArguments is read here, by attribute, from the typed FinetuneConfig
    (config.finetune.finetune_settings), and what is derived (the accumulation from the effective
    batch and the world size, the precision under FSDP) is derived here."""
    from transformers import TrainingArguments

    from pipeline.train.launch import accumulation_steps

    extra = {}
    if not torch.cuda.is_available():
        # On a CPU the Trainer's bf16 is autocast only with use_cpu (else "Your setup doesn't
        # support bf16/gpu"); CPU ranks talk over gloo.
        extra.update(use_cpu=True)
        if world > 1 or is_launched():
            extra.update(ddp_backend="gloo")
    fsdp = uses_fsdp(ft)
    if fsdp:
        extra.update(fsdp=True, fsdp_config=fsdp_config(ft))
    # Under FSDP, fsdp_config's own activation checkpointing does it (see the module doc).
    extra[checkpointing_argument(TrainingArguments)] = ft.gradient_checkpointing and not fsdp
    return TrainingArguments(
        output_dir=str(ckpt_root),
        num_train_epochs=ft.epochs,
        max_steps=ft.max_steps,
        per_device_train_batch_size=ft.per_device_batch_size,
        gradient_accumulation_steps=accumulation_steps(ft, world),
        learning_rate=ft.learning_rate,
        lr_scheduler_type=ft.lr_scheduler,
        warmup_steps=ft.warmup_ratio,  # a float < 1 is a fraction of the total steps
        weight_decay=ft.weight_decay,
        max_grad_norm=ft.max_grad_norm,
        optim=ft.optim,
        bf16=mixed_precision_bf16(ft),
        logging_steps=ft.logging_steps,
        save_strategy="steps",
        save_steps=ft.save_steps,
        save_total_limit=2,
        train_sampling_strategy=str(ft.sampling),
        seed=ft.seed,
        data_seed=ft.seed,
        report_to=report_to,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        # Pinned host memory speeds copies to a GPU only; without one torch warns on every
        # DataLoader (a warning per finetune on the console).
        dataloader_pin_memory=torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
        ddp_timeout=int(ft.distributed.timeout_s),
        **extra,
    )


def single_device(args) -> None:
    """One process trains on one device: with several GPUs visible the Trainer would wrap the
    model in nn.DataParallel and multiply the per-step batch by the GPU count, which the
    accumulation (computed for one device) does not expect."""
    _ = args.device  # sets args._n_gpu, which the Trainer reads
    if args.n_gpu > 1:
        LOG.warning(
            "one process, %d GPUs visible: training on one (no DataParallel); use "
            "finetune.distributed.nproc_per_node=auto strategy=ddp|fsdp for all of them",
            args.n_gpu,
        )
        args._n_gpu = 1


def prepare_rank0_loading(args, train_cfg: FinetuneConfig) -> None:
    """Before from_pretrained: with FSDP rank-0 loading, tell transformers (env) and bring up
    the process group (args.device does), so ranks other than 0 load on the meta device."""
    if not (uses_fsdp(train_cfg) and train_cfg.distributed.fsdp.rank0_load):
        return
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "true"
    _ = args.device
