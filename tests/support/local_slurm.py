"""A local SLURM cluster for the tests (Debian's slurm-wlm + munge, started by
scripts/local_slurm.sh), and the stages a job finished in a store."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def local_cluster(nodes: int, **settings: str):
    """Start a local cluster (scripts/local_slurm.sh) with `nodes` slurmds, each with 4
    placeholder GPUs (GPU requests are scheduled for real) and 8 CPUs; yield the environment
    that talks to it, and stop exactly its daemons afterwards."""
    state = tempfile.mkdtemp(
        prefix="slurm", dir="/tmp"
    )  # short: slurmd's socket paths must fit 108 bytes
    script = str(ROOT / "scripts" / "local_slurm.sh")
    conf = dict(
        os.environ,
        LOCAL_SLURM_NODES=str(nodes),
        LOCAL_SLURM_GPUS="4",
        LOCAL_SLURM_CPUS="8",
        **settings,
    )
    started = subprocess.run(
        ["bash", script, "start", state], capture_output=True, text=True, timeout=120, env=conf
    )
    assert started.returncode == 0, started.stderr
    env = dict(
        os.environ,
        SLURM_CONF=f"{state}/slurm.conf",
        PATH=f"{state}/bin:{os.environ['PATH']}",
        PYTHON=sys.executable,
    )
    daemons = [int(p) for p in Path(state, "pids").read_text().split()]
    assert len(daemons) == 2 + nodes  # munged, slurmctld, a slurmd per node
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
    """The stage directories of store marked COMPLETE, sorted by name."""
    return sorted(p for p in store.glob(f"{stage}-*") if (p / "COMPLETE").is_file())
