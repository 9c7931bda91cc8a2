"""Fetchers from a local mirror laid out like the hub, writing the caches a job reads offline.

    DIR/models/<org>/<name>/...      a model repo's files (config.json, *.safetensors, tokenizer)
    DIR/datasets/<org>/<name>/...    a dataset repo's files (data files, README.md with its
                                     `configs:` metadata when it has named configs)

Models and hub files go into the hub cache in huggingface_hub's own layout (blobs/<sha256>,
snapshots/<commit>/<file> linking to them, refs/<revision>), so from_pretrained(<org>/<name>)
and hf_hub_download find them under HF_HUB_OFFLINE=1. A mirror has no commits: the snapshot is
named by a hash of repo and revision (or by the revision when it is a commit hash), and files
added later to a repo already cached join the snapshot its ref names. Datasets are prepared by
datasets' own builder from the mirrored repo and written where datasets' offline lookup searches
(HF_DATASETS_CACHE/<org>___<name>/<config>/<version>/<hash>).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from pipeline.cluster.fetchers import (
    MIRROR,
    HubDataset,
    HubFile,
    HubModel,
    dataset_cache_dir,
    kept,
    load_kwargs,
    register,
)
from pipeline.cluster.needs import Item

COMMIT = re.compile(r"[0-9a-f]{40}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _commit(root: Path, repo_id: str, revision: str | None) -> str:
    ref = revision or "main"
    if COMMIT.fullmatch(ref):
        return ref
    ref_file = root / "refs" / ref
    if ref_file.is_file():  # the repo is cached already: add to the snapshot its ref names
        return ref_file.read_text().strip()
    commit = hashlib.sha1(f"mirror:{repo_id}@{ref}".encode()).hexdigest()
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    ref_file.write_text(commit)
    return commit


def _place(blob: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    try:  # relative, as huggingface_hub links them: the cache can be moved whole
        link.symlink_to(os.path.relpath(blob, link.parent))
    except OSError:  # no symlinks on this filesystem: huggingface_hub then stores copies too
        shutil.copy2(blob, link)


def write_snapshot(root: Path, repo_id: str, revision: str | None, files: dict[str, Path]) -> int:
    """Put `files` (repo path -> mirror file) into the cached repo `root`; the number copied
    (0: every file was there with the same content)."""
    snapshot = root / "snapshots" / _commit(root, repo_id, revision)
    copied = 0
    for rel, src in sorted(files.items()):
        digest = _sha256(src)
        blob, link = root / "blobs" / digest, snapshot / rel
        if (
            blob.is_file()
            and link.exists()
            and (
                link.resolve() == blob.resolve()
                or (not link.is_symlink() and _sha256(link) == digest)
            )
        ):
            continue
        if not blob.is_file():
            blob.parent.mkdir(parents=True, exist_ok=True)
            partial = blob.with_suffix(".incomplete")
            shutil.copyfile(src, partial)
            partial.replace(blob)  # atomic: an interrupted copy is never taken for the blob
        _place(blob, link)
        copied += 1
    return copied


def _mirror_dir(source: Path, item: Item) -> Path:
    path = source / f"{item.repo_type}s" / item.id
    if not path.is_dir():
        raise FileNotFoundError(f"{item.label()} is not in the mirror (no folder {path})")
    return path


@register("model", MIRROR)
class MirrorModel(HubModel):
    """A model repo copied from DIR/models/<org>/<name> into the hub cache."""

    def fetch(self, item: Item) -> None:
        src = _mirror_dir(self.source, item)
        every = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]
        files = {rel: src / rel for rel in kept(every)}
        if "config.json" not in files:
            raise FileNotFoundError(f"{src} has no config.json: not a transformers model repo")
        write_snapshot(self.where(item), item.id, item.revision, files)


@register("hub_file", MIRROR)
class MirrorFile(HubFile):
    """One file copied from DIR/<models|datasets>/<org>/<name>/<file> into the hub cache."""

    def fetch(self, item: Item) -> None:
        src = _mirror_dir(self.source, item) / item.name
        if not src.is_file():
            raise FileNotFoundError(f"{item.label()} is not in the mirror (no file {src})")
        write_snapshot(self.where(item), item.id, item.revision, {item.name: src})


@register("dataset", MIRROR)
class MirrorDataset(HubDataset):
    """A dataset repo prepared by datasets' builder from DIR/datasets/<org>/<name>."""

    def fetch(self, item: Item) -> None:
        import datasets

        src = _mirror_dir(self.source, item)
        builder = datasets.load_dataset_builder(str(src), item.name, **load_kwargs(item))
        # The builder would cache a local folder under its folder name; the hub layout is
        # <org>___<name>/<config>/<version>/<hash>, the folder the offline lookup searches.
        out = (
            dataset_cache_dir(item.id)
            / builder.config_id
            / str(builder.config.version)
            / builder.hash
        )
        builder.download_and_prepare(output_dir=str(out))
