"""Stage store under faults: concurrent results writers (issue 13, defect 3) and a full disk
(defect 4). Corrupted stages: test_store_integrity.py."""

import errno
import json
import multiprocessing as mp
import re
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.store.store import Store, StoreError, write_text_atomic

# --- results files written by many writers at once -------------------------------------------

ROUNDS = 60


def _payload(writer: str, i: int) -> str:
    return json.dumps({"writer": writer, "i": i, "pad": "x" * (1000 + 997 * i)})


def _write_many(path: str, writer: str) -> None:
    threads = [
        threading.Thread(
            target=lambda t=t: [
                write_text_atomic(Path(path), _payload(f"{writer}.{t}", i)) for i in range(ROUNDS)
            ]
        )
        for t in range(4)
    ]
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
    monkeypatch.setattr(
        shutil, "disk_usage", lambda p: SimpleNamespace(total=100 << 30, used=100 << 30, free=0)
    )

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
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
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
