"""SLURM on a real local cluster of two nodes (two slurmds of this host, started by
scripts/local_slurm.sh): slurm/finetune_multinode.sbatch trains through srun + torchrun c10d."""

import json
import subprocess
import time

import pytest

from tests.support.composed import SMOKE
from tests.support.local_slurm import ROOT, finished, local_cluster
from tests.support.skips import needs_slurm

TINY = [*SMOKE, "logger=disabled"]
pytestmark = [pytest.mark.e2e, needs_slurm]


@pytest.fixture()
def two_nodes():
    """Two nodes (two slurmds of this host), on ports of their own beside test_slurm.py's
    `cluster`. Only the multinode test uses them: this slurm build has no multiple-slurmd
    support, so a batch step placed on the second node may not be told its srun step ended."""
    yield from local_cluster(2, LOCAL_SLURM_CTLD_PORT="6837", LOCAL_SLURM_SLURMD_PORT="6838")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multinode_sbatch_trains_through_srun_torchrun_c10d(two_nodes, tmp_path):
    """slurm/finetune_multinode.sbatch on 2 nodes: the pipeline in the batch step, its finetune
    as `srun` + one torchrun per node meeting over c10d (both nodes are slurmds of this host)."""
    cluster = two_nodes
    store = tmp_path / "store"
    store.mkdir()
    cmd = [
        "sbatch",
        "--parsable",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=1",
        "--mem=2G",
        f"--output={store}/slurm-%j.out",
        "slurm/finetune_multinode.sbatch",
        *TINY,
        "openllm=none",
        "calibration.enabled=false",
        "finetune.distributed.strategy=ddp",
        "finetune.distributed.nnodes=2",
        "finetune.effective_batch_size=8",
        f"finetune.distributed.rdzv_port={free_port()}",
        "experiment.name=multinode",
        f"paths.store={store}",
        f"paths.results={store}/results",
    ]
    job = subprocess.run(cmd, cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=60)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip()
    deadline = time.time() + 900
    while (
        time.time() < deadline
        and subprocess.run(
            ["squeue", "-h", "-j", job_id], env=cluster, capture_output=True, text=True
        ).stdout.strip()
    ):
        time.sleep(1)
    log = (store / f"slurm-{job_id}.out").read_text()
    assert "done in" in log, log[-3000:]
    assert "--nnodes=2 --rdzv-backend=c10d" in log and f"--rdzv-id={job_id}" in log
    # both arms' fine-tunes: one torchrun per node, with the job's CPUs (no GPUs asked here)
    srun = "srun --overlap --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=1 --kill"
    assert log.count(srun) == 2
    for ft in finished(store, "finetune"):
        metrics = json.loads((ft / "metrics.json").read_text())
        assert (metrics["world_size"], metrics["train_steps"]) == (2, 24)
        ranks = [json.loads((ft / "launch" / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["pid"] != ranks[1]["pid"]
    assert len(finished(store, "finetune")) == 2 and len(finished(store, "generate")) == 2
    assert (store / "results" / "multinode" / "REPORT.md").is_file()
