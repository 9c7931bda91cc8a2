"""The hub cache that pipeline/cluster/mirror.py writes from a local mirror (prefetch --source),
read back with huggingface_hub's own public readers, which is what an offline job goes through;
the whole prefetch of a real experiment from a mirror is in tests/test_prefetch.py."""

import hashlib
import json
from pathlib import Path

import pytest
from huggingface_hub import constants, scan_cache_dir, snapshot_download, try_to_load_from_cache

from pipeline.cluster.downloads import Item
from pipeline.cluster.mirror import MirrorFile, MirrorModel

FILES = {
    "config.json": json.dumps({"model_type": "llama"}),
    "generation_config.json": json.dumps({"max_new_tokens": 8}),
    "model.safetensors": "weights" * 100,
    "pytorch_model.bin": "pickled",  # dropped: the repo has safetensors
    "tokenizer/vocab.txt": "a\nb\n",
}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read by fetchers.hub_repo_dir
    return cache


@pytest.fixture
def mirror(tmp_path) -> Path:
    root = tmp_path / "mirror"
    for rel, text in FILES.items():
        path = root / "models/org/tiny" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "datasets/org/data").mkdir(parents=True)
    (root / "datasets/org/data/df.csv").write_text("index,preference\n0,1.0\n")
    return root


def test_a_mirrored_repo_is_what_huggingface_hubs_readers_find(mirror, hub_cache):
    model = Item("model", "org/tiny")
    MirrorModel(mirror).fetch(model)
    assert MirrorModel(mirror).present(model)
    for rel, text in FILES.items():
        found = try_to_load_from_cache("org/tiny", rel, cache_dir=hub_cache)
        if rel.endswith(".bin"):
            assert found is None
        else:
            assert Path(found).read_text() == text, rel
    folder = Path(snapshot_download("org/tiny", cache_dir=hub_cache, local_files_only=True))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer/vocab.txt",
    ]
    (repo,) = scan_cache_dir(hub_cache).repos
    assert (repo.repo_id, repo.repo_type, repo.nb_files) == ("org/tiny", "model", 4)
    assert {r.commit_hash for r in repo.revisions} == {
        hashlib.sha1(b"mirror:org/tiny@main").hexdigest()
    }
    assert repo.refs.keys() == {"main"}
    # A second fetch keeps the files it finds with the same content (nothing is rewritten).
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    MirrorModel(mirror).fetch(model)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamps


def test_a_hub_file_joins_its_repo_and_a_commit_revision_has_no_ref(mirror, hub_cache):
    commit = "0123456789abcdef0123456789abcdef01234567"
    item = Item("hub_file", "org/data", revision=commit, name="df.csv", repo_type="dataset")
    MirrorFile(mirror).fetch(item)
    found = try_to_load_from_cache(
        "org/data", "df.csv", cache_dir=hub_cache, revision=commit, repo_type="dataset"
    )
    assert found == str(hub_cache / "datasets--org--data/snapshots" / commit / "df.csv")
    assert not (hub_cache / "datasets--org--data/refs").exists()


def test_a_file_an_offline_lookup_marked_missing_is_found_once_mirrored(mirror, hub_cache):
    """An offline lookup that found no generation_config.json left huggingface_hub's `.no_exist`
    marker (transformers then skips the file for good); mirroring the file clears it."""
    model = Item("model", "org/tiny")
    MirrorModel(mirror).fetch(model)
    snapshot = Path(try_to_load_from_cache("org/tiny", "config.json", cache_dir=hub_cache)).parent
    (snapshot / "generation_config.json").unlink()
    marker = hub_cache / "models--org--tiny/.no_exist" / snapshot.name / "generation_config.json"
    marker.parent.mkdir(parents=True)
    marker.touch()
    MirrorModel(mirror).fetch(model)
    found = try_to_load_from_cache("org/tiny", "generation_config.json", cache_dir=hub_cache)
    assert isinstance(found, str) and json.loads(Path(found).read_text()) == {"max_new_tokens": 8}


def test_a_cache_layout_huggingface_hub_does_not_read_fails_the_fetch(
    mirror, hub_cache, monkeypatch
):
    """The layout is written by hand (huggingface_hub has no API to fill its cache from a local
    folder): a release that reads another one fails the prefetch, naming the file."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="org/tiny: config.json was copied into .* but "):
        MirrorModel(mirror).fetch(Item("model", "org/tiny"))
