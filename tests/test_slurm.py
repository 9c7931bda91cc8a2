"""SLURM on a real local cluster (Debian's slurm-wlm + munge, started by scripts/local_slurm.sh):
the alpha_grid sweep as a job array through hydra-submitit-launcher and through
slurm/sweep_array.sbatch, a task requeued mid-finetune (scontrol requeue) that resumes
without duplicating the baseline, and one array per job shape (two nodes: test_slurm_multinode)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.composed import SMOKE
from tests.support.local_slurm import finished, local_cluster
from tests.support.skips import needs_slurm

ROOT = Path(__file__).resolve().parents[1]
TINY = [*SMOKE, "logger=disabled"]
pytestmark = [pytest.mark.e2e, needs_slurm]


@pytest.fixture(scope="module")
def cluster():
    """One node for this module's tests."""
    yield from local_cluster(1)


def assert_sweep_done(store: Path, experiment: str, alphas: list[int]) -> None:
    finetunes = finished(store, "finetune")
    assert (
        len(finetunes) == len(alphas) and sum("_base-" in p.name for p in finetunes) == 1
    )  # baseline once
    assert not list(store.glob("*.partial")) and not list(store.glob("*.lock"))
    grid = (store / "results" / experiment / "noise_grid.md").read_text()
    assert "| base |" in grid and all(f"| neft-uniform{a} |" in grid for a in alphas if a)


def test_submitit_launcher_runs_the_alpha_grid_as_one_array(cluster, tmp_path):
    store = tmp_path / "store"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.run",
            "sweep=alpha_grid",
            "launcher=slurm",
            *TINY,
            "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2",
            "hydra.launcher.array_parallelism=2",
            "hydra.launcher.timeout_min=20",
            f"paths.store={store}",
            f"paths.results={store}/results",
        ],
        cwd=ROOT,
        env=cluster,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_sweep_done(store, "alpha_grid", [0, 5, 10, 15])
    logs = list((store / "submitit").rglob("*_log.out"))
    assert len(logs) == 4  # four array tasks ran under SLURM


def sbatch_array(env: dict, store: Path, tasks: str, *overrides: str, wait: bool) -> str:
    cmd = [
        "sbatch",
        "--parsable",
        f"--array={tasks}",
        "--cpus-per-task=1",
        "--mem=2G",
        f"--output={store}/slurm-%A_%a.out",
        *(["--wait"] if wait else []),
        "slurm/sweep_array.sbatch",
        "sweep=alpha_grid",
        *TINY,
        *overrides,
        f"paths.store={store}",
        f"paths.results={store}/results",
    ]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:] + "".join(
        p.read_text()[-2000:] for p in store.glob("slurm-*.out")
    )
    return result.stdout.strip().split(";")[0]


def test_sbatch_array_script_runs_every_point(cluster, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    sbatch_array(cluster, store, "0-3", wait=True)
    assert_sweep_done(store, "alpha_grid", [0, 5, 10, 15])


def array_task_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    values = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
    return values.get("SLURM_ARRAY_TASK_ID")


def test_requeued_task_resumes_its_finetune_without_a_duplicate_baseline(cluster, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    # Points alpha 0 and 5 both need the baseline; long enough to be caught mid-training.
    job = sbatch_array(
        cluster, store, "0-1", "finetune.max_steps=600", "finetune.save_steps=20", wait=False
    )

    deadline, victim = time.time() + 600, None
    while time.time() < deadline and victim is None:
        for ckpt in store.glob("finetune-*.partial/checkpoints/checkpoint-*/trainer_state.json"):
            # <key>.partial or <key>.<tag>.partial (keys have no dots): the lock is <key>.lock
            lock = store / (ckpt.parents[2].name.split(".", 1)[0] + ".lock")
            try:
                pid = int(lock.read_text().split(":")[1])
            except (OSError, IndexError, ValueError):
                continue
            task = array_task_of(pid)
            if task is not None:
                victim = (task, ckpt.parents[2].name)
                break
        time.sleep(0.2)
    assert victim, "no finetune reached a checkpoint"
    requeue = subprocess.run(
        ["scontrol", "requeue", f"{job}_{victim[0]}"], env=cluster, capture_output=True, text=True
    )
    assert requeue.returncode == 0, requeue.stderr

    while time.time() < deadline:
        queue = subprocess.run(
            ["squeue", "-h", "-j", job], env=cluster, capture_output=True, text=True
        ).stdout.strip()
        if not queue:
            break
        time.sleep(1)
    log = (store / f"slurm-{job}_{victim[0]}.out").read_text()
    assert "restart 1" in log  # the requeued task ran again
    assert_sweep_done(store, "alpha_grid", [0, 5])
    killed = victim[1].split(".", 1)[0]
    metrics = json.loads((store / killed / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 20 and metrics["train_steps"] == 600


def pending_arrays(env: dict, count: int, timeout: float) -> list[str]:
    """The ids of `count` pending array jobs, once slurmctld has them all."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ids = sorted(
            set(
                subprocess.run(
                    ["squeue", "-h", "-t", "PD", "-o", "%F"],
                    env=env,
                    capture_output=True,
                    text=True,
                ).stdout.split()
            ),
            key=int,
        )
        if len(ids) >= count:
            return ids
        time.sleep(1)
    raise AssertionError(f"{count} arrays not submitted within {timeout} s")


def test_the_launcher_sizes_each_job_and_slurm_gets_one_array_per_shape(cluster, tmp_path):
    """Points of 1, 4 and 1 GPUs through launcher=slurm: two arrays, whose resources slurmctld
    records as asked (held, so nothing runs; the launcher is stopped once they are seen)."""
    store = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run",
        "-m",
        *TINY,
        "launcher=slurm",
        "finetune.distributed.nproc_per_node=1,4,1",
        "finetune.distributed.strategy=ddp",
        "finetune.per_device_batch_size=1",
        "finetune.effective_batch_size=8",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.cpus_per_gpu=2",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.process_mem_gb=0.5",
        "hydra.launcher.node_gpus=4",
        "+hydra.launcher.additional_parameters.hold=true",
        f"paths.store={store}",
        f"paths.results={store}/results",
    ]
    launcher = subprocess.Popen(
        cmd, cwd=ROOT, env=cluster, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        arrays = pending_arrays(cluster, 2, 300)
        shown = {
            a: subprocess.run(
                ["scontrol", "show", "job", a], env=cluster, capture_output=True, text=True
            ).stdout
            for a in arrays
        }
    finally:
        launcher.terminate()
        launcher.wait(timeout=60)
        subprocess.run(["scancel", *[a for a in locals().get("arrays", [])]], env=cluster)
    one, four = (shown[a] for a in arrays)  # submitted in order of first appearance
    assert "ArrayTaskId=0-1" in one and "TresPerNode=gres:gpu:1" in one  # points #0 and #2
    assert "TRES=cpu=2,mem=1G,node=1" in one and "NumNodes=1" in one
    assert "TresPerNode=gres:gpu:4" in four  # point #1 (submitit submits a lone job plainly)
    assert "TRES=cpu=8,mem=3G,node=1" in four  # 2 CPUs per GPU; 0.5 GB x 5 processes
