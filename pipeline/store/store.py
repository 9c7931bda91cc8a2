"""Stage store: content-addressed, atomically published, lock-protected, checked stage directories.

Layout under the store root::

    <key>/                  finished stage (published by one rename, COMPLETE inside)
    <key>/COMPLETE          {"key": <key>, "started_at", "finished_at", "wall_s", "device"}: a
                            stage names its own key and records what its computation cost
    <key>/MANIFEST.json     size and sha256 of the stage's other files, written before COMPLETE
    <key>.<tag>.partial/    work in progress of one lock holder (pipeline.store.workdirs)
    <key>.lock              lock file (see pipeline.store.locking)
    <key>.corrupt-<time>/   a stage that failed its check, moved aside (never deleted)

A reused stage is checked (pipeline.store.manifest): its marker names its key, its manifest lists
exactly its files, sizes match (sha256 too with ``verify="full"``). One that fails, or has no
manifest, is moved aside and recomputed.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.logs import get_logger
from pipeline.store.atomic import write_json_atomic, write_text_atomic
from pipeline.store.keys import readable_of, stage_key
from pipeline.store.locking import StageLock
from pipeline.store.manifest import MANIFEST, MARKER, METRICS, Defect, checked_metrics, manifest_of
from pipeline.store.workdirs import claim_work, discard, publish, remove_unfinished

LOG = get_logger("store")

__all__ = [
    "MANIFEST",
    "MARKER",
    "METRICS",
    "StageLock",
    "StageResult",
    "Store",
    "StoreError",
    "is_complete",
    "readable_of",
    "stage_key",
    "write_json_atomic",
    "write_text_atomic",
]

VERIFY_MODES = ("size", "full")
# A lock's heartbeats per stale_after (see Store.__post_init__): a waiter reads a mtime up to one
# heartbeat old even from a punctual holder, so each beat beyond the first tolerates one beat that
# comes late or is lost (a busy CPU starving the heartbeat thread, a slow or attribute-caching
# shared filesystem) without a live holder's stage being taken over mid-compute.
MIN_HEARTBEATS_PER_STALE = 4
# Below this much free space (or 1% of a small filesystem) a failed compute is blamed on the disk.
LOW_SPACE_BYTES = 16 << 20


class StoreError(RuntimeError):
    """A stage could not be computed or published for a reason the user has to fix."""


@dataclass(frozen=True)
class StageResult:
    """A finished stage: its key, directory, metrics, whether it was reused from the store, and
    the seconds materialize took (a computed stage: its computation, lock wait included; a reused
    one: finding and checking it): what the console's line per stage says."""

    key: str
    path: Path
    metrics: dict
    reused: bool
    seconds: float = 0.0


def is_complete(stage_dir: Path) -> bool:
    """Whether the stage directory was marked complete (its COMPLETE marker exists)."""
    return (Path(stage_dir) / MARKER).is_file()


def held_accelerators() -> dict:
    """The accelerators the computing process held: {"kind": "cuda"|"cpu", "count": GPUs}.

    Read from torch only when the stage has imported it (the store never imports torch itself);
    a stage that ran in a worker process without importing torch here is judged by
    CUDA_VISIBLE_DEVICES. GPUs held count as used: a job is billed for what it holds."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return {"kind": "cuda", "count": int(torch.cuda.device_count())}
    except Exception:  # noqa: BLE001  (a broken CUDA setup is no reason to lose the stage)
        pass
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if torch is None and visible and visible != ["-1"]:
        return {"kind": "cuda", "count": len(visible)}
    return {"kind": "cpu", "count": 0}


def _free_bytes(where: Path) -> tuple[int, int] | None:
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return None
    return usage.free, usage.total


@contextmanager
def _full_disk_reported(key: str, where: Path) -> Iterator[None]:
    """Re-raise an error that came from a full filesystem at `where` as a StoreError."""
    try:
        yield
    except Exception as exc:
        space = _free_bytes(where)
        # Libraries often hide ENOSPC (torch: "unexpected pos 64 vs 0"): ask the filesystem too.
        full = space is not None and space[0] < min(LOW_SPACE_BYTES, space[1] // 100)
        if not full and getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = "?" if space is None else space[0]
        raise StoreError(
            f"stage {key}: no space left in {where} ({free} bytes free); free "
            "space there or move paths.store to a larger filesystem"
        ) from exc


@dataclass(frozen=True)
class Store:
    """A stage store rooted at `root` (config: paths.store).

    `verify`: how a reused stage is checked against its manifest: "size" (every file is there
    with its size; cheap) or "full" (sha256 of every file too).
    """

    root: Path
    lock_stale_after_s: float = 300.0
    lock_heartbeat_s: float = 15.0
    tracker: Any = None  # pipeline.tracking.tracker.Tracker: a W&B run around every computed stage
    verify: str = "size"

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"Store verify={self.verify!r}: use 'size' (default) or 'full'")
        _check_lock_timing(self.lock_stale_after_s, self.lock_heartbeat_s)

    def path(self, key: str) -> Path:
        """Directory of the finished stage `key` (whether or not it exists)."""
        return Path(self.root) / key

    def lookup(self, key: str) -> StageResult | None:
        """The finished stage `key`, or None; a stage failing its check is moved aside first."""
        stage_dir = self.path(key)
        try:
            inode = stage_dir.stat().st_ino
        except FileNotFoundError:
            return None
        if not is_complete(stage_dir):
            return None
        try:
            metrics = checked_metrics(stage_dir, key, full=self.verify == "full")
        except Defect as defect:
            self._quarantine(key, inode, defect)
            return None
        return StageResult(key, stage_dir, metrics, reused=True)

    def _quarantine(self, key: str, inode: int, defect: Defect) -> None:
        stage_dir = self.path(key)
        aside = stage_dir.with_name(f"{key}.corrupt-{datetime.now():%Y%m%d-%H%M%S-%f}")
        try:
            # Only the directory we checked: another process may have moved it aside and
            # published a fresh one meanwhile.
            if stage_dir.stat().st_ino != inode:
                return
            os.rename(stage_dir, aside)
        except FileNotFoundError:
            return
        LOG.warning(
            "stage %s is corrupt (%s); moved aside to %s; it will be recomputed", key, defect, aside
        )

    def _compute(self, key: str, compute: Callable[[Path], dict], work: Path, config) -> dict:
        if self.tracker is None:
            metrics = compute(work)
        else:
            with self.tracker.stage_run(key, config) as run:
                metrics = compute(work)
                self.tracker.record(run, metrics, work)
        write_json_atomic(work / METRICS, metrics)
        try:
            manifest = manifest_of(work)
        except Defect as defect:  # a link: the stage could not be checked on reuse
            raise StoreError(
                f"stage {key}: {defect}; a stage writes only regular files into its directory"
            ) from None
        write_json_atomic(work / MANIFEST, manifest)
        return metrics

    def materialize(
        self,
        key: str,
        compute: Callable[[Path], dict],
        resumable: bool = False,
        config: dict | None = None,
    ) -> StageResult:
        """The finished stage `key`, computed with `compute(workdir) -> metrics` if needed.

        `compute` writes only into `workdir`, a directory of this lock holder's own. With
        `resumable`, the work of a killed holder is adopted (finetune resumes from its
        checkpoints); otherwise it is wiped. `config` (the stage's own config) is what the
        tracker records for the run.
        Raises StoreError when the filesystem is full or the lock was taken over meanwhile.
        """
        started = time.monotonic()
        result = self._materialize(key, compute, resumable, config)
        return replace(result, seconds=round(time.monotonic() - started, 3))

    def _materialize(self, key, compute, resumable: bool, config) -> StageResult:
        hit = self.lookup(key)
        if hit is not None:
            return hit
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        lock = StageLock(root / f"{key}.lock", self.lock_stale_after_s, self.lock_heartbeat_s)
        with _full_disk_reported(key, root):
            lock.acquire(on_wait=lambda: LOG.info("waiting for another process computing %s", key))
        try:
            hit = self.lookup(key)
            if hit is not None:
                return hit
            with _full_disk_reported(key, root):
                work = claim_work(root, key, lock.tag, resumable)
            # Claiming moved every earlier holder's work dir: none can publish from here on.
            hit = self.lookup(key)
            if hit is not None:
                discard(work)
                return hit
            remove_unfinished(self.path(key))
            return self._compute_and_publish(key, compute, work, lock, resumable, config)
        finally:
            lock.release()

    def _compute_and_publish(
        self, key, compute, work: Path, lock: StageLock, resumable: bool, config
    ) -> StageResult:
        try:
            with _full_disk_reported(key, work):
                started = time.time()
                metrics = self._compute(key, compute, work, config)
                if not lock.held():
                    raise _lost(key, lock, self.lock_stale_after_s)
                finished = time.time()
                # The cost of this computation (a resumed finetune: of this attempt only), for
                # the report's cost section; outside the manifest, so checks are unchanged.
                write_json_atomic(
                    work / MARKER,
                    {
                        "key": key,
                        "started_at": started,
                        "finished_at": finished,
                        "wall_s": round(finished - started, 3),
                        "device": held_accelerators(),
                    },
                )
            published = publish(work, self.path(key))
        except BaseException as exc:
            if not lock.held():
                # Taken over: the work dir may be the new holder's by now (adopted) or our own
                # again (recreated by our writes); only our own name is removed.
                discard(work)
                if isinstance(exc, StoreError):
                    raise
                raise _lost(key, lock, self.lock_stale_after_s) from exc
            if not resumable:
                discard(work)
            raise
        if not published:
            # Our name was gone (a new holder adopted our work) or the key was published by a
            # holder that took over from us: either way the published stage is not ours.
            discard(work)
            hit = self.lookup(key)
            if hit is None:
                raise _lost(key, lock, self.lock_stale_after_s)
            return hit
        return StageResult(key, self.path(key), metrics, reused=False)


def _check_lock_timing(stale_after_s: float, heartbeat_s: float) -> None:
    """Refuse lock timing that cannot keep a live holder (before any stage or lock is made)."""
    keys = f"paths.lock_stale_after_s={stale_after_s:g}, paths.lock_heartbeat_s={heartbeat_s:g}"
    fix = "e.g. paths.lock_stale_after_s=300 paths.lock_heartbeat_s=15 (the defaults)"
    if not heartbeat_s > 0:
        raise ValueError(
            f"{keys}: paths.lock_heartbeat_s={heartbeat_s:g} must be > 0 (seconds between a "
            f"holder's refreshes of its lock; 0 spins its heartbeat thread); {fix}"
        )
    if not stale_after_s > MIN_HEARTBEATS_PER_STALE * heartbeat_s:
        raise ValueError(
            f"{keys}: paths.lock_stale_after_s must exceed {MIN_HEARTBEATS_PER_STALE} x "
            f"paths.lock_heartbeat_s ({MIN_HEARTBEATS_PER_STALE * heartbeat_s:g} s). A holder "
            "refreshes its lock every heartbeat and a waiter takes over a lock not refreshed "
            "for lock_stale_after_s, so a live holder whose beats come late (a busy CPU, a slow "
            "shared filesystem) would have its stage taken over mid-compute; "
            f"{MIN_HEARTBEATS_PER_STALE} beats leave room for {MIN_HEARTBEATS_PER_STALE - 1} "
            f"late ones. Raise paths.lock_stale_after_s or lower paths.lock_heartbeat_s, {fix}"
        )


def _lost(key: str, lock: StageLock, stale_after_s: float) -> StoreError:
    # A holder whose heartbeat went stale was taken over; the new holder owns the stage now and
    # publishing our work would race with (or clobber) its own.
    return StoreError(
        f"stage {key}: lock {lock.path} was taken over by another process while "
        f"computing (no heartbeat for {stale_after_s} s); not publishing"
    )
