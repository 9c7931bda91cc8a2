"""Stage locks that work across processes and across hosts sharing a filesystem (NFS included).

Protocol (no flock; every file is created with O_CREAT|O_EXCL, which is atomic locally and on
NFSv3+):

* ``<key>.lock`` holds its holder's token ``host:pid:uuid``; whoever creates it holds the stage
  and touches it every ``heartbeat_s``.
* A holder is dead when it ran on this host and its pid is gone, or, from any host, when the
  lock's mtime is older than ``stale_after_s``.
* The lock file is only ever removed by the process holding ``<key>.lock.takeover`` (created
  the same way): a waiter that judged the lock dead takes that mutex, re-reads the lock and
  removes it only if it still carries the very token it judged dead and still looks dead. The
  holder's own release goes through the mutex as well, so no read-then-remove meets a newer lock.
* A holder whose lock was taken over sees a foreign token at its next heartbeat or ``held()``
  call; the store checks ``held()`` before publishing.

On NFS the mtime is the server's and clients cache attributes (acregmax, 60 s by default), so
keep ``stale_after_s`` well above ``heartbeat_s`` plus that cache time.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.store.workdirs import new_tag

HOST = socket.gethostname()


def _read(path: Path) -> tuple[str, float] | None:
    """(token, mtime) of one and the same file, or None when there is none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(), os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return None


def _create(path: Path, token: str) -> bool:
    """Create `path` holding `token` if it does not exist; True if this call created it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token)
    except BaseException:
        os.unlink(path)  # an empty file would look held until it goes stale
        raise
    return True


def is_dead(token: str, mtime: float, stale_after_s: float) -> bool:
    """Whether the holder behind a lock file with this token and mtime is gone."""
    parts = token.split(":")
    if len(parts) == 3 and parts[0] == HOST:
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            pass  # alive under another user, or not a pid: only the heartbeat can tell
    # A live local pid may be a reused one, so a stale heartbeat still counts.
    return time.time() - mtime > stale_after_s


class StageLock:
    """Exclusive lock on one stage key; safe across processes and hosts sharing a filesystem."""

    def __init__(self, path: Path, stale_after_s: float, heartbeat_s: float, poll_s: float = 0.5):
        self.path = Path(path)
        self.mutex = self.path.with_name(self.path.name + ".takeover")
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex}"
        self.tag = ""  # set at each acquisition: names the holder's work dir (core.workdirs)

    @contextmanager
    def _takeover_mutex(self) -> Iterator[bool]:
        """Yield whether this process got the takeover mutex (one try; breaks a dead one)."""
        got = _create(self.mutex, self._token)
        if not got:
            seen = _read(self.mutex)
            if seen is not None and is_dead(*seen, self.stale_after_s):
                self._break_mutex(seen[0])
                got = _create(self.mutex, self._token)
        try:
            yield got
        finally:
            seen = _read(self.mutex) if got else None
            if seen is not None and seen[0] == self._token:
                self.mutex.unlink()

    def _break_mutex(self, dead: str) -> None:
        # Residual risk: the mutex lives for milliseconds, so this runs only after a process was
        # killed inside that window. If two breakers race here, the rename may move a mutex a
        # second breaker has just created; we put it back (link fails if a third one exists
        # already) and every mutex holder re-reads the mutex before removing a lock. Two lock
        # holders then need yet another interleaving within microseconds of that.
        grave = self.mutex.with_name(f"{self.mutex.name}.dead.{uuid.uuid4().hex}")
        try:
            os.rename(self.mutex, grave)
        except FileNotFoundError:
            return
        moved = _read(grave)
        if moved is not None and moved[0] != dead:
            try:
                os.link(grave, self.mutex)
            except OSError:
                pass
        grave.unlink(missing_ok=True)

    def _remove_if(self, keep: Callable[[tuple[str, float]], bool]) -> bool:
        """Under the mutex, remove the lock file unless `keep(token, mtime)`; False if busy."""
        with self._takeover_mutex() as got:
            if not got:
                return False
            seen = _read(self.path)
            mine = _read(self.mutex)
            if seen is not None and not keep(seen) and mine is not None and mine[0] == self._token:
                self.path.unlink()
            return True

    def _take_over(self, dead: str) -> bool:
        """Remove the lock if it still carries the dead holder's token; False if busy."""
        stale = self.stale_after_s
        return self._remove_if(lambda seen: seen[0] != dead or not is_dead(*seen, stale))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            seen = _read(self.path)
            if seen is None or seen[0] != self._token:
                self._lost.set()
                return
            # Between the read and utime a takeover may swap the file: touching a live holder's
            # lock is harmless, and the next beat sees the foreign token.
            try:
                os.utime(self.path)
            except FileNotFoundError:
                pass

    def acquire(self, on_wait: Callable[[], None] | None = None) -> None:
        """Block until this process holds the lock, taking over locks of dead holders."""
        waited = False
        while not _create(self.path, self._token):
            seen = _read(self.path)
            if seen is None:
                continue  # released between our create and read
            if is_dead(*seen, self.stale_after_s) and self._take_over(seen[0]):
                continue
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(self.poll_s)
        self.tag = new_tag()
        self._stop.clear()
        self._lost.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether the lock file still carries this holder's token (False once taken over)."""
        if self._lost.is_set():
            return False
        seen = _read(self.path)
        return seen is not None and seen[0] == self._token

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        while True:
            try:
                if self._remove_if(lambda seen: seen[0] != self._token):
                    return
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # No room even for the mutex (full disk): check and remove without it. That can
                # only meet a newer lock if we were judged dead at this very moment too.
                seen = _read(self.path)
                if seen is not None and seen[0] == self._token:
                    self.path.unlink()
                return
            time.sleep(self.poll_s)

    def __enter__(self) -> StageLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
