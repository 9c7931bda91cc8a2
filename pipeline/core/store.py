"""Stage store: content-addressed, atomically published, lock-protected stage directories.

Layout under the store root::

    <key>/              finished stage (published by rename), holds COMPLETE last
    <key>.partial/      work in progress of the lock holder (finetune checkpoints live here)
    <key>.lock          lock file (created with O_EXCL, refreshed by a heartbeat)

The lock is a plain file created with O_CREAT|O_EXCL and kept fresh by touching it, which
works on NFS-like shared filesystems where flock does not. A lock whose holder died is
taken over: at once when the holder was a process on this host that no longer exists,
otherwise when its heartbeat is older than ``stale_after_s``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MARKER = "COMPLETE"
METRICS = "metrics.json"


@dataclass(frozen=True)
class StageResult:
    """A finished stage: its key, directory, metrics and whether it was reused from the store."""

    key: str
    path: Path
    metrics: dict
    reused: bool


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(stage: str, readable: str, params: dict, inputs: list[str], version: int) -> str:
    """Key = readable name + short hash of the stage's own config, its inputs' keys and its version."""
    digest = hashlib.sha256(
        _canonical({"stage": stage, "params": params, "inputs": sorted(inputs), "version": version}).encode()
    ).hexdigest()[:12]
    safe = "".join(c if (c.isalnum() or c in "-_.") else "-" for c in readable)
    return f"{stage}-{safe}-{digest}"


def readable_of(key: str) -> str:
    """The readable part of a stage key (`<stage>-<readable>-<hash>` -> `<readable>`)."""
    return key.split("-", 1)[1].rsplit("-", 1)[0]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file beside `path` and rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def is_complete(stage_dir: Path) -> bool:
    return (Path(stage_dir) / MARKER).is_file()


class StageLock:
    """Exclusive lock on one stage key; safe across processes and hosts sharing a filesystem."""

    def __init__(self, path: Path, stale_after_s: float, heartbeat_s: float, poll_s: float = 0.5):
        self.path = Path(path)
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(self._token)
        return True

    def _holder_is_dead(self) -> bool:
        try:
            token = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        parts = token.split(":")
        if len(parts) == 3 and parts[0] == socket.gethostname():
            try:
                os.kill(int(parts[1]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                pass
        return age > self.stale_after_s

    def _break_stale(self) -> None:
        # Rename first: of several waiters only one rename succeeds, so only one breaks the lock.
        grave = self.path.with_name(f"{self.path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        grave.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def acquire(self, on_wait: Callable[[], None] | None = None) -> None:
        waited = False
        while not self._try_create():
            if self._holder_is_dead():
                self._break_stale()
                continue
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(self.poll_s)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self.path.read_text() == self._token:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "StageLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass(frozen=True)
class Store:
    """A stage store rooted at `root` (config: paths.store)."""

    root: Path
    lock_stale_after_s: float = 300.0
    lock_heartbeat_s: float = 15.0
    tracker: Any = None  # pipeline.core.tracking.Tracker: a W&B run around every stage that is computed

    def path(self, key: str) -> Path:
        return Path(self.root) / key

    def lookup(self, key: str) -> StageResult | None:
        stage_dir = self.path(key)
        if not is_complete(stage_dir):
            return None
        metrics = json.loads((stage_dir / METRICS).read_text())
        return StageResult(key, stage_dir, metrics, reused=True)

    def materialize(
        self,
        key: str,
        compute: Callable[[Path], dict],
        resumable: bool = False,
        config: dict | None = None,
    ) -> StageResult:
        """Return the finished stage `key`, computing it with `compute(workdir) -> metrics` if needed.

        `compute` writes only into `workdir`. With `resumable`, a workdir left by a killed run is
        handed to the next attempt (finetune resumes from its checkpoints); otherwise it is wiped.
        `config` (the stage's own config) is what the tracker records for the run.
        """
        hit = self.lookup(key)
        if hit is not None:
            return hit
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        lock = StageLock(root / f"{key}.lock", self.lock_stale_after_s, self.lock_heartbeat_s)
        lock.acquire(on_wait=lambda: print(f"[store] waiting for another process computing {key}", flush=True))
        try:
            hit = self.lookup(key)
            if hit is not None:
                return hit
            final = self.path(key)
            if final.exists():
                # Published but never marked complete (killed between rename and marker): not trusted.
                shutil.rmtree(final)
            work = root / f"{key}.partial"
            if work.exists() and not resumable:
                shutil.rmtree(work)
            work.mkdir(exist_ok=True)
            if self.tracker is None:
                metrics = compute(work)
            else:
                with self.tracker.stage_run(key, config) as run:
                    metrics = compute(work)
                    self.tracker.record(run, metrics, work)
            write_json_atomic(work / METRICS, metrics)
            os.rename(work, final)
            write_json_atomic(final / MARKER, {"key": key, "finished_at": time.time()})
            return StageResult(key, final, metrics, reused=False)
        finally:
            lock.release()
