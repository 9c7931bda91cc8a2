"""FSDP checks: accelerate's own prepare with the arguments the pipeline builds (fsdp_probe, run
by tests/test_gpu_path.py on a CPU over gloo) and, on a GPU, the pipeline's training worker under
torchrun at world size 1 (check_fsdp, a row of scripts/gpu_acceptance.py): a killed run's
checkpoint is sharded, the rerun resumes at its step, the consolidated safetensors load.

Run: python scripts/gpu_acceptance.py   (runs check_fsdp); each launch is
     torchrun --nproc-per-node=1 --standalone scripts/gpu_fsdp_checks.py REQUEST [KILL_AT]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.gpu_rows import Row, composed, needs_cuda, tiny_llama, verdict  # noqa: E402


def fsdp_probe(fp32_master: bool, ckpt_dir: str) -> dict:
    """accelerate's fsdp2_prepare_model on a bf16 Llama with the arguments the pipeline builds
    (world size 1; gloo on a CPU). Call in a fresh process: it starts a process group."""
    import torch

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(29700 + int(fp32_master)),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
    )
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from transformers.distributed.fsdp import is_fsdp_enabled

    from pipeline.train.trainer_args import prepare_rank0_loading, training_arguments

    cfg = _fsdp_train_cfg(fp32_master)
    args = training_arguments(cfg, [], Path(ckpt_dir), 1)
    prepare_rank0_loading(args, cfg)
    rank0 = is_fsdp_enabled()  # what from_pretrained asks before loading
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    mixed = "bf16" if args.bf16 else "no"
    if mixed != "no":
        plugin.set_mixed_precision(mixed)
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin),
        mixed_precision=mixed,
        is_main_process=True,
        device=args.device,
    )
    model, _ = tiny_llama(torch.bfloat16)
    model = fsdp2_prepare_model(accelerator, model.to(args.device))
    return {
        "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "mixed_precision": mixed,
        "state_dict_type": str(plugin.state_dict_type),
        "rank0_loading_seen_by_from_pretrained": rank0,
        "activation_checkpointing": {
            # gradient_checkpointing: the field in transformers 5.17, the mirrored alias in 5.25
            "training_argument": bool(args.gradient_checkpointing),
            "fsdp": bool(args.fsdp_plugin_args.get("activation_checkpointing")),
        },
    }


def _fsdp_train_cfg(fp32_master: bool, max_steps: int = 2):
    """The finetune config of the probe (typed, as the training code reads it): FSDP, bf16."""
    from pipeline.config.finetune import finetune_settings

    return finetune_settings(
        {
            "epochs": 1,
            "max_steps": max_steps,
            "per_device_batch_size": 1,
            "effective_batch_size": 1,
            "learning_rate": 1e-4,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "optim": "adamw_torch",
            "bf16": True,
            "gradient_checkpointing": True,
            "logging_steps": 1,
            "save_steps": 1,
            "sampling": "random",
            "seed": 0,
            "distributed": {
                "strategy": "fsdp",
                "timeout_s": 600,
                "fsdp": {
                    "sharding": "full_shard",
                    "fp32_master_weights": fp32_master,
                    "cpu_offload": False,
                    "rank0_load": True,
                },
            },
        }
    )


# -- the training worker under torchrun (world size 1), killed once and resumed --------------------

FSDP_STEPS, KILL_AT = 6, 4  # steps in all; the first launch dies right after checkpoint-4
FSDP_OVERRIDES = (
    "model=tiny",
    "finetune=tiny",
    "data=default",
    "noise=uniform",
    "model.dtype=bfloat16",
    "finetune.bf16=true",
    "finetune.distributed.strategy=fsdp",
    f"finetune.max_steps={FSDP_STEPS}",
    "finetune.save_steps=2",
)
PROBE = "fsdp_probe.json"  # written by the worker when training starts


def worker(request: str, kill_at: int = 0) -> int:
    """`python -m pipeline.train.training REQUEST` (what pipeline.train.launch starts), with a
    callback that records what the Trainer trains and, if `kill_at`, SIGKILLs this rank right
    after checkpoint-`kill_at` is written (a preemption at the worst moment)."""
    from transformers import TrainerCallback

    from pipeline.train import training

    out = Path(request).parent / PROBE

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            from torch.distributed.tensor import DTensor

            params = list(model.parameters())
            out.write_text(
                json.dumps(
                    {
                        "start_step": state.global_step,
                        "sharded_params": sum(isinstance(p, DTensor) for p in params),
                        "params": len(params),
                        "param_dtypes": sorted({str(p.dtype) for p in params}),
                    }
                )
            )

        def on_save(self, args, state, control, **kw):
            if kill_at and state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = training._callbacks
    training._callbacks = lambda *args, **kwargs: callbacks(*args, **kwargs) + [Record()]
    return training.main([request])


@dataclass
class FsdpRecord:
    killed_rc: int  # torchrun's exit code for the killed launch (not 0)
    checkpoint: str  # the checkpoint the kill left
    checkpoint_files: list  # its files, relative paths
    first: dict  # the worker's PROBE of the first launch
    resumed: dict  # ... of the second launch
    metrics: dict  # trained.json of the second launch
    saved_dtypes: list  # of the consolidated model.safetensors
    loaded_device: str  # where the pipeline's loader put the consolidated model
    logits_finite: bool  # one forward of the loaded model


FSDP_CHECK = "FSDP under torchrun (world 1): sharded, resumed, loadable"
FSDP_EXPECTED = (
    f"checkpoint = .distcp shards only; rerun starts at step {KILL_AT} and ends at "
    f"{FSDP_STEPS}; DTensor bf16 params; bf16 safetensors that load"
)


def check_fsdp(expect: str, work: Path) -> Row:
    """Two launches of the pipeline's worker on the tiny model, bf16, FSDP (sharded checkpoints,
    FSDP's activation checkpointing): the first is killed after checkpoint-4, the second
    resumes; then the consolidated weights are loaded for generation."""
    if expect != "cuda":
        return needs_cuda(FSDP_CHECK, FSDP_EXPECTED, "accelerate's FSDP shards on GPUs only")
    return judge_fsdp(killed_and_resumed(work, FSDP_OVERRIDES, "cuda"))


def killed_and_resumed(work: Path, overrides: tuple, device: str) -> FsdpRecord:
    """Launch the worker on the config `overrides`, kill it after checkpoint-KILL_AT, launch it
    again, load what it saved on `device` (tests run this with strategy=ddp on a CPU)."""
    import torch
    from omegaconf import OmegaConf
    from safetensors import safe_open

    from pipeline.config.finetune import finetune_settings
    from pipeline.data.loading import load_train
    from pipeline.models.loading import base_model_dir, load_model_and_tokenizer
    from pipeline.store.store import Store
    from pipeline.train.noise import noise_params
    from pipeline.train.training import TrainRequest

    cfg = composed(*overrides)
    train = finetune_settings(OmegaConf.merge(cfg.finetune, {"seed": 0}))
    run_dir, launch = work / "run", work / "run" / "launch"
    launch.mkdir(parents=True)
    request = TrainRequest(
        work=str(run_dir),
        base_dir=base_model_dir(cfg.model, Store(work / "cache")),
        dtype=cfg.model.dtype,
        revision=None,
        noise=noise_params(cfg.noise),
        train=train,
        report_to=[],
    )
    request.save(launch / "request.json")
    records = load_train(cfg.data.train, cfg.data.train_limit)
    (launch / "records.json").write_text(json.dumps(records), encoding="utf-8")

    def torchrun(*extra: str) -> int:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1"]
        cmd += ["--standalone", __file__, str(launch / "request.json"), *extra]
        with open(launch / "worker.log", "a", encoding="utf-8") as log:
            done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=log, timeout=240)
        return done.returncode

    killed = torchrun(str(KILL_AT))
    first = json.loads((launch / PROBE).read_text())
    ckpt = run_dir / "checkpoints" / f"checkpoint-{KILL_AT}"
    files = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file())
    if torchrun() != 0:
        log = (launch / "worker.log").read_text(encoding="utf-8")
        raise RuntimeError(f"the resumed launch failed: ...{log[-800:]}")
    resumed = json.loads((launch / PROBE).read_text())
    with safe_open(str(run_dir / "model" / "model.safetensors"), "pt") as fh:
        saved = sorted({str(fh.get_tensor(k).dtype) for k in fh.keys()})
    model, tok = load_model_and_tokenizer(str(run_dir / "model"), cfg.model.dtype, device=device)
    with torch.no_grad():
        logits = model(**tok(["Name three colours."], return_tensors="pt").to(device)).logits
    return FsdpRecord(
        killed_rc=killed,
        checkpoint=ckpt.name,
        checkpoint_files=files,
        first=first,
        resumed=resumed,
        metrics=json.loads((run_dir / "trained.json").read_text()),
        saved_dtypes=saved,
        loaded_device=model.device.type,
        logits_finite=bool(torch.isfinite(logits).all()),
    )


FULL_STATE = (".bin", ".safetensors", ".pt", ".pth")  # one file holding every weight/state
NOT_WEIGHTS = {"training_args.bin", "rng_state.pth", "scheduler.pt"}  # the Trainer's own


def sharding_failures(files: list[str]) -> list[str]:
    """What makes a checkpoint's file list other than sharded: no model or optimizer .distcp
    shards (torch.distributed.checkpoint), or a file that holds a full state."""
    failures = []
    for part in ("pytorch_model_fsdp", "optimizer"):
        if not any(f.startswith(part) and f.endswith(".distcp") for f in files):
            failures.append(f"no {part}*/ .distcp shards")
    full = [f for f in files if f.endswith(FULL_STATE) and Path(f).name not in NOT_WEIGHTS]
    if full:
        failures.append(f"full-state files {full}")
    return failures


def judge_fsdp(rec: FsdpRecord) -> Row:
    failures = sharding_failures(rec.checkpoint_files)
    if rec.killed_rc == 0:
        failures.append("the launch to be killed finished")
    for name, probe in (("first", rec.first), ("resumed", rec.resumed)):
        if not probe.get("sharded_params") or probe.get("param_dtypes") != ["torch.bfloat16"]:
            failures.append(f"{name} launch trained {probe} (FSDP2 DTensor bf16 expected)")
    if rec.resumed.get("start_step") != KILL_AT or rec.metrics.get("resumed_from_step") != KILL_AT:
        failures.append(
            f"resumed at step {rec.resumed.get('start_step')} "
            f"(metrics: {rec.metrics.get('resumed_from_step')}), {KILL_AT} expected"
        )
    if rec.metrics.get("train_steps") != FSDP_STEPS:
        failures.append(f"{rec.metrics.get('train_steps')} steps, {FSDP_STEPS} expected")
    if rec.saved_dtypes != ["torch.bfloat16"] or not rec.logits_finite:
        failures.append(f"consolidated {rec.saved_dtypes}, finite logits: {rec.logits_finite}")
    if rec.loaded_device != "cuda":
        failures.append(f"consolidated model loaded on {rec.loaded_device}")
    measured = (
        f"killed (rc {rec.killed_rc}) after {rec.checkpoint}: {', '.join(rec.checkpoint_files)}; "
        f"resumed at step {rec.resumed.get('start_step')} to {rec.metrics.get('train_steps')}; "
        f"{rec.resumed.get('sharded_params')}/{rec.resumed.get('params')} DTensor params "
        f"{rec.resumed.get('param_dtypes')}; saved {rec.saved_dtypes}, loaded on "
        f"{rec.loaded_device}, finite logits {rec.logits_finite}"
    )
    return verdict(FSDP_CHECK, FSDP_EXPECTED, measured, failures)


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))
