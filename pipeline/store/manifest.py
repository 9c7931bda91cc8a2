"""A stage directory's manifest (size and sha256 of each of its files) and the check on reuse.

A stage is reused only when its COMPLETE marker names its own key and its MANIFEST.json lists
exactly the files it holds, each with its size (and, with a full check, its sha256). There is no
pass for a stage without a manifest: the stage being checked must not be able to switch its own
check off (deleting MANIFEST.json, emptying its list, or being another stage's copy or symlink).
A stage directory holds no symbolic links at all: a size check reads through a link, so a
subdirectory linked to another stage's (same file sizes, other weights) would pass it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MARKER = "COMPLETE"
METRICS = "metrics.json"
MANIFEST = "MANIFEST.json"


class Defect(Exception):
    """What is wrong with one file of a stage directory."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")


def sha256_of(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()  # streams: safe for large weights


LINK = "a symbolic link (a stage directory holds no links)"


def _files(stage_dir: Path) -> list[str]:
    """Relative paths of the stage's files, COMPLETE and the manifest left out; Defect on a link.

    Links are refused, not followed or skipped: rglob does not enter a linked directory (its
    files would look absent, not unlisted) while stat() reads through it (their sizes match)."""
    stage_dir = Path(stage_dir)
    rels = []
    # followlinks=False: a link to a directory is named in `dirs` but not entered.
    for top, dirs, files in os.walk(stage_dir):
        for name in sorted(dirs) + sorted(files):
            path = Path(top) / name
            rel = path.relative_to(stage_dir).as_posix()
            if path.is_symlink():
                raise Defect(rel, LINK)
            if name in files and path.is_file():
                rels.append(rel)
    return sorted(r for r in rels if r not in (MARKER, MANIFEST))


def manifest_of(stage_dir: Path) -> dict:
    """Size and sha256 of every file under `stage_dir` except COMPLETE and the manifest."""
    files = {}
    for rel in _files(stage_dir):
        path = Path(stage_dir) / rel
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    return {"version": 1, "files": files}


def _marked_key(stage_dir: Path) -> str:
    try:
        return str(json.loads((stage_dir / MARKER).read_text(encoding="utf-8"))["key"])
    except (OSError, ValueError, KeyError, TypeError):
        raise Defect(MARKER, "unreadable COMPLETE marker") from None


def _listed_files(stage_dir: Path) -> dict[str, tuple[int, str]]:
    """The manifest as {relative path: (size, sha256)}."""
    if not (stage_dir / MANIFEST).is_file():
        raise Defect(MANIFEST, "missing (a stage is reused only with its manifest)")
    try:
        files = json.loads((stage_dir / MANIFEST).read_text(encoding="utf-8"))["files"]
        return {rel: (int(f["size"]), str(f["sha256"])) for rel, f in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise Defect(MANIFEST, "unreadable MANIFEST.json") from None


def checked_metrics(stage_dir: Path, key: str, full: bool) -> dict:
    """The stage's metrics after checking its marker and files; raises Defect naming the first
    bad file."""
    marked = _marked_key(stage_dir)
    if marked != key:
        raise Defect(MARKER, f"names stage {marked}, not {key} (a copy or link of another stage)")
    listed = _listed_files(stage_dir)
    unlisted = sorted(set(_files(stage_dir)) - set(listed))
    if unlisted:
        raise Defect(unlisted[0], f"not in {MANIFEST}")
    for rel, (size, sha256) in listed.items():
        try:
            found = (stage_dir / rel).stat().st_size
        except FileNotFoundError:
            raise Defect(rel, "missing") from None
        if found != size:
            raise Defect(rel, f"size {found} != {size}")
        if full and sha256_of(stage_dir / rel) != sha256:
            raise Defect(rel, "sha256 mismatch")
    if METRICS not in listed:
        raise Defect(METRICS, f"not in {MANIFEST}")
    try:
        return json.loads((stage_dir / METRICS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Defect(METRICS, f"unreadable metrics.json ({type(exc).__name__})") from None
