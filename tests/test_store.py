"""Stage store: reuse, atomic publish, completion marker, lock across processes, stale-lock
takeover."""

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from pipeline.store import locking
from pipeline.store.store import MARKER, StageLock, Store, stage_key


def test_key_is_readable_and_depends_on_params_inputs_and_version():
    k = stage_key("finetune", "tiny_default_base", {"lr": 1e-4}, ["a"], 1)
    assert k.startswith("finetune-tiny_default_base-")
    assert k == stage_key("finetune", "tiny_default_base", {"lr": 1e-4}, ["a"], 1)
    assert k != stage_key("finetune", "tiny_default_base", {"lr": 2e-4}, ["a"], 1)
    assert k != stage_key("finetune", "tiny_default_base", {"lr": 1e-4}, ["b"], 1)
    assert k != stage_key("finetune", "tiny_default_base", {"lr": 1e-4}, ["a"], 2)


def test_store_is_built_positionally_as_callers_do_and_verify_comes_last(tmp_path):
    store = Store(tmp_path, 60.0, 5.0, None)
    assert (store.lock_stale_after_s, store.lock_heartbeat_s, store.verify) == (60.0, 5.0, "size")
    assert Store(tmp_path, 60.0, 5.0, None, "full").verify == "full"
    assert StageLock is locking.StageLock  # still importable from the store


def test_second_materialize_reuses_without_computing(tmp_path):
    store = Store(tmp_path)
    calls = []

    def compute(work: Path) -> dict:
        calls.append(work)
        (work / "out.txt").write_text("hello")
        return {"value": 3}

    first = store.materialize("k1", compute)
    second = store.materialize("k1", compute)
    assert len(calls) == 1
    assert not first.reused and second.reused
    assert second.metrics == {"value": 3}
    assert (second.path / "out.txt").read_text() == "hello"
    assert (second.path / MARKER).is_file()
    assert not (tmp_path / "k1.partial").exists() and not (tmp_path / "k1.lock").exists()


def test_failed_compute_publishes_nothing_and_is_recomputed(tmp_path):
    store = Store(tmp_path)

    def broken(work: Path) -> dict:
        (work / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.materialize("k", broken)
    assert not (tmp_path / "k").exists()
    assert store.lookup("k") is None
    assert not (tmp_path / "k.lock").exists()

    seen = []

    def good(work: Path) -> dict:
        seen.append(sorted(p.name for p in work.iterdir()))
        return {"ok": 1}

    assert store.materialize("k", good).metrics == {"ok": 1}
    assert seen == [[]]  # a non-resumable stage starts from an empty work dir


def test_resumable_stage_gets_its_partial_work_back(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "k.partial").mkdir(parents=True)
    (tmp_path / "k.partial" / "checkpoint").write_text("step 10")
    got = store.materialize(
        "k", lambda w: {"resumed": (w / "checkpoint").read_text()}, resumable=True
    )
    assert got.metrics == {"resumed": "step 10"}


def test_directory_without_marker_is_recomputed(tmp_path):
    store = Store(tmp_path)
    stale = tmp_path / "k"
    stale.mkdir()
    (stale / "metrics.json").write_text(json.dumps({"value": "stale"}))
    assert store.lookup("k") is None
    result = store.materialize("k", lambda w: {"value": "fresh"})
    assert result.metrics == {"value": "fresh"} and not result.reused
    assert json.loads((tmp_path / "k" / "metrics.json").read_text()) == {"value": "fresh"}


def _slow_worker(root: str, counter: str, barrier) -> None:
    store = Store(Path(root), lock_stale_after_s=60, lock_heartbeat_s=0.2)

    def compute(work: Path) -> dict:
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        return {"pid": os.getpid()}

    barrier.wait()
    store.materialize("shared", compute)


def test_two_processes_compute_a_stage_once(tmp_path):
    counter = tmp_path / "calls.txt"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    args = (str(tmp_path / "store"), str(counter), barrier)
    procs = [ctx.Process(target=_slow_worker, args=args) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(counter.read_text().split()) == 1


def test_lock_of_a_dead_local_process_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    lock_path = tmp_path / "k.lock"
    lock_path.write_text(f"{socket.gethostname()}:{dead.pid}:x")
    lock = StageLock(lock_path, stale_after_s=3600, heartbeat_s=1, poll_s=0.05)
    started = time.time()
    lock.acquire()
    assert time.time() - started < 2
    assert lock_path.read_text() != f"{socket.gethostname()}:{dead.pid}:x"
    lock.release()
    assert not lock_path.exists()


def test_lock_held_by_another_host_is_taken_over_only_when_its_heartbeat_is_stale(tmp_path):
    lock_path = tmp_path / "k.lock"
    lock_path.write_text("other-node:1234:x")
    fresh = StageLock(lock_path, stale_after_s=0.6, heartbeat_s=1, poll_s=0.05)
    started = time.time()
    fresh.acquire()
    waited = time.time() - started
    assert 0.4 <= waited < 5  # waited for the heartbeat to go stale, then took over
    fresh.release()


def test_heartbeat_keeps_a_live_lock_fresh(tmp_path):
    lock_path = tmp_path / "k.lock"
    holder = StageLock(lock_path, stale_after_s=0.5, heartbeat_s=0.1)
    holder.acquire()
    os.utime(lock_path, (time.time() - 10, time.time() - 10))
    time.sleep(0.3)
    assert time.time() - lock_path.stat().st_mtime < 0.5
    holder.release()
