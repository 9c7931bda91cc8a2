"""A two-node point through launcher=slurm on a real local cluster (two slurmds of this host,
scripts/local_slurm.sh), issue 27: the pipeline runs once, in one task on the job's first node,
and its finetune's `srun ... torchrun` step starts beside that task's step (--overlap) instead of
waiting, until the job's time limit, for the CPUs and memory the pipeline's own step holds (SLURM
>= 20.11 steps share nothing without --overlap)."""

import json
import subprocess
import sys

import pytest

from tests.support.composed import SMOKE
from tests.support.local_slurm import ROOT, finished, local_cluster
from tests.support.skips import needs_slurm

TINY = [*SMOKE, "logger=disabled"]
pytestmark = [pytest.mark.e2e, needs_slurm]
# The launch takes ~3 min on 2 busy cores; a nested step that waits for resources waits until
# the job's time limit (JOB_MINUTES), so the launcher never returns within this.
LAUNCH_TIMEOUT_S = 480
JOB_MINUTES = 15


@pytest.fixture()
def two_nodes():
    """Two nodes on ports of their own (test_slurm.py and test_slurm_multinode.py use others);
    every job of the cluster is cancelled before its daemons stop, so no training outlives it."""
    for env in local_cluster(2, LOCAL_SLURM_CTLD_PORT="6857", LOCAL_SLURM_SLURMD_PORT="6858"):
        try:
            yield env
        finally:
            jobs = subprocess.run(
                ["squeue", "-h", "-o", "%A"], env=env, capture_output=True, text=True
            ).stdout.split()
            if jobs:
                subprocess.run(["scancel", *jobs], env=env, capture_output=True, timeout=60)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stuck(env: dict, store) -> str:
    """The job steps slurmctld runs, and what srun said in the pipeline's logs (a nested step
    that waits for resources: "Step creation temporarily disabled ... Requested nodes are busy")."""
    running = subprocess.run(
        ["squeue", "-s", "-h", "-o", "%i %j %N"], env=env, capture_output=True, text=True
    ).stdout
    said = [
        f"{p.name}: {line}"
        for p in sorted(store.glob("submitit/**/*_log.*"))
        for line in p.read_text(errors="replace").splitlines()
        if "srun" in line
    ]
    return f"steps:\n{running}srun in the logs:\n" + "\n".join(said[-20:])


def test_a_two_node_point_through_the_launcher_runs_the_pipeline_once_and_its_srun_finetune(
    two_nodes, tmp_path
):
    """finetune.distributed.nnodes=2 through launcher=slurm: one pipeline process (one task,
    one submitit log), whose finetune's `srun --overlap` step trains on both nodes, and the
    launch returns with every stage done instead of waiting until the time limit."""
    cluster, store = two_nodes, tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run",
        "-m",
        *TINY,
        "launcher=slurm",
        "openllm=none",
        "calibration.enabled=false",
        "finetune.distributed.strategy=ddp",
        "finetune.distributed.nnodes=2",
        "finetune.effective_batch_size=8",
        f"finetune.distributed.rdzv_port={free_port()}",
        "experiment.name=nested",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.process_mem_gb=0.5",
        f"hydra.launcher.timeout_min={JOB_MINUTES}",
        "hydra.launcher.max_num_timeout=0",
        f"paths.store={store}",
        f"paths.results={store}/results",
    ]
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the launch did not return within {LAUNCH_TIMEOUT_S} s; {stuck(cluster, store)}"
        )
    assert done.returncode == 0, done.stderr[-3000:]
    logs = sorted((store / "submitit").rglob("*_log.out"))
    assert len(logs) == 1, [p.name for p in logs]  # one task ran the pipeline, not one per node
    text = logs[0].read_text() + logs[0].with_name(logs[0].name[:-3] + "err").read_text()
    assert text.count("srun --overlap --nodes=2 --ntasks=2 --ntasks-per-node=1") == 2, text[-3000:]
    finetunes = finished(store, "finetune")
    assert len(finetunes) == 2 and len(finished(store, "generate")) == 2
    for ft in finetunes:
        metrics = json.loads((ft / "metrics.json").read_text())
        assert metrics["world_size"] == 2
        hosts = [json.loads((ft / "launch" / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert hosts[0]["pid"] != hosts[1]["pid"]
    assert (store / "results" / "nested" / "REPORT.md").is_file()
