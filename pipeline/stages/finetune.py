"""finetune stage: instruction fine-tuning with or without NEFTune noise (Hugging Face Trainer).

Loss on response tokens only, Alpaca template, EOS appended. Resumes from its last Trainer
checkpoint when rerun after a kill and ends bit-identical to an uninterrupted run: the last step is
always checkpointed (a rerun that finds it only writes the model), and train_loss is the mean over
every step from the checkpointed loss log. Writes model/ (safetensors + tokenizer), loss_log.json,
trained.json (the metrics, once the model is written) and metrics.json.

Run: python -m pipeline.run            (the default trains noise off and uniform alpha 5)
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pipeline.core.data import load_train, pad_batch, records_digest, tokenize_examples
from pipeline.core.models import base_model_dir, load_model_and_tokenizer, validate_model
from pipeline.core.config import config_params
from pipeline.core.data import check_source
from pipeline.core.noise import attach_neftune, noise_label, noise_params
from pipeline.core.store import StageResult, Store, stage_key, write_json_atomic

VERSION = 2  # 2: train_loss over all steps from the loss log, which is logged at every checkpoint
TRAINED = "trained.json"  # written once model/ is complete: a rerun returns it without training


def check(cfg) -> None:
    """Cheap: model, noise, optimiser settings and the training file, before any weights load."""
    validate_model(cfg.model)
    noise_params(cfg.noise)
    check_source(cfg.data.train, "data.train")
    if cfg.finetune.lora is not None:
        _use_4bit(cfg.finetune.lora.quantize_4bit)


def run(cfg, ctx, call) -> StageResult:
    """Plan entry: fine-tune the arm (its noise, its seed)."""
    train_cfg = OmegaConf.merge(cfg.finetune, {"seed": call.arm.seed})
    return finetune(cfg.model, cfg.data, call.arm.noise, train_cfg, ctx.store, ctx.cache,
                    ctx.report_to)


def mean_logged_loss(log_history: list[dict]) -> float:
    """Mean loss over every optimiser step, from the Trainer's per-interval loss log."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last else float("nan")


def _checkpoint_logs_callback():
    from transformers import TrainerCallback

    class LogAtCheckpoints(TrainerCallback):
        """Log the running loss whenever a checkpoint is written and at the last step.

        The checkpointed log then covers every step up to it: the loss of steps after the last log
        is not in a checkpoint, so a resumed run could not count them otherwise.
        """

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save or state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return LogAtCheckpoints()


def last_checkpoint(ckpt_root: Path) -> Path | None:
    """Newest checkpoint whose trainer_state.json was written (a kill mid-save leaves it out)."""
    if not ckpt_root.is_dir():
        return None
    done = [p for p in ckpt_root.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _use_4bit(setting: str) -> bool:
    """QLoRA's 4-bit base needs a GPU and bitsandbytes; `auto` falls back to plain LoRA without."""
    setting = str(setting).lower()
    if setting not in ("true", "false", "auto"):
        raise ValueError(f"finetune.lora.quantize_4bit={setting!r}: use true, false or auto")
    available = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    if setting == "true" and not available:
        raise ValueError(
            "finetune.lora.quantize_4bit=true needs a CUDA GPU and bitsandbytes "
            "(pip install bitsandbytes); use quantize_4bit=auto to run plain LoRA here"
        )
    return setting != "false" and available


def _with_lora(model, lora_cfg, quantized: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _merged(peft_model, base_dir: str, model_cfg, adapter_dir: Path, quantized: bool):
    """The base with the adapter merged in.

    A 4-bit base is reloaded in model.dtype first: merging into 4-bit weights is lossy.
    """
    if not quantized:
        return peft_model.merge_and_unload()
    from peft import PeftModel

    base, _ = load_model_and_tokenizer(base_dir, model_cfg.dtype, model_cfg.revision)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def finetune(
    model_cfg, data_cfg, noise_cfg, train_cfg, store: Store, cache: Store, report_to: list[str]
) -> StageResult:
    """Fine-tune `model_cfg` on `data_cfg.train` with `noise_cfg`; returns the stored stage."""
    validate_model(model_cfg)
    noise = noise_params(noise_cfg)
    records = load_train(
        data_cfg.train, data_cfg.train_limit
    )  # bad rows fail here, before any training
    params = {
        "model": config_params(model_cfg),
        "data": {
            "train": data_cfg.train,
            "train_limit": data_cfg.train_limit,
            "records": records_digest(records),
        },
        "noise": noise,
        "finetune": OmegaConf.to_container(train_cfg, resolve=True),
    }
    key = stage_key(
        "finetune", f"{model_cfg.name}_{data_cfg.name}_{noise_label(noise)}", params, [], VERSION
    )

    def compute(work: Path) -> dict:
        if (work / TRAINED).is_file():  # killed after the model was written: nothing to redo
            shutil.rmtree(work / "checkpoints", ignore_errors=True)
            return json.loads((work / TRAINED).read_text(encoding="utf-8"))
        return _train(model_cfg, records, noise, train_cfg, work, cache, report_to)

    return store.materialize(key, compute, resumable=True, config=params)


def _train(model_cfg, records, noise, cfg, work: Path, cache: Store, report_to: list[str]) -> dict:
    from transformers import Trainer, TrainingArguments

    base_dir = base_model_dir(model_cfg, cache)
    quantized = cfg.lora is not None and _use_4bit(cfg.lora.quantize_4bit)
    model, tok = load_model_and_tokenizer(
        base_dir, model_cfg.dtype, model_cfg.revision, load_in_4bit=quantized
    )
    if cfg.lora is not None:
        model = _with_lora(model, cfg.lora, quantized)
    examples, dropped = tokenize_examples(records, tok, cfg.max_length)
    if not examples:
        raise ValueError(
            f"no training example has response tokens within finetune.max_length={cfg.max_length}"
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    handle = attach_neftune(
        model, noise.get("alpha", 0.0), noise["kind"], noise.get("length", "per_example")
    )

    ckpt_root = work / "checkpoints"
    resume = last_checkpoint(ckpt_root)
    resumed_state = json.loads((resume / "trainer_state.json").read_text()) if resume else {}
    tokens_before = resumed_state.get("num_input_tokens_seen", 0)
    # The Trainer checkpoints the last step (save_strategy="steps"): found, training is over.
    finished = bool(resume) and resumed_state["global_step"] >= resumed_state["max_steps"] > 0
    args = TrainingArguments(
        output_dir=str(ckpt_root),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a fraction of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        bf16=cfg.bf16,
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        train_sampling_strategy=cfg.sampling,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=report_to,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=lambda feats: pad_batch(feats, tok.pad_token_id),
        processing_class=tok,
        callbacks=[_checkpoint_logs_callback()],
    )
    started = time.time()
    if finished:
        # train(resume_from_checkpoint=) would run one optimiser step past max_steps when the
        # epoch has batches left (transformers 5.x); load the final weights and state instead.
        from transformers import TrainerState

        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.time() - started
    handle.remove()

    if cfg.lora is not None:
        model.save_pretrained(work / "adapter")
        model = _merged(model, base_dir, model_cfg, work / "adapter", quantized)
    model.save_pretrained(
        work / "model"
    )  # plain weights: generate and openllm load them like any model
    tok.save_pretrained(work / "model")
    log = [e for e in trainer.state.log_history if "loss" in e]
    write_json_atomic(work / "loss_log.json", log)

    resumed_from = int(resume.name.split("-")[1]) if resume else 0
    tokens_this_run = trainer.state.num_input_tokens_seen - tokens_before
    metrics = {
        # Not the Trainer's training_loss: that averages only the steps of this train() call.
        "train_loss": mean_logged_loss(trainer.state.log_history),
        "train_final_logged_loss": float(log[-1]["loss"]) if log else float("nan"),
        "train_steps": int(trainer.state.global_step),
        "train_epochs": float(trainer.state.epoch or 0.0),
        "train_examples": len(examples),
        "train_tokens_seen": int(trainer.state.num_input_tokens_seen),
        "train_examples_dropped": dropped,
        "train_runtime_s": round(wall, 2),
        "train_tokens_per_s": round(tokens_this_run / max(wall, 1e-9), 2),
        "resumed_from_step": resumed_from,
        "noise_kind": noise["kind"],
        "noise_alpha": float(noise.get("alpha", 0.0)),
        "noise_length": noise.get("length", "none"),
        "lora": cfg.lora is not None,
        "lora_4bit": quantized,
        "trainable_params": trainable,
    }
    write_json_atomic(work / TRAINED, metrics)  # after the model: from here on nothing is retrained
    shutil.rmtree(ckpt_root, ignore_errors=True)  # optimiser state is large; the weights are kept
    return metrics
