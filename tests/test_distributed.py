"""Fine-tuning on several processes (issue 14): batch arithmetic, keys, launch commands (unit), and
on this CPU the real launcher: the tiny model trained by 2 DDP ranks over gloo through torchrun,
loaded by generate, resumed after SIGKILL of the launcher bit-identically to an uninterrupted run,
with noise drawn independently per rank (FSDP2's consolidated save: test_distributed_fsdp2.py).
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from pipeline.plan import arm_specs
from pipeline.stages import finetune, generate
from pipeline.stages.contract import Call, Context
from pipeline.store.store import Store
from pipeline.train.launch import LaunchError, accumulation_steps, command, world_size
from pipeline.train.noise import rank_generator
from tests.support.composed import SMOKE, composed
from tests.support.skips import needs_no_cuda

TINY = [*SMOKE, "openllm=none", "logger=disabled", "finetune.lr_scheduler=constant"]
DDP2 = [
    "finetune.distributed.nproc_per_node=2",
    "finetune.distributed.strategy=ddp",
    "finetune.effective_batch_size=8",
]
# Keys of the default's and the tiny model's fine-tunes before finetune.distributed existed: one
# process trains exactly what it trained before, so they must not move.
KEYS_BEFORE = {
    (): (
        "finetune-smollm2-135m_default_base-27fee4388980",
        "finetune-smollm2-135m_default_neft-uniform5-77e1128fd186",
    ),
    tuple(SMOKE): (
        "finetune-tiny-llama_default_base-9b45a5206426",
        "finetune-tiny-llama_default_neft-uniform5-ee0819dab874",
    ),
}


def dist_cfg(**kw):
    base = {
        "nproc_per_node": "1",
        "nnodes": 1,
        "strategy": "none",
        "rdzv_port": 29400,
        "rdzv_endpoint": None,
        "fsdp": {"fp32_master_weights": False},
    }
    return OmegaConf.create({**base, **kw})


def test_accumulation_is_the_effective_batch_over_devices_and_must_divide():
    train = OmegaConf.create({"effective_batch_size": 128, "per_device_batch_size": 4})
    assert [accumulation_steps(train, w) for w in (1, 2, 4, 8, 32)] == [32, 16, 8, 4, 1]
    with pytest.raises(
        ValueError,
        match=r"effective_batch_size=128 is not a multiple of "
        r"per_device_batch_size x world size = 4 x 3 = 12",
    ):
        accumulation_steps(train, 3)
    with pytest.raises(ValueError, match="4 x 64 = 256"):
        accumulation_steps(train, 64)


def test_world_size_checks_strategy_and_counts():
    assert world_size(dist_cfg()) == 1
    assert world_size(dist_cfg(nproc_per_node="auto")) == max(1, torch.cuda.device_count())
    assert world_size(dist_cfg(nproc_per_node="4", nnodes=2, strategy="fsdp")) == 8
    with pytest.raises(ValueError, match="strategy=none; set strategy=ddp"):
        world_size(dist_cfg(nproc_per_node="2"))
    with pytest.raises(ValueError, match="strategy='zero9' is unknown"):
        world_size(dist_cfg(strategy="zero9"))
    with pytest.raises(ValueError, match="nproc_per_node='two'"):
        world_size(dist_cfg(nproc_per_node="two"))


def test_one_node_is_torchrun_standalone_and_several_are_srun_with_c10d(tmp_path):
    req = tmp_path / "request.json"
    cmd = command(dist_cfg(nproc_per_node="2", strategy="ddp"), req, env={})
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        "--standalone",
        "-m",
        "pipeline.train.training",
        str(req),
    ]
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "2"}
    cmd = command(
        dist_cfg(nproc_per_node="8", nnodes=2, strategy="fsdp", rdzv_endpoint="node01:29500"),
        req,
        env=env,
    )
    assert cmd[:6] == [
        "srun",
        "--overlap",  # beside the pipeline's own step (launcher=slurm), not waiting for it
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
    ]
    assert cmd[7:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=8",
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node01:29500",
        "--rdzv-id=77",
        "-m",
        "pipeline.train.training",
        str(req),
    ]
    # Two nodes asked inside a one-node allocation: refused, not two ranks crowded on one node.
    with pytest.raises(ValueError, match="this SLURM job has 1 node"):
        command(
            dist_cfg(nnodes=2, strategy="ddp", rdzv_endpoint="h:1"),
            req,
            env={"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "1"},
        )
    with pytest.raises(ValueError, match="runs under SLURM"):
        command(dist_cfg(nnodes=2, strategy="ddp"), req, env={})


@pytest.mark.parametrize("overrides", list(KEYS_BEFORE))
def test_one_process_keeps_the_keys_of_before(overrides):
    from pipeline.models.devices import resolve_precision

    cfg = composed(*overrides)
    resolve_precision(cfg, "cpu", bf16=False)  # as check_all does, on a CPU without native bf16
    assert tuple(finetune.key_of(cfg, spec) for spec in arm_specs(cfg)) == KEYS_BEFORE[overrides]


def test_one_process_trains_as_before_whatever_the_strategy_says():
    plain, ddp1 = composed(*SMOKE), composed(*SMOKE, "finetune.distributed.strategy=ddp")
    assert finetune.key_of(ddp1, arm_specs(ddp1)[0]) == finetune.key_of(plain, arm_specs(plain)[0])


def test_world_size_above_one_enters_the_key():
    cfg = composed(*SMOKE)
    one = finetune.key_of(cfg, arm_specs(cfg)[0])
    two = composed(*SMOKE, *DDP2)
    key_two = finetune.key_of(two, arm_specs(two)[0])
    assert key_two != one
    four = composed(
        *SMOKE,
        "finetune.distributed.nproc_per_node=4",
        "finetune.distributed.strategy=ddp",
        "finetune.effective_batch_size=16",
    )
    assert finetune.key_of(four, arm_specs(four)[0]) not in (one, key_two)


def test_fsdp_without_a_gpu_fails_in_the_check_naming_the_fix():
    cfg = composed(
        *SMOKE,
        "finetune.distributed.nproc_per_node=2",
        "finetune.distributed.strategy=fsdp",
        "finetune.effective_batch_size=8",
    )
    needs_no_cuda("FSDP can run")
    with pytest.raises(ValueError, match="strategy=fsdp needs CUDA GPUs.*strategy=ddp"):
        finetune.check(cfg)


# --- the real launcher on this CPU ------------------------------------------------------------

KILL_LAUNCHER = """
import os, signal
if os.environ.get("KILL_LAUNCHER_AT_STEP") and os.environ.get("RANK") == "0":
    import transformers
    _step = transformers.Trainer.training_step
    def _killing_step(self, *args, **kwargs):
        if self.state.global_step >= int(os.environ["KILL_LAUNCHER_AT_STEP"]):
            os.kill(os.getppid(), signal.SIGKILL)  # torchrun, the workers' launcher
            import time; time.sleep(30)  # the worker must notice by itself and exit
        return _step(self, *args, **kwargs)
    transformers.Trainer.training_step = _killing_step
"""


def train_ddp(store: Path, cfg=None):
    cfg = cfg or composed(*TINY, *DDP2, "noise=uniform")
    ctx = Context(Store(store), Store(store / "cache"))
    return [finetune.run(cfg, ctx, Call(spec, {})) for spec in arm_specs(cfg)], cfg, ctx


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train_ddp(tmp_path_factory.mktemp("ddp"))


def workers_of(request: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", str(request)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.e2e
def test_two_ddp_ranks_train_with_independent_noise_and_generate_loads_the_weights(uninterrupted):
    results, cfg, ctx = uninterrupted
    base, neft = (r.metrics for r in results)
    for m in (base, neft):
        assert m["world_size"] == 2 and m["strategy"] == "ddp" and m["train_steps"] == 24
    ranks = [json.loads((results[1].path / "launch" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    seeds = [r["noise_seed"] for r in ranks]
    assert seeds[0] != seeds[1]
    assert seeds == [rank_generator(cfg.finetune.seed, r).initial_seed() for r in (0, 1)]
    assert ranks[0]["noise_state_sha256"] != ranks[1]["noise_state_sha256"]
    spec = arm_specs(cfg)[1]
    gen = generate.run(cfg, ctx, Call(spec, {"finetune": results[1]}))
    outputs = json.loads((gen.path / "outputs.json").read_text())
    assert len(outputs) == gen.metrics["gen_n_outputs"] > 0


@pytest.mark.e2e
def test_sigkill_of_the_launcher_resumes_bit_identical(uninterrupted, tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_LAUNCHER)
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv("KILL_LAUNCHER_AT_STEP", "12")
    store = tmp_path / "store"
    cfg = composed(*TINY, *DDP2, "noise=uniform")
    spec = arm_specs(cfg)[1]  # the noised arm: data order and per-rank noise must be restored
    ctx = Context(Store(store), Store(store / "cache"))
    with pytest.raises(LaunchError, match="exited with code"):
        finetune.run(cfg, ctx, Call(spec, {}))
    partial = next(store.glob("finetune-*.partial"))
    assert (partial / "checkpoints" / "checkpoint-8" / "neftune_rng_rank1.pt").is_file()
    deadline = time.time() + 20
    while workers_of(partial / "launch" / "request.json") and time.time() < deadline:
        time.sleep(0.5)
    assert not workers_of(partial / "launch" / "request.json"), "orphaned workers still train"

    monkeypatch.delenv("KILL_LAUNCHER_AT_STEP")
    resumed = finetune.run(cfg, ctx, Call(spec, {}))
    fresh = uninterrupted[0][1]
    assert resumed.key == fresh.key
    assert resumed.metrics["resumed_from_step"] == 8
    got, want = (load_file(r.path / "model" / "model.safetensors") for r in (resumed, fresh))
    assert all(torch.equal(got[k], want[k]) for k in want) and got.keys() == want.keys()
    assert resumed.metrics["train_loss"] == fresh.metrics["train_loss"]
    ranks = [json.loads((r.path / "launch" / "rank1.json").read_text()) for r in (resumed, fresh)]
    assert ranks[0]["noise_state_sha256"] == ranks[1]["noise_state_sha256"]
