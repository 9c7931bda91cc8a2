"""The FSDP checks of scripts/gpu_acceptance.py: accelerate's own prepare with the arguments
the pipeline builds (runs on a CPU too, over gloo) and, on a GPU, the real Trainer under torchrun.

Run: python scripts/gpu_acceptance.py   (calls these); the Trainer check re-runs this file as
     torchrun --nproc-per-node=1 --standalone scripts/gpu_fsdp_checks.py <work dir>
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from scripts.gpu_acceptance import tiny_llama  # noqa: E402


def fsdp_probe(fp32_master: bool, ckpt_dir: str) -> dict:
    """accelerate's fsdp2_prepare_model on a bf16 Llama with the arguments the pipeline builds
    (world size 1; gloo on a CPU). Call in a fresh process: it starts a process group."""
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
            "training_argument": bool(args.activation_checkpointing),
            "fsdp": bool(args.fsdp_plugin_args.get("activation_checkpointing")),
        },
    }


def _fsdp_train_cfg(fp32_master: bool, max_steps: int = 2) -> dict:
    return {
        "epochs": 1,
        "max_steps": max_steps,
        "per_device_batch_size": 1,
        "gradient_accumulation_steps": 1,
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


def check_fsdp_prepare(work: Path) -> dict:
    measured = {}
    for fp32_master in (False, True):
        out = work / f"probe{int(fp32_master)}.json"
        code = (
            "import json, sys; from scripts.gpu_fsdp_checks import fsdp_probe; "
            f"json.dump(fsdp_probe({fp32_master}, sys.argv[1]), open(sys.argv[2], 'w'))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(work / "ck"), str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            return {
                "check": "FSDP prepare (world 1)",
                "measured": done.stderr[-300:],
                "expected": "runs",
                "ok": False,
            }
        measured[fp32_master] = json.loads(out.read_text())
    ok = (
        measured[False]["param_dtypes"] == ["torch.bfloat16"]
        and measured[True]["param_dtypes"] == ["torch.float32"]
        and all(m["rank0_loading_seen_by_from_pretrained"] for m in measured.values())
        and all("SHARDED" in m["state_dict_type"] for m in measured.values())
    )
    return {
        "check": "FSDP prepare (world 1)",
        "measured": f"fp32_master=false: {measured[False]['param_dtypes']}; true: "
        f"{measured[True]['param_dtypes']}; "
        f"{measured[False]['state_dict_type']}",
        "expected": "bf16 / fp32 params, sharded checkpoints, rank-0 loading",
        "ok": ok,
    }


def fsdp_trainer_run(work: str) -> None:
    """Under torchrun (1 process, a GPU): the real Trainer with the pipeline's FSDP arguments,
    two steps, a checkpoint after each; then the consolidated save. Writes fsdp_trainer.json."""
    from transformers import Trainer

    from pipeline.train.ranks import save_consolidated
    from pipeline.train.trainer_args import prepare_rank0_loading, training_arguments

    cfg, out = _fsdp_train_cfg(False), Path(work)
    args = training_arguments(cfg, [], out / "checkpoints", 1)
    prepare_rank0_loading(args, cfg)
    model, _ = tiny_llama(torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (4, 32))
    data = [
        {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids
    ]
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    ckpt = out / "checkpoints" / "checkpoint-1"
    dtypes = sorted({str(p.dtype) for p in trainer.model.parameters()})
    save_consolidated(trainer.model, out / "model", True, "bfloat16")
    from safetensors import safe_open

    with safe_open(str(out / "model" / "model.safetensors"), "pt") as fh:
        saved = sorted({str(fh.get_tensor(k).dtype) for k in fh.keys()})
    (out / "fsdp_trainer.json").write_text(
        json.dumps(
            {
                "fsdp_enabled": trainer.is_fsdp_enabled,
                "param_dtypes": dtypes,
                "saved_dtypes": saved,
                "checkpoint_files": sorted(p.name for p in ckpt.iterdir()),
            }
        )
    )


def check_fsdp_trainer(work: Path, device: str) -> dict:
    row = {
        "check": "FSDP Trainer under torchrun (world 1)",
        "expected": "FSDP on, bf16 params, sharded checkpoint dir, bf16 safetensors",
    }
    if device != "cuda":
        return row | {"measured": "needs CUDA (accelerate shards on GPUs only)", "ok": None}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=1",
        "--standalone",
        str(Path(__file__).resolve()),
        str(work / "fsdp"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return row | {"measured": done.stderr[-400:].replace("\n", " "), "ok": False}
    got = json.loads((work / "fsdp" / "fsdp_trainer.json").read_text())
    sharded = any("fsdp" in name for name in got["checkpoint_files"])
    ok = (
        got["fsdp_enabled"]
        and got["param_dtypes"] == ["torch.bfloat16"]
        and sharded
        and got["saved_dtypes"] == ["torch.bfloat16"]
    )
    return row | {"measured": json.dumps(got), "ok": ok}


if __name__ == "__main__":
    fsdp_trainer_run(sys.argv[1])
