"""How a fine-tune is spread over processes: world size, batch arithmetic, the torchrun launch.

The pipeline process owns the stage store; a fine-tune on more than one process runs as
`torchrun ... -m pipeline.train.training <request.json>` (one node), or under SLURM on several
nodes as `srun --overlap --nodes=N --ntasks-per-node=1 torchrun --nnodes=N --rdzv-backend=c10d
...`, a subprocess that writes only inside the stage's work directory. torchrun, not a launcher
of our own: it does rendezvous, worker restarts and signal forwarding the way every cluster
recipe expects.

Run: python -m pipeline.run finetune.distributed.nproc_per_node=2 finetune.distributed.strategy=ddp
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.logs import get_logger, log_tail
from pipeline.models.devices import visible_cuda_gpus

LOG = get_logger("finetune")

STRATEGIES = ("none", "ddp", "fsdp")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class LaunchError(RuntimeError):
    """The training workers failed; the message quotes their log."""


def nproc_per_node(dist_cfg) -> int:
    """Processes per node: a number, or `auto` = the CUDA GPUs visible here (1 without one)."""
    value = str(dist_cfg.nproc_per_node).strip().lower()
    if value == "auto":
        return max(1, visible_cuda_gpus())
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"finetune.distributed.nproc_per_node={dist_cfg.nproc_per_node!r}: "
            "give a number >= 1 or auto (one process per visible GPU)"
        )
    return int(value)


def world_size(dist_cfg) -> int:
    """Processes in all: nproc_per_node x nnodes, after checking the strategy fits them."""
    if dist_cfg.strategy not in STRATEGIES:
        raise ValueError(
            f"finetune.distributed.strategy={dist_cfg.strategy!r} is unknown; use "
            f"one of {STRATEGIES}"
        )
    if dist_cfg.nnodes < 1:
        raise ValueError(f"finetune.distributed.nnodes={dist_cfg.nnodes} must be >= 1")
    world = nproc_per_node(dist_cfg) * dist_cfg.nnodes
    if world > 1 and dist_cfg.strategy == "none":
        raise ValueError(
            f"finetune.distributed: {world} processes with strategy=none; set "
            "strategy=ddp (a full copy per GPU) or fsdp (sharded)"
        )
    return world


def accumulation_steps(train_cfg, world: int) -> int:
    """effective_batch_size / (per-device batch x world size), which must divide exactly."""
    for key in ("per_device_batch_size", "effective_batch_size"):  # named, not a ZeroDivision
        if getattr(train_cfg, key) < 1:
            raise ValueError(f"finetune.{key}={getattr(train_cfg, key)}: must be >= 1")
    per_step = train_cfg.per_device_batch_size * world
    steps, rest = divmod(train_cfg.effective_batch_size, per_step)
    if rest or steps < 1:
        raise ValueError(
            f"finetune.effective_batch_size={train_cfg.effective_batch_size} is not a multiple "
            f"of per_device_batch_size x world size = {train_cfg.per_device_batch_size} x "
            f"{world} = {per_step}; change one of them so that it divides"
        )
    return steps


def distributed_key_params(dist_cfg, world: int) -> dict:
    """What of the launch enters the finetune key: nothing for one process (it trains in the
    pipeline process, whatever the strategy says: keys as before), the world size and sharding
    settings otherwise (they change data order and numerics)."""
    if world == 1:
        return {}
    params = {"world_size": world, "strategy": str(dist_cfg.strategy)}  # plain str, not Enum
    if dist_cfg.strategy == "fsdp":
        params["fp32_master_weights"] = dist_cfg.fsdp.fp32_master_weights
    return params


def _first_slurm_host(env: dict) -> str:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    done = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.split()[0]


def _env_int(env: dict, *names: str) -> int | None:
    """The first of SLURM's variables `names` that is set, as an int (None when none is)."""
    for name in names:
        value = str(env.get(name) or "").split("(")[0].strip()  # "8(x2)" in some variables
        if value.isdigit():
            return int(value)
    return None


def check_allocation(dist_cfg, env: dict | None = None) -> None:
    """Refuse, before any work, a launch the process's resources cannot hold: more nodes than
    the SLURM job has, or more processes per node than the GPUs this node really has (SLURM's
    SLURM_GPUS_ON_NODE, CUDA's visible count). A run without any GPU (CPU, gloo) is not
    limited: there the processes share the CPUs."""
    env = dict(os.environ if env is None else env)
    nproc, nnodes = nproc_per_node(dist_cfg), dist_cfg.nnodes
    keys = (
        f"finetune.distributed.nproc_per_node={dist_cfg.nproc_per_node} x "
        f"finetune.distributed.nnodes={nnodes}"
    )
    if nnodes > 1 and env.get("SLURM_JOB_ID"):
        nodes = _env_int(env, "SLURM_JOB_NUM_NODES", "SLURM_NNODES") or 1
        if nnodes > nodes:
            raise ValueError(
                f"{keys}: this SLURM job has {nodes} node(s) "
                f"(SLURM_JOB_NUM_NODES={nodes}); submit it on {nnodes} nodes "
                "(launcher=slurm sizes each job from its point, or sbatch "
                f"--nodes={nnodes}) or set finetune.distributed.nnodes={nodes}"
            )
    slurm_gpus = _env_int(env, "SLURM_GPUS_ON_NODE")
    cuda = visible_cuda_gpus()
    have = [n for n in (slurm_gpus, cuda) if n]  # 0 or unknown: not a GPU count to hold to
    if have and nproc > min(have):
        raise ValueError(
            f"{keys}: {nproc} processes per node, one per GPU, but this node has {min(have)} "
            f"GPU(s) (SLURM_GPUS_ON_NODE={slurm_gpus}, CUDA visible: {cuda}); submit the point "
            "with launcher=slurm (it requests finetune.distributed.nproc_per_node GPUs per node) "
            "or lower finetune.distributed.nproc_per_node"
        )


def command(dist_cfg, request: Path, env: dict | None = None) -> list[str]:
    """The launch command: torchrun on this node, or srun + torchrun over SLURM's nodes (one
    torchrun per node, with the node's CPUs and GPUs passed explicitly: since SLURM 22.05 srun
    no longer inherits the job's --cpus-per-task, and a step gets only the GPUs it asks for)."""
    env = dict(os.environ if env is None else env)
    nproc, nnodes = nproc_per_node(dist_cfg), dist_cfg.nnodes
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    worker = ["-m", "pipeline.train.training", str(request)]
    if nnodes == 1:
        return torchrun + ["--nnodes=1", "--standalone"] + worker
    job = env.get("SLURM_JOB_ID")
    if not job:
        raise ValueError(
            f"finetune.distributed.nnodes={nnodes} runs under SLURM (srun starts one "
            "torchrun per node): submit slurm/finetune_multinode.sbatch, or set "
            "nnodes=1"
        )
    check_allocation(dist_cfg, env)
    endpoint = dist_cfg.rdzv_endpoint or f"{_first_slurm_host(env)}:{dist_cfg.rdzv_port}"
    # --overlap: this process may itself run in a step that holds every CPU and all memory of
    # its node (launcher=slurm starts the pipeline with srun); since SLURM 20.11 a step shares
    # nothing with other steps unless one says so, and this one would wait until the job's
    # time limit. The pipeline waits while the workers train, so sharing costs nothing.
    srun = ["srun", "--overlap", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1"]
    cpus = _env_int(env, "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE")
    if cpus:
        srun.append(f"--cpus-per-task={cpus}")
    if _env_int(env, "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):  # a GPU job: one per rank
        srun.append(f"--gpus-per-node={nproc}")
    rdzv = [
        f"--nnodes={nnodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={job}",
    ]
    return srun + ["--kill-on-bad-exit=1"] + torchrun + rdzv + worker


def _die_with_parent() -> None:
    """In the launcher's child before exec: SIGKILL it when the pipeline process dies, so that
    no orphaned torchrun keeps training in a .partial directory another run will resume."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_workers(dist_cfg, request: Path, log: Path) -> None:
    """Launch the workers on `request`, wait for them; LaunchError quoting `log` on failure."""
    cmd = command(dist_cfg, request)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(PROJECT_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
    )
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, said once instead of warned
    LOG.info("%d processes: %s", world_size(dist_cfg), " ".join(cmd))
    LOG.info("worker log: %s", log)
    with open(log, "a", encoding="utf-8") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(PROJECT_ROOT),
            preexec_fn=_die_with_parent,
        )
        (log.parent / "launcher.pid").write_text(str(proc.pid))
        try:
            code = proc.wait()
        except BaseException:
            proc.terminate()  # torchrun forwards SIGTERM to its workers
            proc.wait()
            raise
    if code != 0:
        raise LaunchError(
            f"training workers exited with code {code}; the stage is not done "
            f"and resumes from its last checkpoint when rerun. " + log_tail(log)
        )
