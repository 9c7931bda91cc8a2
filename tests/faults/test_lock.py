"""Stage lock under faults: many waiters racing to take over a dead holder's lock, a dead
takeover mutex, a holder whose lock was taken over (issue 13, defect 1)."""

import multiprocessing as mp
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.store.locking import StageLock
from pipeline.store.store import Store, StoreError

WAITERS = 4
HOLD_S = 0.003
POLL_S = 0.002


JUDGE_GAP_S = 0.002


def _judge_gap() -> None:
    # Between judging a lock dead and acting on it a waiter may stall (NFS round trips, a busy
    # CPU); a random gap makes the interleavings that matter show up within a few trials.
    time.sleep(random.uniform(0, JUDGE_GAP_S))


class SlowJudgeLock(StageLock):
    """StageLock with a random stall between judging the lock dead and taking it over."""

    def _take_over(self, dead: str) -> bool:
        _judge_gap()
        return super()._take_over(dead)


class NaiveTakeoverLock(StageLock):
    """The pre-fix takeover (same stall): rename whatever lock file exists by now."""

    def _take_over(self, dead: str) -> bool:
        _judge_gap()
        grave = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return True
        grave.unlink(missing_ok=True)
        return True


KINDS = {"plain": StageLock, "slow": SlowJudgeLock, "naive": NaiveTakeoverLock}


def _dead_token() -> str:
    """Token of a process of this host that has exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    return f"{socket.gethostname()}:{proc.pid}:dead"


def _record(log: Path, event: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def _waiter(base: str, trials: int, kind: str, barrier) -> None:
    for i in range(trials):
        trial = Path(base) / f"t{i}"
        barrier.wait(60)
        lock = KINDS[kind](trial / "k.lock", stale_after_s=60, heartbeat_s=5, poll_s=POLL_S)
        lock.acquire()
        _record(trial / "log", "enter")
        time.sleep(HOLD_S)
        _record(trial / "log", "exit")
        lock.release()
        barrier.wait(60)


def _most_holders(log: Path) -> tuple[int, list[int]]:
    """Most holders at once in a trial's enter/exit log, and the pids that entered."""
    depth, most, entered = 0, 0, []
    for line in log.read_text().splitlines():
        event, pid = line.split()
        depth += 1 if event == "enter" else -1
        most = max(most, depth)
        if event == "enter":
            entered.append(int(pid))
    return most, entered


def _race(base: Path, trials: int, kind: str) -> tuple[list[tuple[int, list[int]]], set[int]]:
    """`trials` takeovers of a dead holder's lock by WAITERS processes: per-trial (most holders
    at once, pids that entered), and the waiters' pids."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WAITERS + 1)
    procs = [
        ctx.Process(target=_waiter, args=(str(base), trials, kind, barrier)) for _ in range(WAITERS)
    ]
    for p in procs:
        p.start()
    outcomes = []
    try:
        for i in range(trials):
            trial = base / f"t{i}"
            trial.mkdir(parents=True)
            (trial / "k.lock").write_text(_dead_token())
            barrier.wait(60)  # all waiters start together
            barrier.wait(60)  # all waiters held and released the lock
            outcomes.append(_most_holders(trial / "log"))
            assert sorted(p.name for p in trial.iterdir()) == ["log"]  # no lock, mutex, grave
    finally:
        for p in procs:
            p.join(60)
    assert [p.exitcode for p in procs] == [0] * WAITERS
    return outcomes, {p.pid for p in procs}


@pytest.mark.parametrize("kind, trials", [("plain", 200), ("slow", 100)])
def test_many_waiters_take_over_a_dead_lock_one_at_a_time(tmp_path, kind, trials):
    outcomes, pids = _race(tmp_path, trials, kind)
    assert [most for most, _ in outcomes] == [1] * trials
    assert all(sorted(entered) == sorted(pids) for _, entered in outcomes)


def test_the_race_harness_catches_the_naive_takeover(tmp_path):
    outcomes, _ = _race(tmp_path, 40, "naive")
    overlapped = sum(most > 1 for most, _ in outcomes)
    print(f"naive takeover: {overlapped} of {len(outcomes)} trials had two holders")
    assert overlapped >= 1


def test_takeover_leaves_a_lock_that_changed_since_it_was_judged_dead(tmp_path):
    lock_path = tmp_path / "k.lock"
    dead = _dead_token()
    live = f"{socket.gethostname()}:{os.getpid()}:live"
    lock_path.write_text(live)  # a waiter re-created the lock after we judged `dead`
    waiter = StageLock(lock_path, stale_after_s=60, heartbeat_s=5, poll_s=POLL_S)
    assert waiter._take_over(dead)
    assert lock_path.read_text() == live
    assert not waiter.mutex.exists()


def test_a_takeover_mutex_left_by_a_dead_process_is_broken(tmp_path):
    lock_path = tmp_path / "k.lock"
    lock_path.write_text(_dead_token())
    mutex = lock_path.with_name("k.lock.takeover")
    mutex.write_text(_dead_token())
    lock = StageLock(lock_path, stale_after_s=3600, heartbeat_s=5, poll_s=0.05)
    started = time.time()
    lock.acquire()
    assert time.time() - started < 1
    assert lock.held() and not mutex.exists()
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_live_takeover_mutex_delays_takeover_until_it_is_stale(tmp_path):
    lock_path = tmp_path / "k.lock"
    lock_path.write_text(_dead_token())
    lock_path.with_name("k.lock.takeover").write_text("other-node:1:busy")
    lock = StageLock(lock_path, stale_after_s=0.5, heartbeat_s=5, poll_s=0.02)
    started = time.time()
    lock.acquire()
    assert 0.45 <= time.time() - started < 3
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_holder_notices_its_lock_was_taken_over_and_leaves_the_new_lock(tmp_path):
    lock_path = tmp_path / "k.lock"
    holder = StageLock(lock_path, stale_after_s=60, heartbeat_s=0.02)
    holder.acquire()
    assert holder.held()
    lock_path.unlink()
    lock_path.write_text("other-node:1:new-holder")
    time.sleep(0.1)
    assert holder._lost.is_set()  # seen by the heartbeat, not only by held()
    assert not holder.held()
    holder.release()
    assert lock_path.read_text() == "other-node:1:new-holder"


def test_the_store_does_not_publish_after_its_lock_was_taken_over(tmp_path):
    store = Store(tmp_path, lock_stale_after_s=60, lock_heartbeat_s=5)

    def compute(work: Path) -> dict:
        (work / "out.txt").write_text("mine")
        lock = tmp_path / "k.lock"
        lock.unlink()
        lock.write_text("other-node:1:new-holder")  # what a takeover leaves
        return {"v": 1}

    with pytest.raises(StoreError, match=r"stage k: lock .*k\.lock was taken over"):
        store.materialize("k", compute)
    assert not (tmp_path / "k").exists() and store.lookup("k") is None
    assert (tmp_path / "k.lock").read_text() == "other-node:1:new-holder"


# --- lock timing (issue 26, item 11) ------------------------------------------------------------


@pytest.mark.parametrize(
    "stale_after_s, heartbeat_s, rule",
    [
        (10, 15, r"must exceed 4 x paths\.lock_heartbeat_s"),  # a live holder loses its lock
        (59, 15, r"must exceed 4 x paths\.lock_heartbeat_s"),  # fewer than 4 beats of slack
        (300, 0, r"paths\.lock_heartbeat_s=0.*must be > 0"),  # the heartbeat thread spins
        (300, -1, r"paths\.lock_heartbeat_s=-1.*must be > 0"),
        (float("nan"), 15, r"paths\.lock_stale_after_s=nan"),
    ],
)
def test_lock_timing_that_cannot_keep_a_live_holder_is_refused(
    tmp_path, stale_after_s, heartbeat_s, rule
):
    with pytest.raises(ValueError, match=rule) as exc_info:
        Store(tmp_path / "store", stale_after_s, heartbeat_s)
    assert "paths.lock_stale_after_s" in str(exc_info.value)
    assert not (tmp_path / "store").exists()  # refused before any stage or lock


def test_the_refusal_says_why_four_heartbeats(tmp_path):
    with pytest.raises(ValueError) as exc_info:
        Store(tmp_path, lock_stale_after_s=20, lock_heartbeat_s=15)
    message = str(exc_info.value)
    assert "late" in message and "taken over" in message and "e.g." in message


@pytest.mark.parametrize("stale_after_s, heartbeat_s", [(300, 15), (60, 5), (60, 0.2), (61, 15)])
def test_lock_timing_with_room_for_late_beats_is_accepted(tmp_path, stale_after_s, heartbeat_s):
    store = Store(tmp_path, stale_after_s, heartbeat_s)
    assert store.materialize("k", lambda work: {"v": 1}).metrics == {"v": 1}
