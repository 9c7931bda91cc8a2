"""The finetune stage's training run: in the pipeline process, or as one rank of a torchrun launch.

`train(request, records)` is the whole run (Hugging Face Trainer, loss on response tokens only).
One process (world size 1, strategy none) calls it in the pipeline process, as before; otherwise
pipeline.train.launch starts `torchrun ... -m pipeline.train.training <request.json>` and every
rank runs it. It writes only inside the stage's work directory: each rank its checkpoint files,
rank 0 the consolidated model, loss_log.json and trained.json. The stage store (lock, .partial,
COMPLETE) stays with the pipeline process. A kill at any point resumes bit-identically: the last
step is always checkpointed, NEFTune noise generators are checkpointed per rank, and train_loss
is the mean over every step from the checkpointed loss log.

Run (by pipeline.train.launch): torchrun --nproc-per-node=2 -m pipeline.train.training REQUEST
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.train.ranks import (
    WORLD_FILE, check_world_size, exit_with_parent, last_checkpoint, noise_rng_file, rank_info,
    save_consolidated, write_rank_record,
)
from pipeline.store.store import write_json_atomic
from pipeline.train.trainer_args import (
    prepare_rank0_loading, single_device, training_arguments, use_4bit, uses_fsdp,
)

TRAINED = "trained.json"  # written once model/ is complete: a rerun returns it without training


@dataclass
class TrainRequest:
    """Everything one training run needs, as plain data (it crosses into worker processes)."""

    work: str  # the stage's work directory (<key>.partial)
    base_dir: str  # from_pretrained-able base model (a hub id or a directory)
    dtype: str  # model.dtype
    revision: str | None  # model.revision
    noise: dict  # noise_params(): kind, alpha, length
    train: dict  # finetune config, resolved; gradient_accumulation_steps derived from the world
    report_to: list  # the Trainer's loggers (workers of a launch log to none)
    world_size: int = 1  # processes in all (nproc_per_node x nnodes)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "TrainRequest":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def mean_logged_loss(log_history: list[dict]) -> float:
    """Mean loss over every optimiser step, from the Trainer's per-interval loss log."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last else float("nan")


def _callbacks(rank: int, generator: torch.Generator | None):
    from transformers import TrainerCallback

    class LogAtCheckpoints(TrainerCallback):
        """Log the running loss whenever a checkpoint is written and at the last step, and keep
        this rank's noise generator state in each checkpoint.

        The checkpointed log then covers every step up to it (the loss of steps after the last
        log is in no checkpoint, so a resumed run could not count them otherwise).
        """

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save or state.global_step >= state.max_steps:
                control.should_log = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if generator is not None:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                tmp = ckpt / (noise_rng_file(rank) + ".tmp")
                torch.save(generator.get_state(), tmp)
                os.replace(tmp, ckpt / noise_rng_file(rank))
            return control

    return [LogAtCheckpoints()]


def _with_lora(model, lora_cfg, quantized: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(r=lora_cfg["r"], lora_alpha=lora_cfg["alpha"],
                        lora_dropout=lora_cfg["dropout"],
                        target_modules=list(lora_cfg["target_modules"]), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _merged(peft_model, adapter_dir: Path, quantized: bool):
    """The base with the adapter merged in.

    A 4-bit base is dequantized where it is (on the GPU) and the adapter merged into that: the
    weights it was trained against (NF4 values, now in the compute dtype), not the original
    bf16 base reloaded on the host (30B: ~65 GB), and not re-quantized (lossy).
    """
    if not quantized:
        return peft_model.merge_and_unload()
    from peft import PeftModel

    base = peft_model.unload()  # the 4-bit base, adapters removed
    base = base.dequantize()  # transformers: bnb Linear4bit -> nn.Linear in the compute dtype
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def train(req: TrainRequest, records: list[dict]) -> dict | None:
    """Train as configured; returns the metrics on rank 0 (None on other ranks)."""
    from transformers import Trainer, TrainerState

    from pipeline.data.loading import pad_batch, tokenize_examples
    from pipeline.models.loading import load_model_and_tokenizer
    from pipeline.train.noise import attach_neftune, rank_generator

    cfg, work = req.train, Path(req.work)
    rank, local_rank, world = rank_info()
    ckpt_root = work / "checkpoints"
    check_world_size(ckpt_root, world)
    args = training_arguments(cfg, req.report_to, ckpt_root, world)
    if world == 1:
        single_device(args)
    prepare_rank0_loading(args, cfg)  # before from_pretrained, which reads it
    quantized = cfg["lora"] is not None and use_4bit(cfg["lora"]["quantize_4bit"])
    # Loaded in model.dtype; under FSDP with fp32 masters accelerate upcasts what trains.
    model, tok = load_model_and_tokenizer(req.base_dir, req.dtype, req.revision,
                                          load_in_4bit=quantized)
    if cfg["lora"] is not None:
        model = _with_lora(model, cfg["lora"], quantized)
    examples, dropped = tokenize_examples(records, tok, cfg["max_length"])
    if not examples:
        raise ValueError(f"no training example has response tokens within "
                         f"finetune.max_length={cfg['max_length']}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # One process draws from the global RNG (which the Trainer checkpoints), as before; ranks
    # draw from their own (seed, rank) generator so that their noise is independent.
    generator = rank_generator(cfg["seed"], rank, args.device) if world > 1 else None
    noise = req.noise
    handle = attach_neftune(model, noise.get("alpha", 0.0), noise["kind"],
                            noise.get("length", "per_example"), generator=generator)
    has_noise = generator is not None and noise["kind"] != "none"
    resume = last_checkpoint(ckpt_root, world, noise_rng=has_noise)
    if resume is not None and has_noise:
        generator.set_state(torch.load(resume / noise_rng_file(rank)))
    resumed = TrainerState.load_from_json(str(resume / "trainer_state.json")) if resume else None
    tokens_before = resumed.num_input_tokens_seen if resumed else 0
    # The last step is always checkpointed: found, training is over.
    finished = resumed is not None and resumed.global_step >= resumed.max_steps > 0
    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=lambda feats: pad_batch(feats, tok.pad_token_id),
                      processing_class=tok, callbacks=_callbacks(rank, generator))
    if uses_fsdp(cfg) and not trainer.is_fsdp_enabled:
        # accelerate falls back to plain DDP without CUDA: never train unsharded by surprise.
        raise RuntimeError("finetune.distributed.strategy=fsdp, but the Trainer did not enable "
                           "FSDP (it does on CUDA GPUs only); use strategy=ddp here")
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(ckpt_root / WORLD_FILE, {"world_size": world})
    started = time.time()
    if finished:
        # train(resume_from_checkpoint=) would run one optimiser step past max_steps when the
        # epoch has batches left (transformers 5.x); load the final weights and state instead.
        trainer._load_from_checkpoint(str(resume))
        trainer.state = resumed
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    wall = time.time() - started
    handle.remove()
    if generator is not None:
        write_rank_record(work, rank, world, generator)

    model = trainer.model
    if cfg["lora"] is not None:
        if rank == 0:
            model.save_pretrained(work / "adapter")
        model = _merged(model, work / "adapter", quantized)
    # Plain weights in model.dtype (fp32 masters are cast back): generate, openllm and overfit
    # load them like any model.
    save_consolidated(model, work / "model", rank == 0, req.dtype)
    if rank != 0:
        return None
    tok.save_pretrained(work / "model")
    log = [e for e in trainer.state.log_history if "loss" in e]
    write_json_atomic(work / "loss_log.json", log)
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
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else 0,
        "noise_kind": noise["kind"],
        "noise_alpha": float(noise.get("alpha", 0.0)),
        "noise_length": noise.get("length", "none"),
        "lora": cfg["lora"] is not None,
        "lora_4bit": quantized,
        "trainable_params": trainable,
    }
    if world > 1:
        metrics.update(world_size=world, strategy=cfg["distributed"]["strategy"])
    write_json_atomic(work / TRAINED, metrics)  # after the model: from here on nothing is retrained
    shutil.rmtree(ckpt_root, ignore_errors=True)  # optimiser state is large; the weights are kept
    return metrics


def main(argv: list[str]) -> int:
    """Worker entry: train the request at argv[0] (records in records.json beside it)."""
    exit_with_parent()
    request_path = Path(argv[0])
    req = TrainRequest.load(request_path)
    records = json.loads((request_path.parent / "records.json").read_text(encoding="utf-8"))
    rank, _, world = rank_info()
    print(f"[rank {rank}/{world}] pid {os.getpid()} on {os.uname().nodename}", flush=True)
    train(req, records)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # rank 0 has written everything before any rank reports success
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
