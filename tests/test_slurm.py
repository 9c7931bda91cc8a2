"""SLURM on a real local cluster (Debian's slurm-wlm + munge, started by scripts/local_slurm.sh):
the alpha_grid sweep as a job array through hydra-submitit-launcher and through slurm/sweep_array.sbatch,
and a task requeued mid-finetune (scontrol requeue) that resumes without duplicating the baseline."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "finetune=tiny", "generate=tiny", "judge=local_tiny", "logger=disabled"]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("slurmctld") is None,
                       reason="SLURM is not installed (apt-get install slurmctld slurmd slurm-client munge)"),
]


@pytest.fixture(scope="module")
def cluster():
    """Environment for talking to a local cluster started for this module; its daemons are stopped after."""
    state = tempfile.mkdtemp(prefix="slurm", dir="/tmp")  # short: slurmd's socket paths must fit 108 bytes
    script = str(ROOT / "scripts" / "local_slurm.sh")
    started = subprocess.run(["bash", script, "start", state], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    env = dict(os.environ, SLURM_CONF=f"{state}/slurm.conf", PATH=f"{state}/bin:{os.environ['PATH']}", PYTHON=sys.executable)
    daemons = [int(p) for p in Path(state, "pids").read_text().split()]
    assert len(daemons) == 3  # munged, slurmctld, slurmd
    try:
        yield env
    finally:
        subprocess.run(["bash", script, "stop", state], capture_output=True, text=True, timeout=120)
        alive = [pid for pid in daemons if _running(pid)]
        shutil.rmtree(state, ignore_errors=True)
        assert not alive, f"daemons still running after stop: {alive}"


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status  # a zombie has exited; PID 1 reaps it later


def finished(store: Path, stage: str) -> list[Path]:
    return sorted(p for p in store.glob(f"{stage}-*") if (p / "COMPLETE").is_file())


def assert_sweep_done(store: Path, experiment: str, alphas: list[int]) -> None:
    finetunes = finished(store, "finetune")
    assert len(finetunes) == len(alphas) and sum("_base-" in p.name for p in finetunes) == 1  # baseline once
    assert not list(store.glob("*.partial")) and not list(store.glob("*.lock"))
    grid = (store / "results" / experiment / "noise_grid.md").read_text()
    assert "| base |" in grid and all(f"| neft-uniform{a} |" in grid for a in alphas if a)


def test_submitit_launcher_runs_the_alpha_grid_as_one_array(cluster, tmp_path):
    store = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "sweep=alpha_grid", "launcher=slurm", *TINY,
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
         "hydra.launcher.array_parallelism=2", "hydra.launcher.timeout_min=20",
         f"paths.store={store}", f"paths.results={store}/results"],
        cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_sweep_done(store, "alpha_grid", [0, 5, 10, 15])
    logs = list((store / "submitit").rglob("*_log.out"))
    assert len(logs) == 4  # four array tasks ran under SLURM


def sbatch_array(env: dict, store: Path, tasks: str, *overrides: str, wait: bool) -> str:
    cmd = ["sbatch", "--parsable", f"--array={tasks}", "--cpus-per-task=1", "--mem=2G",
           f"--output={store}/slurm-%A_%a.out", *(["--wait"] if wait else []),
           "slurm/sweep_array.sbatch", "sweep=alpha_grid", *TINY, *overrides,
           f"paths.store={store}", f"paths.results={store}/results"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:] + "".join(p.read_text()[-2000:] for p in store.glob("slurm-*.out"))
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
    job = sbatch_array(cluster, store, "0-1", "finetune.max_steps=600", "finetune.save_steps=20", wait=False)

    deadline, victim = time.time() + 600, None
    while time.time() < deadline and victim is None:
        for ckpt in store.glob("finetune-*.partial/checkpoints/checkpoint-*/trainer_state.json"):
            lock = store / (ckpt.parents[2].name.removesuffix(".partial") + ".lock")
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
    requeue = subprocess.run(["scontrol", "requeue", f"{job}_{victim[0]}"], env=cluster, capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr

    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job], env=cluster, capture_output=True, text=True).stdout.strip()
        if not queue:
            break
        time.sleep(1)
    log = (store / f"slurm-{job}_{victim[0]}.out").read_text()
    assert "restart 1" in log  # the requeued task ran again
    assert_sweep_done(store, "alpha_grid", [0, 5])
    killed = victim[1].removesuffix(".partial")
    metrics = json.loads((store / killed / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 20 and metrics["train_steps"] == 600


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multinode_sbatch_trains_through_srun_torchrun_c10d(cluster, tmp_path):
    """slurm/finetune_multinode.sbatch with 2 tasks: the pipeline in the batch step, its finetune
    as `srun` + one torchrun per task meeting over c10d (here both tasks on this one node)."""
    store = tmp_path / "store"
    store.mkdir()
    cmd = ["sbatch", "--parsable", "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--mem=4G",
           f"--output={store}/slurm-%j.out", "slurm/finetune_multinode.sbatch", *TINY,
           "openllm=none", "calibration.enabled=false", "finetune.distributed.strategy=ddp",
           "finetune.distributed.nnodes=2", "finetune.effective_batch_size=8",
           f"finetune.distributed.rdzv_port={free_port()}", "experiment.name=multinode",
           f"paths.store={store}", f"paths.results={store}/results"]
    job = subprocess.run(cmd, cwd=ROOT, env=cluster, capture_output=True, text=True, timeout=60)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip()
    deadline = time.time() + 900
    while time.time() < deadline and subprocess.run(
            ["squeue", "-h", "-j", job_id], env=cluster, capture_output=True, text=True
    ).stdout.strip():
        time.sleep(1)
    log = (store / f"slurm-{job_id}.out").read_text()
    assert "done in" in log, log[-3000:]
    assert f"--nnodes=2 --rdzv-backend=c10d" in log and f"--rdzv-id={job_id}" in log
    assert log.count("srun --ntasks=2") == 2  # both arms' fine-tunes
    for ft in finished(store, "finetune"):
        metrics = json.loads((ft / "metrics.json").read_text())
        assert (metrics["world_size"], metrics["train_steps"]) == (2, 24)
        ranks = [json.loads((ft / "launch" / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["pid"] != ranks[1]["pid"]
    assert len(finished(store, "finetune")) == 2 and len(finished(store, "generate")) == 2
    assert (store / "results" / "multinode" / "REPORT.md").is_file()
