"""What a rank of a multi-process fine-tune needs besides the Trainer: who it is, complete
checkpoints of the world it was written by, consolidated weights, and dying with its launcher.

Used by pipeline.train.training in the pipeline process (world size 1) and in torchrun workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import torch

from pipeline.logs import get_logger
from pipeline.store.store import write_json_atomic

LOG = get_logger("finetune")

WORLD_FILE = "world_size.json"  # in checkpoints/: the world size the checkpoints were written by


def rank_info() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) in one process."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


def noise_rng_file(rank: int) -> str:
    return f"neftune_rng_rank{rank}.pt"


def _readable_state(ckpt: Path) -> bool:
    """Is the checkpoint's trainer_state.json whole? The Trainer writes it in place, so a kill
    or a full disk mid-write leaves it empty or cut; such a checkpoint is passed over, named."""
    path = ckpt / "trainer_state.json"
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError) as err:
        LOG.warning(
            "%s is damaged (%s: %s); resuming from an earlier checkpoint instead",
            path,
            type(err).__name__,
            err,
        )
        return False


def last_checkpoint(ckpt_root: Path, world_size: int = 1, noise_rng: bool = False) -> Path | None:
    """Newest complete checkpoint: trainer_state.json written whole (a kill mid-save leaves it
    out or damaged) and, with per-rank noise generators, every rank's generator state beside
    it. None: train from the start."""
    if not ckpt_root.is_dir():
        return None
    done = [
        p
        for p in ckpt_root.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
        and (not noise_rng or all((p / noise_rng_file(r)).is_file() for r in range(world_size)))
    ]
    for ckpt in sorted(done, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        if _readable_state(ckpt):
            return ckpt
    return None


def check_world_size(ckpt_root: Path, world_size: int) -> None:
    """Refuse checkpoints written by another world size: their data order and shards differ."""
    recorded = ckpt_root / WORLD_FILE
    if not recorded.is_file():
        return
    was = json.loads(recorded.read_text(encoding="utf-8"))["world_size"]
    if was != world_size:
        raise ValueError(
            f"the checkpoints in {ckpt_root} were written by {was} processes, this run has "
            f"{world_size}; resume with finetune.distributed set to {was} processes in all "
            f"(nproc_per_node x nnodes), or delete {ckpt_root} to train from the start"
        )


def full_state_dict(model) -> dict | None:
    """The unsharded weights of a sharded model, gathered onto rank 0's CPU (a collective: every
    rank calls it); None when the model's own state_dict is already whole.

    save_pretrained on a sharded model writes a wrong embedding (FSDP1) or raises (FSDP2);
    torch.distributed.checkpoint gathers every parameter whatever wrapped it.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    if not dist.is_initialized():
        return None
    fsdp1 = type(model).__name__ == "FullyShardedDataParallel"
    if not fsdp1 and not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


FSDP_MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate's DCP directory of a sharded checkpoint


def load_sharded_model(model, ckpt: Path) -> None:
    """Read the model of an FSDP SHARDED_STATE_DICT checkpoint (accelerate's DCP directory in
    `ckpt`, every rank's shard) whole into `model`, an unsharded module of this process alone:
    no collective, so the other ranks take no part and read nothing."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(ckpt / FSDP_MODEL_DIR)), no_dist=True)
    set_model_state_dict(model, state["model"])


def save_consolidated(model, out: Path, is_main: bool, dtype: str | None = None) -> None:
    """Write `model` (sharded or not) as plain safetensors that any loader reads, its floating
    tensors in `dtype` (FSDP's fp32 master weights are a training device, not the result)."""
    from pipeline.models.devices import DTYPES

    state = full_state_dict(model)
    if is_main:
        if dtype is not None and state is not None:
            state = {
                k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()
            }
        elif dtype is not None:
            model = model.to(DTYPES[dtype])  # a no-op when it already is (tied weights stay tied)
        model.save_pretrained(out, state_dict=state, safe_serialization=True)


def write_rank_record(work: Path, rank: int, world: int, generator: torch.Generator) -> None:
    """launch/rank<r>.json: where this rank ran and its noise generator's seed and end state."""
    state = generator.get_state().cpu().numpy().tobytes()
    write_json_atomic(
        work / "launch" / f"rank{rank}.json",
        {
            "rank": rank,
            "world_size": world,
            "host": os.uname().nodename,
            "pid": os.getpid(),
            "noise_seed": generator.initial_seed(),
            "noise_state_sha256": hashlib.sha256(state).hexdigest(),
        },
    )


def exit_with_parent() -> None:
    """End this worker when its launcher dies (a SIGKILLed torchrun leaves its workers behind)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
