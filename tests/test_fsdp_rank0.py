"""FSDP rank-0 loading on this CPU (issue 27): two gloo ranks under torchrun load the tiny model
through the finetune's own path (training._load: prepare_rank0_loading, then the load) with
finetune.distributed.strategy=fsdp and fsdp.rank0_load; rank 1 must hold no weights before
accelerate's prepare (transformers 5 read them all on every rank: a 70B node held 8 x 138 GB),
and accelerate's own FSDP2 prepare (the Trainer's, which needs CUDA to call it) must then give
both ranks exactly rank 0's weights. Then the resume of a run whose last checkpoint is its final
step: rank 0 alone reads the sharded checkpoint whole, rank 1 reads nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.config.finetune import finetune_settings
from pipeline.models.loading import base_model_dir
from pipeline.store.store import Store
from pipeline.train.training import TrainRequest
from tests.support.composed import SMOKE, composed

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, types
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model, save_fsdp_model
from safetensors.torch import load_file

from pipeline.train import training
from pipeline.train.ranks import full_state_dict

request = Path(sys.argv[1])
out = request.parent
req = training.TrainRequest.load(request)
records = json.loads((out / "records.json").read_text())


def held(model):
    params = dict(model.named_parameters())
    return {
        "tensors": len(params),
        "meta": sum(p.is_meta for p in params.values()),
        "holding_values": sum(
            (not p.is_meta) and bool(p.detach().abs().sum() > 0) for p in params.values()
        ),
    }


# 1. The pipeline's own loading path, then accelerate's own FSDP2 prepare.
run = training._load(req, records)  # brings the gloo process group up (rank-0 loading)
rank = dist.get_rank()
seen = {"before_prepare": held(run.model)}
plugin = FullyShardedDataParallelPlugin(**run.args.fsdp_plugin_args)
accelerator = types.SimpleNamespace(
    state=types.SimpleNamespace(fsdp_plugin=plugin),
    mixed_precision="no",
    is_main_process=rank == 0,
    device=run.args.device,
)
model = fsdp2_prepare_model(accelerator, run.model)
seen["sharded"] = all(type(p).__name__ == "DTensor" for p in model.parameters())
full = full_state_dict(model)  # every rank's shard, gathered on rank 0
if rank == 0:
    base = load_file(str(Path(req.base_dir) / "model.safetensors"))
    seen["equal_to_base"] = sorted(k for k in base if torch.equal(full[k], base[k]))
    seen["base_keys"] = sorted(base)
(out / f"load{rank}.json").write_text(json.dumps(seen))

# 2. A sharded checkpoint of changed weights (accelerate's SHARDED_STATE_DICT save), then the
# finished run's resume: fresh models as _load builds them, the final checkpoint loaded.
with torch.no_grad():
    for p in model.parameters():
        p.mul_(2.0)
ckpt = out / "checkpoint-1"
save_fsdp_model(plugin, accelerator, model, ckpt)
want = full_state_dict(model)
again = training._load(req, records)
dist.barrier()
if rank == 1:  # rank 0 must need nobody: no collective from here until the barrier
    dist.barrier()
training.load_final_checkpoint(None if rank else types.SimpleNamespace(model=again.model), ckpt,
                               again.cfg, rank)
after = {"after_resume": held(again.model)}
if rank == 0:
    state = again.model.state_dict()
    after["equal_to_checkpoint"] = sorted(k for k in want if torch.equal(state[k], want[k]))
    after["checkpoint_keys"] = sorted(want)
    dist.barrier()
(out / f"resume{rank}.json").write_text(json.dumps(after))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """Run PROBE on 2 gloo ranks; (torchrun's result, the directory of its JSON records)."""
    root = tmp_path_factory.mktemp("rank0")
    cfg = composed(
        *SMOKE,
        "finetune.distributed.strategy=fsdp",
        "finetune.distributed.nproc_per_node=2",
        "finetune.effective_batch_size=4",
        "finetune.per_device_batch_size=2",
    )
    train = finetune_settings(OmegaConf.merge(cfg.finetune, {"seed": 0}))
    assert train.distributed.fsdp.rank0_load is True  # the default
    TrainRequest(
        work=str(root / "work"),
        base_dir=base_model_dir(cfg.model, Store(root / "cache")),
        dtype="float32",
        revision=None,
        noise={"kind": "none", "alpha": 0.0},
        train=train,
        report_to=[],
        world_size=2,
    ).save(root / "request.json")
    records = [{"instruction": f"Say {w}.", "input": "", "output": w} for w in ("hi", "yo")]
    (root / "records.json").write_text(json.dumps(records))
    (root / "probe.py").write_text(PROBE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--standalone",
            str(root / "probe.py"),
            str(root / "request.json"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, root


@pytest.mark.e2e  # a whole command in fresh interpreters: tens of seconds
def test_rank_1_holds_no_weights_before_prepare_and_gets_rank_0s_after(probed):
    done, root = probed
    assert (root / "load1.json").is_file(), done.stderr[-3000:]
    rank0, rank1 = (json.loads((root / f"load{r}.json").read_text()) for r in (0, 1))
    tensors = rank0["before_prepare"]["tensors"]
    assert rank0["before_prepare"] == {"tensors": tensors, "meta": 0, "holding_values": tensors}
    assert rank1["before_prepare"] == {"tensors": tensors, "meta": tensors, "holding_values": 0}
    # accelerate's prepare broadcast rank 0's weights into both ranks' shards
    assert rank0["sharded"] and rank1["sharded"]
    assert rank0["equal_to_base"] == rank0["base_keys"]


@pytest.mark.e2e  # a whole command in fresh interpreters: tens of seconds
def test_a_finished_fsdp_run_reads_its_final_checkpoint_on_rank_0_only(probed):
    done, root = probed
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((root / f"resume{r}.json").read_text()) for r in (0, 1))
    tensors = rank1["after_resume"]["tensors"]
    assert rank1["after_resume"]["meta"] == tensors  # read nothing
    assert rank0["after_resume"]["meta"] == 0
    assert rank0["equal_to_checkpoint"] == rank0["checkpoint_keys"]  # the trained weights, whole
