"""Work directories of stage lock holders: one per holder, adopted by rename, published by rename.

A holder computes in ``<key>.<tag>.partial`` where `tag` is unique to its lock acquisition and
sorts by acquisition time. A new holder adopts the newest work dir of a dead (or taken-over)
holder by renaming it to its own name, and moves every other one out of the way by rename before
deleting it: after that the old holder's writes by path land in a directory of its own name
(recreated by them, removed by it when it sees it lost the lock), and its publishing rename finds
no directory. Publishing is one rename of the holder's own directory, COMPLETE already inside, onto
``<key>``; it fails when the key exists. So a holder that lost its lock can neither publish nor
touch the new holder's files through their names.

Residual risk: a file the old holder had open while it was frozen is still written through that
descriptor after the adoption; only its pending write() calls, within one checkpoint save.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from pipeline.store.manifest import MANIFEST, MARKER

SUFFIX = ".partial"


def new_tag() -> str:
    """A work-dir tag: acquisition time first (newest sorts last), then random."""
    return f"w{time.time_ns():020d}{uuid.uuid4().hex[:8]}"


def work_dirs(root: Path, key: str) -> list[Path]:
    """Work dirs of `key`, oldest first (the single `<key>.partial` of older versions first)."""
    own = re.compile(re.escape(key) + r"(\.w\d{20}[0-9a-f]{8})?" + re.escape(SUFFIX))
    found = [p for p in Path(root).iterdir() if own.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name[len(key) :])


def discard(path: Path) -> None:
    """Remove a work dir: renamed first, so that its owner's rename of it fails at once rather
    than publishing a half-deleted directory."""
    grave = path.with_name(f"{path.name}.discarded-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    shutil.rmtree(grave, ignore_errors=True)


def claim_work(root: Path, key: str, tag: str, resumable: bool) -> Path:
    """This holder's work dir: the newest one left by an earlier holder renamed to ours when
    `resumable`, else an empty one; every other work dir of `key` removed."""
    mine = Path(root) / f"{key}.{tag}{SUFFIX}"
    found = work_dirs(root, key)
    if resumable:
        for candidate in reversed(found):
            try:
                os.rename(candidate, mine)
            except FileNotFoundError:
                continue  # its owner cleaned up or published just now
            # Its publishing files are rewritten when the stage completes.
            for name in (MARKER, MANIFEST):
                (mine / name).unlink(missing_ok=True)
            found.remove(candidate)
            break
    for other in found:
        discard(other)
    for grave in Path(root).glob(f"{glob.escape(key)}*{SUFFIX}.discarded-*"):
        shutil.rmtree(grave, ignore_errors=True)  # of a remover that was killed
    mine.mkdir(exist_ok=True)
    return mine


def publish(work: Path, final: Path) -> bool:
    """Rename `work` (COMPLETE inside) onto `final`; False when `work` is gone or `final`
    exists."""
    try:
        os.rename(work, final)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            return False
        raise
    return True


def remove_unfinished(final: Path) -> None:
    """Remove a `<key>` entry without COMPLETE: published by an older version that was killed
    between its rename and its marker, or a link or file someone put there."""
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.is_dir():
        shutil.rmtree(final)
