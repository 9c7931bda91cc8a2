"""Files cut or refused by the system (issue 26): a generation's progress file cut inside a UTF-8
character by a kill, and a full disk while the figures are written."""

import errno
import json
from pathlib import Path

import pytest

from pipeline.generation.progress import append_progress, read_progress

ANSWERS = [(0, "Grüße, 世界", 5), (1, "naïve café ☕", 4), (2, "日本語の答え", 6)]


def test_progress_cut_inside_a_character_drops_only_the_cut_line(tmp_path):
    progress = tmp_path / "progress.jsonl"
    append_progress(progress, ANSWERS)
    data = progress.read_bytes()
    # SIGKILL mid-write: the file ends inside the 3-byte "日" of the last answer.
    cut = data.rindex("日本".encode()) + 1
    progress.write_bytes(data[:cut])
    outputs, counts = [""] * 3, [0] * 3

    done = read_progress(progress, outputs, counts)

    assert done == {0, 1}
    assert outputs == ["Grüße, 世界", "naïve café ☕", ""] and counts == [5, 4, 0]
    assert progress.read_bytes() == data[: data.index(b"\n", data.index(b'"i": 1')) + 1]
    append_progress(progress, ANSWERS[2:])  # the redone batch starts a line of its own
    again = [""] * 3
    assert read_progress(progress, again, [0] * 3) == {0, 1, 2} and again[2] == "日本語の答え"


def test_progress_line_with_bad_bytes_is_redone_not_fatal(tmp_path):
    progress = tmp_path / "progress.jsonl"
    append_progress(progress, ANSWERS[:1])
    with open(progress, "ab") as fh:  # a whole line garbled on disk
        fh.write(b'{"i": 1, "output": "\xe6\x97", "new_tokens": 4}\n')
    append_progress(progress, ANSWERS[2:])
    outputs = [""] * 3
    assert read_progress(progress, outputs, [0] * 3) == {0, 2}
    assert outputs[1] == ""  # its answer is generated again


# --- a full disk while the figures are written ---------------------------------------------------


def _experiment(out: Path) -> Path:
    from pipeline.store.store import write_json_atomic
    from tests.support.points import point

    (out / "points").mkdir(parents=True)
    p = point("main", "neft-uniform5", 5, 60.0, main=True)
    write_json_atomic(out / "points" / f"{p.id}.json", p.to_json())
    return out


def test_enospc_from_the_png_writer_names_the_figure_and_what_to_do(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from pipeline.results.aggregate import ResultsError, write_results

    out = _experiment(tmp_path / "results")

    def full(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG")  # a few bytes in, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")  # as PIL raises it: no path

    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(ResultsError) as exc_info:
        write_results(out)
    message = str(exc_info.value)
    assert "no space left" in message and str(out) in message
    assert "winrate.png" in message  # the first figure the tables of this point draw
    assert "paths.results" in message and "free space" in message
    assert isinstance(exc_info.value.__cause__, OSError)
    assert not list(out.glob("*.png")) and not list(out.glob(".*.tmp"))
    assert [p.name for p in out.iterdir()] == ["points"]  # nothing half-written published


def test_a_really_full_results_filesystem_fails_with_a_hint(tmp_path):
    import subprocess

    from pipeline.results.aggregate import ResultsError, write_results

    where = tmp_path / "small"
    where.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip() or 'not root'}")
    try:
        out = _experiment(where / "results")
        filler = where / "filler"
        with open(filler, "wb", buffering=0) as fh:  # every byte the filesystem has left
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC
        with pytest.raises(ResultsError, match="no space left") as exc_info:
            write_results(out)
        assert str(out) in str(exc_info.value) and "paths.results" in str(exc_info.value)
        assert json.loads(next((out / "points").iterdir()).read_text())  # points untouched
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


SIGTERM_IN_COMPUTE = """
import os, signal, sys, time
from pathlib import Path
from pipeline.run import exit_on_sigterm
from pipeline.store.store import Store
if sys.argv[2] == "handled":
    exit_on_sigterm()

def compute(work):
    (work / "out.txt").write_text("done")
    os.kill(os.getpid(), signal.SIGTERM)  # as scancel or a preemption would, mid-stage
    time.sleep(30)
    return {"x": 1}

Store(Path(sys.argv[1])).materialize("stage-a-000000000000", compute)
"""


@pytest.mark.parametrize("handled", ["handled", "default"])
def test_a_sigterm_mid_stage_leaves_no_lock_behind(tmp_path, handled):
    """A run ended by SIGTERM releases the lock of the stage it was computing (exit 143); with
    Python's default handling the lock file stayed (the control case shows the harness sees it)."""
    import subprocess
    import sys

    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN_COMPUTE, str(store), handled],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    locks = sorted(p.name for p in store.glob("*.lock"))
    if handled == "handled":
        assert done.returncode == 143, done.stderr[-2000:]
        assert locks == []
    else:
        assert done.returncode == -15 and locks == ["stage-a-000000000000.lock"]
