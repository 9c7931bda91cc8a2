"""finetune stage: instruction fine-tuning with or without NEFTune noise (Hugging Face Trainer).

Loss on response tokens only, Alpaca template, EOS appended. The training itself is
pipeline.train.training: in this process when one process trains (the default), else in torchrun
workers that pipeline.train.launch starts (finetune.distributed: DDP or FSDP, one node or several
under SLURM). This module owns the stage: its key, the memory plan checked before anything loads,
and the store (lock, .partial, COMPLETE), which workers never touch. Resumes from its last
checkpoint when rerun after a kill, bit-identical to an uninterrupted run. Writes model/
(consolidated safetensors + tokenizer), loss_log.json, trained.json and metrics.json (+ launch/:
the request, the worker log and each rank's record, when it ran on several processes).

Run: python -m pipeline.run            (the default trains noise off and uniform alpha 5)
     python -m pipeline.run finetune.distributed.nproc_per_node=2 finetune.distributed.strategy=ddp
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pipeline.config.choices import plain
from pipeline.config.finetune import finetune_settings
from pipeline.config.schema import config_params
from pipeline.data.loading import check_source, load_train, records_digest
from pipeline.models.devices import loss_logits, release_accelerator_memory, weights_dtype
from pipeline.models.loading import base_model_dir, validate_model
from pipeline.stages.contract import Call, Context
from pipeline.store.key_rules import finetune_params
from pipeline.store.store import StageResult, Store, stage_key
from pipeline.train.launch import (
    accumulation_steps,
    check_allocation,
    distributed_key_params,
    run_workers,
    world_size,
)
from pipeline.train.memory_plan import check_finetune_memory
from pipeline.train.noise import noise_label, noise_params
from pipeline.train.trainer_args import check_training
from pipeline.train.training import TRAINED, TrainRequest, train

VERSION = 2  # 2: train_loss over all steps from the loss log, which is logged at every checkpoint


def check(cfg) -> None:
    """Cheap: model, noise, batch arithmetic, launch and memory plan, and the training file."""
    validate_model(cfg.model)
    noise_params(cfg.noise)
    check_source(cfg.data.train, "data.train")
    # The finetune keys one by one before anything computed from them (the accumulation, the
    # memory plan): a bad one is named, not found as a ZeroDivisionError further on.
    check_training(cfg.finetune)
    dist = cfg.finetune.distributed
    accumulation_steps(cfg.finetune, world_size(dist))
    check_allocation(dist)  # no more processes per node than GPUs, nodes than the job has
    if dist.strategy == "fsdp" and not torch.cuda.is_available():
        raise ValueError(
            "finetune.distributed.strategy=fsdp needs CUDA GPUs (the Trainer shards "
            "with FSDP on GPUs only); on CPUs use strategy=ddp"
        )
    if cfg.finetune.lora is not None:
        if dist.strategy == "fsdp":
            raise ValueError(
                "finetune.lora adapters train with finetune.distributed.strategy "
                "none or ddp (their base is frozen: there is little to shard)"
            )
    check_finetune_memory(cfg)


def run(cfg, ctx: Context, call: Call) -> StageResult:
    """Plan entry: fine-tune the arm (its noise, its seed)."""
    train_cfg = OmegaConf.merge(cfg.finetune, {"seed": call.arm.seed})
    return finetune(
        cfg.model, cfg.data, call.arm.noise, train_cfg, ctx.store, ctx.cache, ctx.report_to
    )


def _keyed(model_cfg, data_cfg, noise: dict, train_cfg, records: list[dict]):
    """(readable name, hashed params) of one fine-tune."""
    world = world_size(train_cfg.distributed)
    model_dtype = str(model_cfg.dtype)
    resolved = plain(train_cfg) | {
        "weights_dtype": weights_dtype(train_cfg, model_dtype),
        "loss_logits": loss_logits(train_cfg, model_dtype),
    }
    params = {
        "model": config_params(model_cfg),
        "data": {
            "train": data_cfg.train,
            "train_limit": data_cfg.train_limit,
            "records": records_digest(records),
        },
        "noise": noise,
        "finetune": finetune_params(
            resolved,
            accumulation_steps(train_cfg, world),
            distributed_key_params(train_cfg.distributed, world),
            model_dtype,
        ),
    }
    return f"{model_cfg.name}_{data_cfg.name}_{noise_label(noise)}", params


def key_of(cfg, arm) -> str:
    """The finetune key of `arm` (an ArmSpec) under `cfg`, without training anything."""
    train_cfg = OmegaConf.merge(cfg.finetune, {"seed": arm.seed})
    records = load_train(cfg.data.train, cfg.data.train_limit)
    readable, params = _keyed(cfg.model, cfg.data, noise_params(arm.noise), train_cfg, records)
    return stage_key("finetune", readable, params, [], VERSION)


def _local(location: str) -> str:
    """A local path made absolute (workers may start elsewhere); a hub id unchanged."""
    path = Path(location)
    return str(path.resolve()) if path.exists() else location


def finetune(
    model_cfg, data_cfg, noise_cfg, train_cfg, store: Store, cache: Store, report_to: list[str]
) -> StageResult:
    """Fine-tune `model_cfg` on `data_cfg.train` with `noise_cfg`; returns the stored stage."""
    validate_model(model_cfg)
    noise = noise_params(noise_cfg)
    records = load_train(data_cfg.train, data_cfg.train_limit)  # bad rows fail before training
    readable, params = _keyed(model_cfg, data_cfg, noise, train_cfg, records)
    key = stage_key("finetune", readable, params, [], VERSION)
    world = world_size(train_cfg.distributed)

    def compute(work: Path) -> dict:
        if (work / TRAINED).is_file():  # killed after the model was written: nothing to redo
            shutil.rmtree(work / "checkpoints", ignore_errors=True)
            return json.loads((work / TRAINED).read_text(encoding="utf-8"))
        request = TrainRequest(
            work=str(work.resolve()),
            base_dir=_local(base_model_dir(model_cfg, cache)),
            dtype=model_cfg.dtype,
            revision=model_cfg.revision,
            noise=noise,
            train=finetune_settings(train_cfg),
            # Workers log to no W&B run of their own; the stage's run gets the metrics.
            report_to=list(report_to) if world == 1 else [],
            world_size=world,
        )
        if world == 1:
            metrics = train(request, records)
            release_accelerator_memory()  # vLLM, started next in its own process, needs it
            return metrics
        launch = work / "launch"
        launch.mkdir(exist_ok=True)
        request.save(launch / "request.json")
        (launch / "records.json").write_text(
            json.dumps(records, ensure_ascii=False), encoding="utf-8"
        )
        run_workers(train_cfg.distributed, launch / "request.json", launch / "worker.log")
        return json.loads((work / TRAINED).read_text(encoding="utf-8"))

    return store.materialize(key, compute, resumable=True, config=params)
