"""Stage store under faults: corrupted stages are quarantined and recomputed (issue 13, defect 2).
Concurrent writers and a full disk: test_store_writes.py."""

import hashlib
import json
import shutil
import tracemalloc
from pathlib import Path

import pytest

import pipeline.store.manifest as manifest_mod
from pipeline.store.store import MANIFEST, MARKER, METRICS, Store

WEIGHTS = bytes(range(256)) * 40  # 10240 bytes


def _compute(run: int):
    def compute(work: Path) -> dict:
        (work / "model").mkdir()
        (work / "model" / "weights.bin").write_bytes(WEIGHTS)
        (work / "notes.txt").write_text(f"run {run}\n")
        return {"run": run}

    return compute


def _published(tmp_path: Path, verify: str = "size") -> Store:
    store = Store(tmp_path, verify=verify)
    assert not store.materialize("k", _compute(1)).reused
    return store


def _assert_quarantined_and_recomputed(store: Store, caplog, bad: str, problem: str) -> None:
    root = Path(store.root)
    caplog.clear()
    fresh = store.materialize("k", _compute(2))
    out = caplog.text.splitlines()
    (line,) = [o for o in out if "corrupt" in o]
    assert f"stage k is corrupt ({bad}: {problem})" in line
    (aside,) = root.glob("k.corrupt-*")
    assert (aside / MARKER).is_file()  # moved aside whole, not deleted
    assert not fresh.reused and fresh.metrics == {"run": 2}
    assert (fresh.path / "model" / "weights.bin").read_bytes() == WEIGHTS
    again = store.lookup("k")
    assert again.reused and again.metrics == {"run": 2}
    assert len(list(root.glob("k.corrupt-*"))) == 1


def test_manifest_lists_every_file_but_the_marker_and_itself(tmp_path):
    store = _published(tmp_path)
    files = json.loads((tmp_path / "k" / MANIFEST).read_text())["files"]
    assert sorted(files) == ["metrics.json", "model/weights.bin", "notes.txt"]
    assert files["model/weights.bin"]["size"] == 10240
    assert files["model/weights.bin"]["sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert store.lookup("k").reused


def test_truncated_file_is_quarantined_and_recomputed(tmp_path, caplog):
    store = _published(tmp_path)
    with open(tmp_path / "k" / "model" / "weights.bin", "r+b") as fh:
        fh.truncate(100)
    _assert_quarantined_and_recomputed(store, caplog, "model/weights.bin", "size 100 != 10240")


def test_deleted_file_is_quarantined_and_recomputed(tmp_path, caplog):
    store = _published(tmp_path)
    (tmp_path / "k" / "notes.txt").unlink()
    _assert_quarantined_and_recomputed(store, caplog, "notes.txt", "missing")


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught_by_full_verify_only(tmp_path, caplog, monkeypatch):
    _published(tmp_path)
    _flip_a_byte(tmp_path / "k" / "model" / "weights.bin")

    def no_hashing(path):
        raise AssertionError(f"verify=size hashed {path}")

    with monkeypatch.context() as m:
        m.setattr(manifest_mod, "sha256_of", no_hashing)
        hit = Store(tmp_path, verify="size").lookup("k")  # same size: passes the cheap check
    assert hit.reused and hit.metrics == {"run": 1}
    store = Store(tmp_path, verify="full")
    _assert_quarantined_and_recomputed(store, caplog, "model/weights.bin", "sha256 mismatch")


def test_unreadable_metrics_is_quarantined_and_recomputed(tmp_path, caplog):
    store = _published(tmp_path)
    metrics = tmp_path / "k" / METRICS
    metrics.write_text("#" * metrics.stat().st_size)  # same size: only parsing can tell
    _assert_quarantined_and_recomputed(
        store, caplog, METRICS, "unreadable metrics.json (JSONDecodeError)"
    )


# Issue 19, item 2: the check must not be switched off by the stage it checks.


def _edit_metrics(stage: Path, metrics: dict) -> None:
    (stage / METRICS).write_text(json.dumps(metrics))


def test_a_stage_without_manifest_is_quarantined_not_trusted(tmp_path, caplog):
    _published(tmp_path)
    (tmp_path / "k" / MANIFEST).unlink()  # what "written by an older version" looked like
    _edit_metrics(tmp_path / "k", {"run": 90})
    _assert_quarantined_and_recomputed(
        Store(tmp_path, verify="full"),
        caplog,
        MANIFEST,
        "missing (a stage is reused only with its manifest)",
    )


def test_a_manifest_listing_no_files_is_quarantined(tmp_path, caplog):
    _published(tmp_path)
    (tmp_path / "k" / MANIFEST).write_text(json.dumps({"version": 1, "files": {}}))
    _edit_metrics(tmp_path / "k", {"run": 90})
    _assert_quarantined_and_recomputed(
        Store(tmp_path, verify="full"), caplog, METRICS, f"not in {MANIFEST}"
    )


def test_a_file_the_manifest_does_not_list_is_quarantined(tmp_path, caplog):
    store = _published(tmp_path)
    (tmp_path / "k" / "model" / "extra.bin").write_bytes(b"x")
    _assert_quarantined_and_recomputed(store, caplog, "model/extra.bin", f"not in {MANIFEST}")


def test_a_copy_of_another_stage_is_quarantined(tmp_path, caplog):
    store = Store(tmp_path)
    store.materialize("other", _compute(1))
    shutil.copytree(tmp_path / "other", tmp_path / "k")
    _assert_quarantined_and_recomputed(
        store, caplog, MARKER, "names stage other, not k (a copy or link of another stage)"
    )
    assert store.lookup("other").metrics == {"run": 1}


def test_a_symlink_to_another_stage_is_quarantined_and_its_target_kept(tmp_path, caplog):
    Store(tmp_path).materialize("other", _compute(1))
    (tmp_path / "k").symlink_to(tmp_path / "other")
    store = Store(tmp_path)
    caplog.clear()
    fresh = store.materialize("k", _compute(2))
    out = caplog.text
    assert "stage k is corrupt (COMPLETE: names stage other, not k" in out
    assert not fresh.reused and fresh.metrics == {"run": 2} and not fresh.path.is_symlink()
    assert Store(tmp_path).lookup("other").metrics == {"run": 1}


def test_verify_accepts_only_size_or_full(tmp_path):
    with pytest.raises(ValueError, match="verify='sha'.*'size'.*'full'"):
        Store(tmp_path, verify="sha")


def test_hashing_streams_large_files(tmp_path):
    big = tmp_path / "weights.safetensors"
    with open(big, "wb") as fh:
        fh.truncate(64 << 20)  # sparse: cheap to make, 64 MiB to read
    tracemalloc.start()
    try:
        digest = manifest_mod.sha256_of(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == "3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351"
    assert peak < 4 << 20


def _other_stage_weights(tmp_path: Path) -> Path:
    """Another stage whose model/weights.bin has the same size as k's and other bytes (the
    +NEFT arm's weights beside the base arm's)."""

    def compute(work: Path) -> dict:
        (work / "model").mkdir()
        (work / "model" / "weights.bin").write_bytes(bytes(reversed(WEIGHTS)))
        return {"run": "other"}

    Store(tmp_path).materialize("other", compute)
    return tmp_path / "other" / "model"


def test_a_subdirectory_linked_to_another_stages_is_quarantined_under_size_verify(tmp_path, caplog):
    # rglob does not enter a linked directory, so its files were "not unlisted", while the size
    # check read through the link: the base arm regenerated from the +NEFT weights.
    store = _published(tmp_path)
    target = _other_stage_weights(tmp_path)
    shutil.rmtree(tmp_path / "k" / "model")
    (tmp_path / "k" / "model").symlink_to(target)
    _assert_quarantined_and_recomputed(
        store, caplog, "model", "a symbolic link (a stage directory holds no links)"
    )
    assert not (tmp_path / "k" / "model").is_symlink()
    assert Store(tmp_path).lookup("other").metrics == {"run": "other"}  # the target untouched


def test_a_file_linked_to_another_stages_is_quarantined_under_size_verify(tmp_path, caplog):
    store = _published(tmp_path)
    target = _other_stage_weights(tmp_path) / "weights.bin"
    (tmp_path / "k" / "model" / "weights.bin").unlink()
    (tmp_path / "k" / "model" / "weights.bin").symlink_to(target)
    _assert_quarantined_and_recomputed(
        store, caplog, "model/weights.bin", "a symbolic link (a stage directory holds no links)"
    )
    assert target.read_bytes() == bytes(reversed(WEIGHTS))


def test_a_stage_that_writes_a_link_is_not_published(tmp_path):
    def compute(work: Path) -> dict:
        (work / "elsewhere").symlink_to(tmp_path)
        return {}

    store = Store(tmp_path / "store")
    with pytest.raises(Exception, match="elsewhere: a symbolic link"):
        store.materialize("k", compute)
    assert store.lookup("k") is None and not (tmp_path / "store" / "k").exists()
