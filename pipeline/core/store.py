"""Stage store: content-addressed, atomically published, lock-protected, checked stage directories.

Layout under the store root::

    <key>/                  finished stage (published by rename), holds COMPLETE last
    <key>/MANIFEST.json     size and sha256 of the stage's other files, written before COMPLETE
    <key>.partial/          work in progress of the lock holder (finetune checkpoints live here)
    <key>.lock              lock file (see pipeline.core.locking)
    <key>.corrupt-<time>/   a stage that failed its manifest check, moved aside (never deleted)

A reused stage is checked against its manifest: sizes by default, sha256 too with
``verify="full"``. One that fails is moved aside and recomputed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.core.locking import StageLock

__all__ = [
    "MANIFEST", "MARKER", "METRICS", "StageLock", "StageResult", "Store", "StoreError",
    "is_complete", "readable_of", "stage_key", "write_json_atomic", "write_text_atomic",
]

MARKER = "COMPLETE"
METRICS = "metrics.json"
MANIFEST = "MANIFEST.json"
VERIFY_MODES = ("size", "full")
# Below this much free space (or 1% of a small filesystem) a failed compute is blamed on the disk.
LOW_SPACE_BYTES = 16 << 20


class StoreError(RuntimeError):
    """A stage could not be computed or published for a reason the user has to fix."""


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
    """Key = readable name + short hash of the stage's config, its inputs' keys and its version."""
    own = {"stage": stage, "params": params, "inputs": sorted(inputs), "version": version}
    digest = hashlib.sha256(_canonical(own).encode()).hexdigest()[:12]
    safe = "".join(c if (c.isalnum() or c in "-_.") else "-" for c in readable)
    return f"{stage}-{safe}-{digest}"


def readable_of(key: str) -> str:
    """The readable part of a stage key (`<stage>-<readable>-<hash>` -> `<readable>`)."""
    return key.split("-", 1)[1].rsplit("-", 1)[0]


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` at once: readers see the old or the new file, never a torn one."""
    path = Path(path)
    # Unique per writer (even across hosts), so concurrent writers never share or remove a temp.
    tmp = path.with_name(f".{path.name[:200]}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to `path` atomically (see write_text_atomic)."""
    write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False))


def is_complete(stage_dir: Path) -> bool:
    """Whether the stage directory was marked complete (its COMPLETE marker exists)."""
    return (Path(stage_dir) / MARKER).is_file()


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()  # streams: safe for large weights


def manifest_of(stage_dir: Path) -> dict:
    """Size and sha256 of every file under `stage_dir` except COMPLETE and the manifest."""
    files = {}
    for path in sorted(p for p in Path(stage_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(stage_dir).as_posix()
        if rel not in (MARKER, MANIFEST):
            files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return {"version": 1, "files": files}


class _Defect(Exception):
    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")


def _listed_files(stage_dir: Path) -> dict[str, tuple[int, str]] | None:
    """The manifest as {relative path: (size, sha256)}; None for a stage without one."""
    if not (stage_dir / MANIFEST).is_file():
        return None
    try:
        files = json.loads((stage_dir / MANIFEST).read_text(encoding="utf-8"))["files"]
        return {rel: (int(f["size"]), str(f["sha256"])) for rel, f in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise _Defect(MANIFEST, "unreadable MANIFEST.json") from None


def _checked_metrics(stage_dir: Path, full: bool) -> tuple[dict, bool]:
    """(metrics, whether there was a manifest) after checking the stage's files against it.

    Raises _Defect naming the first bad file.
    """
    listed = _listed_files(stage_dir)
    for rel, (size, sha256) in (listed or {}).items():
        try:
            found = (stage_dir / rel).stat().st_size
        except FileNotFoundError:
            raise _Defect(rel, "missing") from None
        if found != size:
            raise _Defect(rel, f"size {found} != {size}")
        if full and _sha256(stage_dir / rel) != sha256:
            raise _Defect(rel, "sha256 mismatch")
    try:
        metrics = json.loads((stage_dir / METRICS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _Defect(METRICS, f"unreadable metrics.json ({type(exc).__name__})") from None
    return metrics, listed is not None


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
        raise StoreError(f"stage {key}: no space left in {where} ({free} bytes free); free "
                         "space there or move paths.store to a larger filesystem") from exc


@dataclass(frozen=True)
class Store:
    """A stage store rooted at `root` (config: paths.store).

    `verify`: how a reused stage is checked against its manifest: "size" (every file is there
    with its size; cheap) or "full" (sha256 of every file too).
    """

    root: Path
    lock_stale_after_s: float = 300.0
    lock_heartbeat_s: float = 15.0
    tracker: Any = None  # pipeline.core.tracking.Tracker: a W&B run around every computed stage
    verify: str = "size"

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"Store verify={self.verify!r}: use 'size' (default) or 'full'")

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
            metrics, checked = _checked_metrics(stage_dir, full=self.verify == "full")
        except _Defect as defect:
            self._quarantine(key, inode, defect)
            return None
        if not checked:
            print(f"[store] stage {key} has no {MANIFEST} (written by an older version): "
                  "reused without checking its files", flush=True)
        return StageResult(key, stage_dir, metrics, reused=True)

    def _quarantine(self, key: str, inode: int, defect: _Defect) -> None:
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
        print(f"[store] stage {key} is corrupt ({defect}); moved aside to {aside}; "
              "it will be recomputed", flush=True)

    def _compute(self, key: str, compute: Callable[[Path], dict], work: Path, config) -> dict:
        if self.tracker is None:
            metrics = compute(work)
        else:
            with self.tracker.stage_run(key, config) as run:
                metrics = compute(work)
                self.tracker.record(run, metrics, work)
        write_json_atomic(work / METRICS, metrics)
        write_json_atomic(work / MANIFEST, manifest_of(work))
        return metrics

    def materialize(
        self,
        key: str,
        compute: Callable[[Path], dict],
        resumable: bool = False,
        config: dict | None = None,
    ) -> StageResult:
        """The finished stage `key`, computed with `compute(workdir) -> metrics` if needed.

        `compute` writes only into `workdir`. With `resumable`, a workdir left by a killed run is
        handed to the next attempt (finetune resumes from its checkpoints); otherwise it is wiped.
        `config` (the stage's own config) is what the tracker records for the run.
        Raises StoreError when the filesystem is full or the lock was taken over meanwhile.
        """
        hit = self.lookup(key)
        if hit is not None:
            return hit
        root = Path(self.root)
        root.mkdir(parents=True, exist_ok=True)
        lock = StageLock(root / f"{key}.lock", self.lock_stale_after_s, self.lock_heartbeat_s)
        with _full_disk_reported(key, root):
            lock.acquire(on_wait=lambda: print(
                f"[store] waiting for another process computing {key}", flush=True))
        try:
            hit = self.lookup(key)
            if hit is not None:
                return hit
            final = self.path(key)
            if final.exists():
                # Published but never marked complete (killed between rename and marker).
                shutil.rmtree(final)
            work = root / f"{key}.partial"
            if work.exists() and not resumable:
                shutil.rmtree(work)
            work.mkdir(exist_ok=True)
            with _full_disk_reported(key, work):
                metrics = self._compute(key, compute, work, config)
            if not lock.held():
                # A holder whose heartbeat went stale was taken over; the new holder owns the
                # stage now and publishing our work would race with (or clobber) its own.
                raise StoreError(
                    f"stage {key}: lock {lock.path} was taken over by another process while "
                    f"computing (no heartbeat for {self.lock_stale_after_s} s); not publishing")
            os.rename(work, final)
            write_json_atomic(final / MARKER, {"key": key, "finished_at": time.time()})
            return StageResult(key, final, metrics, reused=False)
        finally:
            lock.release()
