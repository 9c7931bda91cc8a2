"""Fetchers: one small class per item kind and origin, found in a registry, never by branching
on the kind.

Each fetcher puts an item where an offline compute job looks for it (the Hugging Face caches as
set in this environment: HF_HOME / HF_HUB_CACHE / HF_DATASETS_CACHE) and can say, without the
network, whether it is there already. Two origins:
  hub     the network, through huggingface_hub (snapshot_download, hf_hub_download) and datasets
          (load_dataset): what a login node with internet runs
  mirror  a local directory laid out like the hub (DIR/models/<org>/<name>/...,
          DIR/datasets/<org>/<name>/...), written into the same caches in the same layout
          (pipeline/cluster/mirror.py): for tests, and for sites that keep a hub mirror on disk
Kinds: model, dataset, hub_file (one file of a hub repo), calibration (published calibration
pairs, from GitHub into paths.cache), file (a local path the run reads: checked, cannot be
downloaded), config (a required key left unset: always fails, naming it).
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

from pipeline.cluster.downloads import Item
from pipeline.judging.calibration_source import cached, download, published

HUB, MIRROR = "hub", "mirror"
# Formats a PyTorch job never loads; with safetensors present the .bin copies are skipped too
# (Llama-2 ships both: half the download).
NEVER_LOADED = (
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.gguf",
    "*.tflite",
    "original/*",
    "coreml/*",
    "*.mlmodel",
)
PICKLED = ("*.bin", "*.pt", "*.pth")

FETCHERS: dict[tuple[str, str], type] = {}


def register(kind: str, *origins: str):
    """Class decorator: the fetcher of `kind` for each of `origins` (hub, mirror)."""

    def add(cls):
        for origin in origins:
            FETCHERS[(kind, origin)] = cls
        cls.kind = kind
        return cls

    return add


def fetcher_for(kind: str, source: Path | None):
    """The fetcher of `kind`: from the local mirror `source` when given, else the network."""
    origin = MIRROR if source is not None else HUB
    if (kind, origin) not in FETCHERS:
        raise KeyError(f"no fetcher for kind {kind!r} from {origin}; known: {sorted(FETCHERS)}")
    return FETCHERS[(kind, origin)](source)


class Fetcher:
    """Gets one kind of item into the caches; `fetch` raises with the reason when it cannot."""

    kind = "?"
    checks_only = False  # True: fetch only checks (no download), so a dry run may call it

    def __init__(self, source: Path | None = None):
        self.source = source

    def where(self, item: Item) -> Path | None:
        """Where the item is (or will be) on disk; None for items that have no place."""
        raise NotImplementedError

    def present(self, item: Item) -> bool:
        """Whether the item is there already (looked up on disk only)."""
        raise NotImplementedError

    def fetch(self, item: Item) -> None:
        """Download (or copy) the item into place; a no-op when it is complete already."""
        raise NotImplementedError


def ignore_patterns(files: list[str]) -> list[str]:
    """Repo files a job does not load: other frameworks' weights, and pickled weights when the
    repo has safetensors (transformers then loads those)."""
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    return list(NEVER_LOADED) + (list(PICKLED) if has_safetensors else [])


def kept(files: list[str]) -> list[str]:
    """`files` minus ignore_patterns(files), as snapshot_download filters them."""
    ignore = ignore_patterns(files)
    return [f for f in files if not any(fnmatch(f, pattern) for pattern in ignore)]


def hub_repo_dir(repo_id: str, repo_type: str) -> Path:
    """The repo's folder in the hub cache (HF_HUB_CACHE/models--org--name)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def dataset_cache_dir(repo_id: str) -> Path:
    """Where datasets keeps a hub dataset's prepared arrow files (HF_DATASETS_CACHE/org___name),
    the folder datasets' offline lookup (CachedDatasetModuleFactory) searches."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    parts = repo_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    return Path(datasets.config.HF_DATASETS_CACHE) / "___".join(parts)


def dataset_prepared(item: Item) -> bool:
    """Whether a prepared config of the dataset is in the datasets cache."""
    root = dataset_cache_dir(item.id) / (item.name or "default")
    return any(root.glob("*/*/dataset_info.json"))  # <config>/<version>/<hash>/


def load_kwargs(item: Item) -> dict:
    """Extra load_dataset keyword arguments of the item (lm-eval's dataset_kwargs)."""
    return json.loads(item.kwargs) if item.kwargs else {}


class _HubRepo(Fetcher):
    def where(self, item: Item) -> Path:
        return hub_repo_dir(item.id, item.repo_type)


@register("model", HUB)
class HubModel(_HubRepo):
    """A model repo (weights, config, tokenizer) through huggingface_hub.snapshot_download."""

    def present(self, item: Item) -> bool:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(item.id, "config.json", revision=item.revision)
        return isinstance(found, str)

    def fetch(self, item: Item) -> None:
        from huggingface_hub import HfApi, snapshot_download

        files = HfApi().list_repo_files(item.id, revision=item.revision)
        snapshot_download(item.id, revision=item.revision, ignore_patterns=ignore_patterns(files))


@register("hub_file", HUB)
class HubFile(_HubRepo):
    """One file of a hub repo (alpaca_eval's df_gamed.csv) through hf_hub_download."""

    def present(self, item: Item) -> bool:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            item.id, item.name, revision=item.revision, repo_type=item.repo_type
        )
        return isinstance(found, str)

    def fetch(self, item: Item) -> None:
        from huggingface_hub import hf_hub_download

        hf_hub_download(item.id, item.name, repo_type=item.repo_type, revision=item.revision)


@register("dataset", HUB)
class HubDataset(Fetcher):
    """A hub dataset, every split, prepared by datasets.load_dataset as a job would load it."""

    def where(self, item: Item) -> Path:
        return dataset_cache_dir(item.id) / (item.name or "default")

    def present(self, item: Item) -> bool:
        return dataset_prepared(item)

    def fetch(self, item: Item) -> None:
        import datasets

        datasets.load_dataset(item.id, item.name, revision=item.revision, **load_kwargs(item))


@register("calibration", HUB, MIRROR)
class PublishedPairs(Fetcher):
    """Published judge-calibration pairs (calibration.pairs=<name>@<commit>): raw GitHub files
    into <paths.cache>/calibration/, sha256-checked (pipeline/judging/calibration_source.py).
    From GitHub with --source too: a hub mirror holds no GitHub files."""

    def where(self, item: Item) -> Path:
        return published(item.id).cache_dir(item.name)

    def present(self, item: Item) -> bool:
        return cached(published(item.id), item.name) is not None

    def fetch(self, item: Item) -> None:
        download(published(item.id), item.name)


@register("file", HUB, MIRROR)
class LocalFile(Fetcher):
    """A local file or folder the run reads (reference outputs, calibration pairs, a local
    model): it cannot be downloaded, so it is checked; compute nodes must see the same path."""

    checks_only = True

    def where(self, item: Item) -> Path:
        return Path(item.id).expanduser().resolve()

    def present(self, item: Item) -> bool:
        path = self.where(item)
        return path.is_file() or (path.is_dir() and any(path.iterdir()))

    def fetch(self, item: Item) -> None:
        if not self.present(item):
            raise FileNotFoundError(
                f"{self.where(item)} is missing (or an empty folder); the run reads this local "
                "path: put it there (on storage the compute nodes mount) or override its key"
            )


@register("config", HUB, MIRROR)
class UnsetKey(Fetcher):
    """A required config key left unset (???): nothing can be fetched for it."""

    checks_only = True

    def where(self, item: Item) -> None:
        return None

    def present(self, item: Item) -> bool:
        return False

    def fetch(self, item: Item) -> None:
        why = f" ({item.detail})" if item.detail else " (??? or null)"
        raise ValueError(
            f"{item.id} is not set in this point's config{why}; give it on the "
            f"command line ({item.id}=...)"
        )


def explain(err: Exception) -> str:
    """Why a fetch failed, in words a user can act on."""
    from huggingface_hub import errors

    hints = (
        (
            errors.GatedRepoError,
            "gated repo: accept its license on huggingface.co, then set "
            "HF_TOKEN (or run `hf auth login`)",
        ),
        (errors.RepositoryNotFoundError, "not on the hub (or private: set HF_TOKEN)"),
        (errors.RevisionNotFoundError, "no such revision on the hub"),
        (errors.OfflineModeIsEnabled, "HF_HUB_OFFLINE is set: unset it on the login node"),
    )
    for cls, hint in hints:
        if isinstance(err, cls):
            return f"{hint} ({type(err).__name__})"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"
