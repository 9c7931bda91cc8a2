"""Where the judge-calibration pairs come from (calibration.pairs), resolved to local files.

  <name>@<commit>      a published source of pipeline/assets/calibration_sources.yaml (default:
                       alpaca_eval's GPT-4 verdicts): its files from the store cache
                       (<paths.cache>/calibration/<name>-<commit>/) when each has its pinned
                       sha256, else copied there from a local copy the spec names (e.g.
                       ../shared/data beside a checkout), else downloaded there (urllib, atomic,
                       sha256-checked). `<name>` alone means its pinned commit.
  <file or folder>     a local annotation file, or every *.json in a folder, used as it is.

No download is tried where HF_HUB_OFFLINE is set: that is how pipeline.prefetch tells compute jobs
they are offline. Prefetch itself downloads (pipeline/cluster/fetchers.py, kind `calibration`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shlex
import shutil
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import yaml

from pipeline.data.loading import ASSETS
from pipeline.store.manifest import sha256_of

SOURCES = ASSETS / "calibration_sources.yaml"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # local copies are named relative to it
CACHE_SUBDIR = "calibration"
TIMEOUT_S = 60.0  # per request: a firewalled compute node fails within this, not hangs
OFFLINE_VARS = ("HF_HUB_OFFLINE",)


class CalibrationUnavailable(RuntimeError):
    """The pairs are not here and cannot be had now: the judge stays uncalibrated."""


class ChecksumError(ValueError):
    """A downloaded file is not the published one: its sha256 is not the pinned one."""


@dataclass(frozen=True)
class PublishedFile:
    name: str  # file name in the cache folder (the stage hashes the files sorted by it)
    path: str  # path inside the repository
    sha256: str


@dataclass(frozen=True)
class Published:
    """One published calibration set, pinned: a repository commit and a sha256 per file."""

    name: str
    repo: str
    commit: str
    url_template: str  # {repo}, {commit}, {path}
    files: tuple[PublishedFile, ...]
    # Folders that may hold the same files (relative to the project root): tried before any
    # download, each file taken only with its pinned sha256, so a copy is the published set.
    local_copies: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """How calibration.pairs names it."""
        return f"{self.name}@{self.commit}"

    def url(self, f: PublishedFile) -> str:
        return self.url_template.format(repo=self.repo, commit=self.commit, path=f.path)

    def cache_dir(self, cache_root) -> Path:
        return Path(cache_root) / CACHE_SUBDIR / f"{self.name}-{self.commit}"


@lru_cache(maxsize=4)
def load_sources(path: Path = SOURCES) -> dict[str, Published]:
    """Every published source of the spec file, by name."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return {
        name: Published(
            name,
            s["repo"],
            s["commit"],
            s["url"],
            tuple(PublishedFile(f, v["path"], v["sha256"]) for f, v in sorted(s["files"].items())),
            tuple(s.get("local_copies", ())),
        )
        for name, s in raw.items()
    }


def published(source: str) -> Published | None:
    """The published source `source` names, or None for a local path. A known name at another
    commit than the pinned one is refused: no sha256 is known for it."""
    source = str(source)
    name, sep, commit = source.partition("@")
    specs = load_sources()
    if name not in specs or (not sep and Path(source).exists()):
        return None
    spec = specs[name]
    if sep and commit != spec.commit:
        raise ValueError(
            f"calibration.pairs={source!r}: {SOURCES} pins {name} at {spec.commit} "
            f"(a sha256 per file); other commits have no known checksum: use "
            f"calibration.pairs={spec.source}, or a local copy "
            "(calibration.pairs=PATH)"
        )
    return spec


def local_files(source: str) -> list[Path]:
    """The annotation files of a local set: one JSON file, or every *.json in a folder."""
    if not str(source):
        return []  # Path("") is the working directory: never calibrate on whatever lies there
    path = Path(source)
    return sorted(path.glob("*.json")) if path.is_dir() else [path] if path.is_file() else []


def cached(spec: Published, cache_root) -> list[Path] | None:
    """The cached files of `spec`, each with its pinned sha256; None unless all are."""
    paths = [spec.cache_dir(cache_root) / f.name for f in spec.files]
    good = all(p.is_file() and sha256_of(p) == f.sha256 for p, f in zip(paths, spec.files))
    return sorted(paths) if good else None


def from_local_copy(spec: Published, cache_root) -> list[Path] | None:
    """The files of `spec` copied into its cache folder from the first local copy that holds
    every one with its pinned sha256 (atomic: a temp name, then a rename); None if none does."""
    for folder in spec.local_copies:
        root = Path(folder) if Path(folder).is_absolute() else PROJECT_ROOT / folder
        found = [root / f.name for f in spec.files]
        if not all(p.is_file() and sha256_of(p) == f.sha256 for p, f in zip(found, spec.files)):
            continue
        dest_dir = spec.cache_dir(cache_root)
        dest_dir.mkdir(parents=True, exist_ok=True)
        for src in found:
            tmp = dest_dir / f".{src.name}.{uuid.uuid4().hex}.tmp"
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest_dir / src.name)
            finally:
                tmp.unlink(missing_ok=True)
        return cached(spec, cache_root)
    return None


def _download_one(url: str, dest: Path, expected: str, timeout: float) -> None:
    # A temp file beside the target, renamed only once its sha256 is checked: readers (and a
    # concurrent run) see no file or the published one, never a torn or a wrong one.
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    digest = hashlib.sha256()
    try:
        with urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        actual = digest.hexdigest()
        if actual != expected:
            raise ChecksumError(
                f"{url} (for {dest.name}): sha256 {actual}, expected {expected} ({SOURCES}); "
                "not the published file, so it was not kept. Behind a rewriting proxy? Fetch it "
                "another way and point calibration.pairs=PATH at the copy"
            )
        os.replace(tmp, dest)
    except (URLError, OSError, http.client.HTTPException) as err:
        raise CalibrationUnavailable(f"downloading {url} failed: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)


def download(spec: Published, cache_root, timeout: float = TIMEOUT_S) -> list[Path]:
    """Every file of `spec` into its cache folder (a cached one with the right sha256 is kept);
    raises ChecksumError for a wrong file, CalibrationUnavailable when it cannot be fetched."""
    folder = spec.cache_dir(cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    for f in spec.files:
        dest = folder / f.name
        if not (dest.is_file() and sha256_of(dest) == f.sha256):
            _download_one(spec.url(f), dest, f.sha256, timeout)
    return sorted(folder / f.name for f in spec.files)


def offline_var() -> str | None:
    """The variable that marks this process offline, if one is set."""
    return next(
        (v for v in OFFLINE_VARS if os.environ.get(v, "").upper() in {"1", "ON", "TRUE", "YES"}),
        None,
    )


def resolve(
    source: str, cache_root, allow_download: bool = True, timeout: float = TIMEOUT_S
) -> list[Path]:
    """The annotation files of calibration.pairs=`source`, sorted by name; raises
    CalibrationUnavailable (saying what is missing) when they are not to be had."""
    spec = published(source)
    if spec is None:
        files = local_files(source)
        if not files:
            raise CalibrationUnavailable(
                f"calibration.pairs={source!r} has no annotation file "
                "(a JSON file, or a folder of *.json)"
            )
        return files
    found = cached(spec, cache_root) or from_local_copy(spec, cache_root)
    if found:
        return found
    where = spec.cache_dir(cache_root)
    if not allow_download:
        raise CalibrationUnavailable(f"{spec.source} is not in {where}")
    if offline_var():
        raise CalibrationUnavailable(
            f"{spec.source} is not in {where}, and {offline_var()} is set: no download tried"
        )
    return download(spec, cache_root, timeout)


def how_to_get(source: str, overrides: list[str]) -> str:
    """The exact commands that give a run with `overrides` its calibration pairs."""
    spec = published(source)
    kept = [o for o in overrides if not o.lstrip("+~").startswith("calibration.pairs=")]
    local = "calibration.pairs=PATH (an alpaca_eval annotations.json, or a folder of them)"
    if spec is not None:
        prefetch = shlex.join(["python", "-m", "pipeline.prefetch", *overrides])
        return (
            f"get them with `{prefetch}` on a machine with internet (sha256-checked, into "
            f"paths.cache), then rerun; or use a local copy: {local}"
        )
    spec = next(iter(load_sources().values()))  # a local path that is not there
    pairs = f"calibration.pairs={spec.source}"
    prefetch = shlex.join(["python", "-m", "pipeline.prefetch", *kept, pairs])
    return (
        f"put the annotation files at {source!r}, or use the published ones: rerun with "
        f"{pairs} (downloaded when the run has internet; where it has none, first "
        f"`{prefetch}` on a machine that has)"
    )
