"""Stage store under faults: corrupted stages (issue 13, defect 2), concurrent results writers
(defect 3), a full disk (defect 4)."""

import errno
import json
import re
import multiprocessing as mp
import shutil
import subprocess
import threading
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

import pipeline.store.store as store_mod
from pipeline.store.store import (
    MANIFEST,
    MARKER,
    METRICS,
    Store,
    StoreError,
    write_text_atomic,
)

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


def _assert_quarantined_and_recomputed(store: Store, capsys, bad: str, problem: str) -> None:
    root = Path(store.root)
    capsys.readouterr()
    fresh = store.materialize("k", _compute(2))
    out = capsys.readouterr().out.splitlines()
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
    assert files["model/weights.bin"]["sha256"] == store_mod.hashlib.sha256(WEIGHTS).hexdigest()
    assert store.lookup("k").reused


def test_truncated_file_is_quarantined_and_recomputed(tmp_path, capsys):
    store = _published(tmp_path)
    with open(tmp_path / "k" / "model" / "weights.bin", "r+b") as fh:
        fh.truncate(100)
    _assert_quarantined_and_recomputed(store, capsys, "model/weights.bin", "size 100 != 10240")


def test_deleted_file_is_quarantined_and_recomputed(tmp_path, capsys):
    store = _published(tmp_path)
    (tmp_path / "k" / "notes.txt").unlink()
    _assert_quarantined_and_recomputed(store, capsys, "notes.txt", "missing")


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught_by_full_verify_only(tmp_path, capsys, monkeypatch):
    _published(tmp_path)
    _flip_a_byte(tmp_path / "k" / "model" / "weights.bin")

    def no_hashing(path):
        raise AssertionError(f"verify=size hashed {path}")

    with monkeypatch.context() as m:
        m.setattr(store_mod, "_sha256", no_hashing)
        hit = Store(tmp_path, verify="size").lookup("k")  # same size: passes the cheap check
    assert hit.reused and hit.metrics == {"run": 1}
    store = Store(tmp_path, verify="full")
    _assert_quarantined_and_recomputed(store, capsys, "model/weights.bin", "sha256 mismatch")


def test_unreadable_metrics_is_quarantined_and_recomputed(tmp_path, capsys):
    store = _published(tmp_path)
    metrics = tmp_path / "k" / METRICS
    metrics.write_text("#" * metrics.stat().st_size)  # same size: only parsing can tell
    _assert_quarantined_and_recomputed(store, capsys, METRICS,
                                       "unreadable metrics.json (JSONDecodeError)")


# Issue 19, item 2: the check must not be switched off by the stage it checks.


def _edit_metrics(stage: Path, metrics: dict) -> None:
    (stage / METRICS).write_text(json.dumps(metrics))


def test_a_stage_without_manifest_is_quarantined_not_trusted(tmp_path, capsys):
    _published(tmp_path)
    (tmp_path / "k" / MANIFEST).unlink()  # what "written by an older version" looked like
    _edit_metrics(tmp_path / "k", {"run": 90})
    _assert_quarantined_and_recomputed(Store(tmp_path, verify="full"), capsys, MANIFEST,
                                       "missing (a stage is reused only with its manifest)")


def test_a_manifest_listing_no_files_is_quarantined(tmp_path, capsys):
    _published(tmp_path)
    (tmp_path / "k" / MANIFEST).write_text(json.dumps({"version": 1, "files": {}}))
    _edit_metrics(tmp_path / "k", {"run": 90})
    _assert_quarantined_and_recomputed(Store(tmp_path, verify="full"), capsys, METRICS,
                                       f"not in {MANIFEST}")


def test_a_file_the_manifest_does_not_list_is_quarantined(tmp_path, capsys):
    store = _published(tmp_path)
    (tmp_path / "k" / "model" / "extra.bin").write_bytes(b"x")
    _assert_quarantined_and_recomputed(store, capsys, "model/extra.bin", f"not in {MANIFEST}")


def test_a_copy_of_another_stage_is_quarantined(tmp_path, capsys):
    store = Store(tmp_path)
    store.materialize("other", _compute(1))
    shutil.copytree(tmp_path / "other", tmp_path / "k")
    _assert_quarantined_and_recomputed(
        store, capsys, MARKER, "names stage other, not k (a copy or link of another stage)")
    assert store.lookup("other").metrics == {"run": 1}


def test_a_symlink_to_another_stage_is_quarantined_and_its_target_kept(tmp_path, capsys):
    Store(tmp_path).materialize("other", _compute(1))
    (tmp_path / "k").symlink_to(tmp_path / "other")
    store = Store(tmp_path)
    capsys.readouterr()
    fresh = store.materialize("k", _compute(2))
    out = capsys.readouterr().out
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
        digest = store_mod._sha256(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == "3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351"
    assert peak < 4 << 20


# --- results files written by many writers at once -------------------------------------------

ROUNDS = 60


def _payload(writer: str, i: int) -> str:
    return json.dumps({"writer": writer, "i": i, "pad": "x" * (1000 + 997 * i)})


def _write_many(path: str, writer: str) -> None:
    threads = [threading.Thread(target=lambda t=t: [
        write_text_atomic(Path(path), _payload(f"{writer}.{t}", i)) for i in range(ROUNDS)])
        for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_atomic_writes_never_leave_a_torn_or_missing_file(tmp_path):
    target = tmp_path / "results.json"
    write_text_atomic(target, _payload("init", 0))
    stop, seen, errors = threading.Event(), [], []

    def read() -> None:
        while not stop.is_set():
            try:
                got = json.loads(target.read_text())
                assert len(got["pad"]) == 1000 + 997 * got["i"]
                seen.append(got["writer"])
            except Exception as exc:  # noqa: BLE001 - any failure here is the finding
                errors.append(repr(exc))

    reader = threading.Thread(target=read)
    reader.start()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(target), f"p{n}")) for n in range(3)]
    for p in procs:
        p.start()
    errors_in_threads = []
    try:
        _write_many(str(target), "main")
    except Exception as exc:  # noqa: BLE001
        errors_in_threads.append(repr(exc))
    for p in procs:
        p.join(60)
    stop.set()
    reader.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]  # no FileNotFoundError in any writer
    assert errors == [] and errors_in_threads == []
    assert len(seen) > 50 and len(set(seen)) > 2
    assert len(json.loads(target.read_text())["pad"]) >= 1000
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp left behind


def test_a_failed_atomic_write_leaves_no_temp(tmp_path):
    (tmp_path / "out").mkdir()  # os.replace onto a directory fails
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "out", "text")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# --- full disk ----------------------------------------------------------------------------------


def _assert_disk_full_error(exc_info, root: Path, cause: type) -> None:
    message = str(exc_info.value)
    assert "stage k:" in message and re.search(re.escape(str(root)) + r"/k\.w\w+\.partial", message)
    assert "free space there or move paths.store" in message
    assert isinstance(exc_info.value.__cause__, cause)
    assert not (root / "k").exists() and not (root / "k.lock").exists()
    assert Store(root).lookup("k") is None


def test_enospc_from_compute_names_stage_and_directory(tmp_path):
    def compute(work: Path) -> dict:
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "model.safetensors"))

    with pytest.raises(StoreError) as exc_info:
        Store(tmp_path).materialize("k", compute)
    _assert_disk_full_error(exc_info, tmp_path, OSError)


def test_a_library_error_on_a_full_filesystem_is_reported_as_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: SimpleNamespace(total=100 << 30, used=100 << 30, free=0))

    def compute(work: Path) -> dict:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    with pytest.raises(StoreError, match=r"\(0 bytes free\)") as exc_info:
        Store(tmp_path).materialize("k", compute)
    _assert_disk_full_error(exc_info, tmp_path, RuntimeError)


def test_a_library_error_with_free_space_is_left_alone(tmp_path):
    def compute(work: Path) -> dict:
        raise RuntimeError("unexpected pos 64 vs 0")

    with pytest.raises(RuntimeError, match="unexpected pos") as exc_info:
        Store(tmp_path).materialize("k", compute)
    assert not isinstance(exc_info.value, StoreError)


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MiB tmpfs (needs root and permission to mount)."""
    where = tmp_path / "small"
    where.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                           capture_output=True, text=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {mount.stderr.strip() or 'not root'}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def test_torch_save_onto_a_really_full_filesystem(tiny_filesystem):
    torch = pytest.importorskip("torch")

    def compute(work: Path) -> dict:
        torch.save(torch.zeros(1 << 20), work / "model.pt")  # 4 MiB into 1 MiB
        return {}

    with pytest.raises(StoreError, match=r"\(\d+ bytes free\)") as exc_info:
        Store(tiny_filesystem).materialize("k", compute)
    _assert_disk_full_error(exc_info, tiny_filesystem, RuntimeError)
    assert "unexpected pos" in str(exc_info.value.__cause__)
