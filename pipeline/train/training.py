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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config.finetune import FinetuneConfig, finetune_settings
from pipeline.logs import configure_logging, get_logger
from pipeline.models.devices import loss_logits, weights_dtype
from pipeline.store.keys import readable_of
from pipeline.store.store import write_json_atomic
from pipeline.train.lora import merged, with_lora
from pipeline.train.ranks import (
    WORLD_FILE,
    check_world_size,
    exit_with_parent,
    last_checkpoint,
    load_sharded_model,
    noise_rng_file,
    rank_info,
    save_consolidated,
    write_rank_record,
)
from pipeline.train.response_logits import ResponseLogits
from pipeline.train.trainer_args import (
    prepare_rank0_loading,
    single_device,
    training_arguments,
    use_4bit,
    uses_fsdp,
)

LOG = get_logger("finetune")

TRAINED = "trained.json"  # written once model/ is complete: a rerun returns it without training


@dataclass
class TrainRequest:
    """Everything one training run needs, as plain data (it crosses into worker processes)."""

    work: str  # the stage's work directory (<key>.partial)
    base_dir: str  # from_pretrained-able base model (a hub id or a directory)
    dtype: str  # model.dtype
    revision: str | None  # model.revision
    noise: dict  # noise_params(): kind, alpha, length
    train: FinetuneConfig  # the arm's finetune config (its seed), typed
    report_to: list  # the Trainer's loggers (workers of a launch log to none)
    world_size: int = 1  # processes in all (nproc_per_node x nnodes)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> TrainRequest:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{**data, "train": finetune_settings(data["train"])})


def mean_logged_loss(log_history: list[dict]) -> float:
    """Mean loss over every optimiser step, from the Trainer's per-interval loss log."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last else float("nan")


def _callbacks(rank: int, generator: torch.Generator | None, clean=None):
    """The run's own callbacks: loss logged at checkpoints, the noise generator checkpointed,
    and `clean` (clean_loss_callback: the loss without noise, None when noise is off)."""
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

    return [LogAtCheckpoints()] + ([clean] if clean is not None else [])


CLEAN_LOSS_LOG = "clean_loss_log.json"  # [{step, clean_loss, loss}]: the loss without noise
CLEAN_SUBSET = 4  # training examples the clean loss is measured on (the first, in data order):
# one batch of the default, about a tenth of an optimiser step per logging step


def clean_loss_callback(run: _Run, noise: dict, resumed_step: int):
    """A TrainerCallback measuring, at every logging step of a run with noise, the mean loss of
    a fixed training subset (CLEAN_SUBSET examples) with the noise off, beside the noisy training
    loss: the NEFTune paper's point is that the two differ, and that only the clean one says how
    well the model fits (its Fig. 4). None when noise is off (the training loss is clean then).

    Nothing the Trainer computes changes: the model is put in eval mode (no noise, no dropout:
    no random number is drawn) under torch.no_grad, and its mode restored; the weights,
    train_loss and a killed-and-resumed run stay bit-identical. Every rank measures (an FSDP
    forward gathers shards from all of them); rank 0 writes clean_loss_log.json after each
    logging step, which a resumed run reads back up to its checkpoint, and logs
    `train/clean_loss` into the W&B run beside the Trainer's `train/loss`.
    """
    if noise["kind"] == "none":
        return None
    from transformers import TrainerCallback

    from pipeline.data.loading import pad_batch

    path = run.work / CLEAN_LOSS_LOG
    kept = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    # Batched shortest first: little padding, so a measurement costs about a third of one
    # optimiser step on these many sequences (a forward pass, no backward).
    subset = sorted(run.examples[:CLEAN_SUBSET], key=lambda e: len(e["input_ids"]))
    pad_id = run.tok.pad_token_id

    class CleanLoss(TrainerCallback):
        def __init__(self):
            self.entries = [e for e in kept if e["step"] <= resumed_step]

        @torch.no_grad()
        def measure(self, model, args) -> float:
            was_training = model.training
            model.eval()
            # In the precision the training loss is computed in (bf16 autocast under the
            # Trainer's mixed precision, as accelerate runs its forward): the two are compared,
            # and an fp32 forward of fp32 weights costs 2.5x a bf16 one on a bf16 CPU.
            precision = torch.autocast(args.device.type, torch.bfloat16, enabled=bool(args.bf16))
            try:
                total, tokens = 0.0, 0
                for start in range(0, len(subset), args.per_device_train_batch_size):
                    chunk = subset[start : start + args.per_device_train_batch_size]
                    batch = {k: v.to(args.device) for k, v in pad_batch(chunk, pad_id).items()}
                    n = int((batch["labels"][:, 1:] != -100).sum())  # the tokens the loss counts
                    with precision:
                        total += float(model(**batch, use_cache=False).loss) * n
                    tokens += n
            finally:
                model.train(was_training)
            return total / max(tokens, 1)

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if "loss" not in (logs or {}):  # the closing summary, not a logging step
                return control
            step, value = state.global_step, self.measure(model, args)
            self.entries.append({"step": step, "clean_loss": value, "loss": logs["loss"]})
            if run.rank == 0:
                write_json_atomic(path, self.entries)
            if state.is_world_process_zero and "wandb" in args.report_to:
                import wandb

                if wandb.run is not None:
                    wandb.run.log({"train/clean_loss": value, "train/global_step": step})
            return control

    return CleanLoss()


def _progress_bar(trainer, run: _Run, clean) -> None:
    """The Trainer's progress bar, named after the stage, with the loss (and the clean loss) in
    its postfix instead of a dict printed per logging step."""
    from tqdm.auto import tqdm
    from transformers.trainer_callback import ProgressCallback

    if not any(type(cb) is ProgressCallback for cb in trainer.callback_handler.callbacks):
        return  # disable_tqdm: no bar to replace
    key = run.work.name.rsplit(".", 2)[0]  # <key>.<tag>.partial
    name = readable_of(key) if key.count("-") >= 2 else key

    class StageBar(ProgressCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                desc = f"finetune {name}"
                self.training_bar = tqdm(total=state.max_steps, desc=desc, dynamic_ncols=True)
            self.current_step = 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and self.training_bar and "loss" in (logs or {})):
                return
            shown = {"loss": f"{logs['loss']:.4f}"}
            last = clean.entries[-1] if clean is not None and clean.entries else {}
            if last.get("step") == state.global_step:
                shown["clean loss"] = f"{last['clean_loss']:.4f}"
            self.training_bar.set_postfix(shown, refresh=False)

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StageBar())


@dataclass
class _Run:
    """One rank's training run as train() assembles it."""

    cfg: dict
    work: Path
    rank: int
    world: int
    model_dtype: str = "float32"  # model.dtype (resolved): what finetune's `auto`s resolve against
    args: Any = None
    model: Any = None
    tok: Any = None
    examples: list = field(default_factory=list)
    dropped: int = 0
    quantized: bool = False
    trainable: int = 0
    generator: Any = None
    resume: Path | None = None
    tokens_before: int = 0
    wall_s: float = 0.0  # seconds in Trainer.train (or loading the final checkpoint)
    passes_per_example: float | None = None  # forward+backward passes per batch (the noise kind)


def rank0_loading(train_cfg: FinetuneConfig) -> bool:
    """FSDP with rank-0 loading (finetune.distributed.fsdp.rank0_load): only global rank 0 reads
    the base weights and the final checkpoint; accelerate broadcasts from rank 0."""
    return uses_fsdp(train_cfg) and bool(train_cfg.distributed.fsdp.rank0_load)


def skips_weights(train_cfg: FinetuneConfig, rank: int) -> bool:
    """Does this rank build its model without reading weights (meta parameters)?"""
    return rank0_loading(train_cfg) and rank != 0


def _load(req: TrainRequest, records: list[dict]) -> _Run:
    """Trainer arguments, the model (LoRA-wrapped if asked) and the tokenized examples."""
    from pipeline.data.loading import tokenize_examples
    from pipeline.models.loading import load_model_and_tokenizer

    rank, _, world = rank_info()
    run = _Run(req.train, Path(req.work), rank, world, req.dtype)
    cfg, ckpt_root = run.cfg, run.work / "checkpoints"
    check_world_size(ckpt_root, world)
    run.args = training_arguments(cfg, req.report_to, ckpt_root, world)
    if world == 1:
        single_device(run.args)
    prepare_rank0_loading(run.args, cfg)  # before from_pretrained, which reads it
    run.quantized = cfg.lora is not None and use_4bit(cfg.lora.quantize_4bit)
    # Loaded in the dtype the weights train in (finetune.weights_dtype: model.dtype, or fp32
    # under bf16 autocast on a CPU); under FSDP with fp32 masters accelerate upcasts what
    # trains. With rank-0 loading, ranks other than 0 read no weights (transformers 5 would read
    # them all on every rank): accelerate's prepare broadcasts rank 0's into every rank's shards.
    run.model, run.tok = load_model_and_tokenizer(
        req.base_dir,
        weights_dtype(cfg, req.dtype),
        req.revision,
        load_in_4bit=run.quantized,
        weights=not skips_weights(cfg, rank),
    )
    if cfg.lora is not None:
        run.model = with_lora(run.model, cfg.lora, run.quantized)
    run.examples, run.dropped = tokenize_examples(records, run.tok, cfg.max_length)
    if not run.examples:
        raise ValueError(
            f"no training example has response tokens within finetune.max_length={cfg.max_length}"
        )
    run.trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    return run


def load_final_checkpoint(trainer, resume: Path, train_cfg: FinetuneConfig, rank: int) -> None:
    """The final checkpoint's weights into trainer.model, for save_consolidated to write.

    Nothing trains, so the model is never prepared (sharded): under FSDP only rank 0 writes it,
    unsharded, so rank 0 alone reads the sharded checkpoint, whole and without collectives, and
    the other ranks read nothing (their model may hold no weights: rank-0 loading). The
    Trainer's own _load_from_checkpoint loaded the whole DCP checkpoint unsharded on every rank
    (70B: 8 x 138 GB of host memory per node).
    """
    if not uses_fsdp(train_cfg):
        trainer._load_from_checkpoint(str(resume))
    elif rank == 0:
        load_sharded_model(trainer.model, resume)


def noised_trainer(trainer_cls, handle, selector: ResponseLogits | None = None):
    """`trainer_cls` (transformers' Trainer) whose training batch loss the noise kind computes
    (NoiseKind.training_loss, through `handle`): the baseline and NEFTune's kinds get the
    Trainer's own compute_loss, called once as before (bit-identical); a kind of several passes
    (R3F, FreeLB) runs them through the same compute_loss, backpropagates an intermediate pass as
    training_step backpropagates the loss it returns, and normalises a sum over label tokens as
    compute_loss normalises the loss (transformers 5.x, trainer.py: training_step,
    compute_loss). `selector` (finetune.loss_logits=response): each training forward computes
    the logits of counted positions only (the Trainer's compute_loss_func is its loss)."""
    from contextlib import nullcontext

    from accelerate.utils import DistributedType

    class NoisedTrainer(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            parent = super().compute_loss
            if return_outputs or not model.training:
                return parent(model, inputs, return_outputs, num_items_in_batch)

            def forward(outputs: bool = False):
                rows = selector.selecting(inputs["labels"]) if selector else nullcontext()
                handle.batch_labels(inputs["labels"])
                with rows:
                    return parent(model, dict(inputs), outputs, num_items_in_batch)

            def backward(loss):
                if self.args.n_gpu > 1:
                    loss = loss.mean()
                scaled = getattr(self, "loss_is_scaled_for_ga", None)
                if scaled is None:
                    scaled = (
                        self.model_accepts_loss_kwargs and num_items_in_batch is not None
                    ) or self.compute_loss_func is not None
                if not scaled:
                    loss = loss / self.current_gradient_accumulation_steps
                deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
                self.accelerator.backward(loss, **({"scale_wrt_gas": False} if deepspeed else {}))

            def per_token(total, labels):
                if not (self.model_accepts_loss_kwargs and num_items_in_batch is not None):
                    return total / labels[..., 1:].ne(-100).sum().clamp(min=1)
                out = total / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    tp = getattr(self, "get_tp_size", lambda: 1)()
                    processes = self.accelerator.num_processes // tp
                    out = out * (processes if self.args.n_gpu <= 1 else self.args.n_gpu)
                return out

            return handle.training_loss(forward, backward, per_token)

    return NoisedTrainer


def _fit(run: _Run, noise: dict):
    """Attach the noise, resume from the last checkpoint, train; returns the Trainer."""
    from transformers import Trainer, TrainerState

    from pipeline.data.loading import pad_batch
    from pipeline.train.noise import attach_neftune, rank_generator

    cfg, ckpt_root, rank, world = run.cfg, run.work / "checkpoints", run.rank, run.world
    # One process draws from the global RNG (which the Trainer checkpoints), as before; ranks
    # draw from their own (seed, rank) generator so that their noise is independent.
    generator = rank_generator(cfg.seed, rank, run.args.device) if world > 1 else None
    handle = attach_neftune(
        run.model,
        noise.get("alpha", 0.0),
        noise["kind"],
        noise.get("length", "per_example"),
        generator=generator,
        settings=noise.get("settings"),
        seed=cfg.seed,  # a kind's one-off draws (NoisyTune's weights): the same on every rank
    )
    has_noise = generator is not None and noise["kind"] != "none"
    resume = last_checkpoint(ckpt_root, world, noise_rng=has_noise)
    if resume is not None and has_noise:
        generator.set_state(torch.load(resume / noise_rng_file(rank)))
    resumed = TrainerState.load_from_json(str(resume / "trainer_state.json")) if resume else None
    run.generator, run.resume = generator, resume
    run.tokens_before = resumed.num_input_tokens_seen if resumed else 0
    # The last step is always checkpointed: found, training is over.
    finished = resumed is not None and resumed.global_step >= resumed.max_steps > 0
    tok = run.tok
    clean = clean_loss_callback(run, noise, resumed.global_step if resumed else 0)
    selector = (
        ResponseLogits(run.model) if loss_logits(cfg, run.model_dtype) == "response" else None
    )
    trainer = noised_trainer(Trainer, handle, selector)(
        model=run.model,
        args=run.args,
        train_dataset=run.examples,
        data_collator=lambda feats: pad_batch(feats, tok.pad_token_id),
        processing_class=tok,
        callbacks=_callbacks(rank, generator, clean),
        compute_loss_func=selector.loss if selector else None,
    )
    _progress_bar(trainer, run, clean)
    if uses_fsdp(cfg) and not trainer.is_fsdp_enabled:
        # accelerate falls back to plain DDP without CUDA: never train unsharded by surprise.
        raise RuntimeError(
            "finetune.distributed.strategy=fsdp, but the Trainer did not enable "
            "FSDP (it does on CUDA GPUs only); use strategy=ddp here"
        )
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(ckpt_root / WORLD_FILE, {"world_size": world})
    started = time.time()
    if finished:
        # train(resume_from_checkpoint=) would run one optimiser step past max_steps when the
        # epoch has batches left (transformers 5.x); load the final weights and state instead.
        load_final_checkpoint(trainer, resume, cfg, rank)
        trainer.state = resumed
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    run.wall_s = time.time() - started
    run.passes_per_example = handle.passes_per_batch()
    handle.remove()
    if selector is not None:
        selector.remove()
    if generator is not None:
        write_rank_record(run.work, rank, world, generator)
    return trainer


def _metrics(run: _Run, trainer, noise: dict) -> dict:
    """What finetune reports: the mean logged loss, steps, tokens, speed, noise, LoRA."""
    state = trainer.state
    log = [e for e in state.log_history if "loss" in e]
    write_json_atomic(run.work / "loss_log.json", log)
    metrics = {
        # Not the Trainer's training_loss: that averages only the steps of this train() call.
        "train_loss": mean_logged_loss(state.log_history),
        "train_final_logged_loss": float(log[-1]["loss"]) if log else float("nan"),
        "train_steps": int(state.global_step),
        "train_epochs": float(state.epoch or 0.0),
        "train_examples": len(run.examples),
        "train_tokens_seen": int(state.num_input_tokens_seen),
        "train_examples_dropped": run.dropped,
        "train_runtime_s": round(run.wall_s, 2),
        "train_tokens_per_s": round(
            (state.num_input_tokens_seen - run.tokens_before) / max(run.wall_s, 1e-9), 2
        ),
        "resumed_from_step": int(run.resume.name.split("-")[1]) if run.resume else 0,
        # Forward+backward passes of the model per example and optimiser step (1: plain
        # fine-tuning; R3F 2, FreeLB K + 1): what a noise kind costs beyond its steps. None
        # when this process ran no batch (a resumed run that found the final checkpoint).
        "train_passes_per_example": run.passes_per_example,
        "noise_kind": noise["kind"],
        "noise_alpha": float(noise.get("alpha", 0.0)),
        "noise_length": noise.get("length", "none"),
        "lora": run.cfg.lora is not None,
        "lora_4bit": run.quantized,
        "trainable_params": run.trainable,
    }
    if run.world > 1:
        metrics.update(world_size=run.world, strategy=str(run.cfg.distributed.strategy))
    return metrics


def train(req: TrainRequest, records: list[dict]) -> dict | None:
    """Train as configured; returns the metrics on rank 0 (None on other ranks)."""
    run = _load(req, records)
    trainer = _fit(run, req.noise)
    model = trainer.model
    if run.cfg.lora is not None:
        if run.rank == 0:
            model.save_pretrained(run.work / "adapter")
        model = merged(model, run.work / "adapter", run.quantized)
    # Plain weights in model.dtype (fp32 masters are cast back): generate, openllm and overfit
    # load them like any model.
    save_consolidated(model, run.work / "model", run.rank == 0, req.dtype)
    if run.rank != 0:
        return None
    run.tok.save_pretrained(run.work / "model")
    metrics = _metrics(run, trainer, req.noise)
    # After the model: from here on nothing is retrained.
    write_json_atomic(run.work / TRAINED, metrics)
    # Optimiser state is large; the weights are kept.
    shutil.rmtree(run.work / "checkpoints", ignore_errors=True)
    return metrics


def main(argv: list[str]) -> int:
    """Worker entry: train the request at argv[0] (records in records.json beside it)."""
    exit_with_parent()
    request_path = Path(argv[0])
    req = TrainRequest.load(request_path)
    records = json.loads((request_path.parent / "records.json").read_text(encoding="utf-8"))
    configure_logging()  # a torchrun rank: no Hydra here; '[rank r/w]' on every line
    LOG.info("pid %d on %s", os.getpid(), os.uname().nodename)
    train(req, records)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # rank 0 has written everything before any rank reports success
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
