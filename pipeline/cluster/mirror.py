"""Fetchers from a local mirror laid out like the hub, writing the caches a job reads offline.

    DIR/models/<org>/<name>/...      a model repo's files (config.json, *.safetensors, tokenizer)
    DIR/datasets/<org>/<name>/...    a dataset repo's files (data files, README.md with its
                                     `configs:` metadata when it has named configs)

Models and hub files go into the hub cache where huggingface_hub's offline lookups
(try_to_load_from_cache, hf_hub_download and snapshot_download with HF_HUB_OFFLINE=1, hence
from_pretrained(<org>/<name>)) find them: refs/<revision> naming a commit, and the files under
snapshots/<commit>/. A mirror has no commits: the snapshot is named by a hash of repo and revision
(or by the revision when it is a commit hash), and files added later to a repo already cached
join the snapshot its ref names. Datasets are prepared by datasets' own builder from the mirrored
repo and written where datasets' offline lookup searches
(HF_DATASETS_CACHE/<org>___<name>/<config>/<version>/<hash>).

Why the hub cache is written here and not by huggingface_hub (checked in huggingface_hub 2.4):
its writers fetch over HTTP only. hf_hub_download and snapshot_download ask an endpoint
(HF_ENDPOINT: repo_info, list_repo_tree, a HEAD on /resolve/) for the commit and every file;
there is no file:// or local-folder source, and snapshot_download(local_dir=...) fills a plain
folder from the network, not the cache. try_to_load_from_cache, scan_cache_dir and
get_cached_repo_tree only read the cache; cached_assets_path is a separate assets/ tree, not a
repo's. What writes refs/ and snapshots/ is private (in file_download:
_cache_commit_hash_for_specific_revision, _create_symlink, _chmod_and_move). So the two folders
its readers use are written by hand, with plain files in the snapshot (the layout
huggingface_hub itself writes where it cannot link to blobs/), and try_to_load_from_cache, its
public reader, then checks every file: a release that reads another layout fails the prefetch,
not the offline job.
"""

from __future__ import annotations

import filecmp
import hashlib
import re
import shutil
from pathlib import Path

from pipeline.cluster.downloads import Item
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

COMMIT = re.compile(r"[0-9a-f]{40}")


def _commit(root: Path, repo_id: str, revision: str | None) -> str:
    """The snapshot folder of `revision` in the cached repo `root`, its ref written if new."""
    ref = revision or "main"
    if COMMIT.fullmatch(ref):
        return ref
    ref_file = root / "refs" / ref
    if ref_file.is_file():  # the repo is cached already: add to the snapshot its ref names
        return ref_file.read_text().strip()
    commit = hashlib.sha1(f"mirror:{repo_id}@{ref}".encode()).hexdigest()
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    partial = ref_file.with_name(ref_file.name + ".incomplete")
    partial.write_text(commit)
    partial.replace(ref_file)  # atomic: a reader never sees half a commit hash
    return commit


def write_snapshot(root: Path, item: Item, files: dict[str, Path]) -> None:
    """Put `files` (repo path -> mirror file) into the cached repo `root` (HF_HUB_CACHE/
    <type>s--<org>--<name>) of `item`; a file already there with the same content is kept."""
    from huggingface_hub import try_to_load_from_cache

    commit = _commit(root, item.id, item.revision)
    for rel, src in sorted(files.items()):
        dest = root / "snapshots" / commit / rel
        if dest.is_file() and filecmp.cmp(src, dest, shallow=False):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".incomplete")
        shutil.copyfile(src, partial)
        partial.replace(dest)  # atomic (and replaces a link to a blob): never half a file
        # A lookup that found no such file once (offline) left a marker that now lies.
        (root / ".no_exist" / commit / rel).unlink(missing_ok=True)
    for rel in sorted(files):
        found = try_to_load_from_cache(
            item.id, rel, cache_dir=root.parent, revision=item.revision, repo_type=item.repo_type
        )
        if not isinstance(found, str):
            raise RuntimeError(
                f"{item.label()}: {rel} was copied into {root} but huggingface_hub does not find "
                "it there: this huggingface_hub reads another cache layout than "
                "pipeline/cluster/mirror.py writes"
            )


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
        write_snapshot(self.where(item), item, files)


@register("hub_file", MIRROR)
class MirrorFile(HubFile):
    """One file copied from DIR/<models|datasets>/<org>/<name>/<file> into the hub cache."""

    def fetch(self, item: Item) -> None:
        src = _mirror_dir(self.source, item) / item.name
        if not src.is_file():
            raise FileNotFoundError(f"{item.label()} is not in the mirror (no file {src})")
        write_snapshot(self.where(item), item, {item.name: src})


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
