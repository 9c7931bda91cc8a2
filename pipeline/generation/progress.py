"""Progress of a batched generation, kept so that a killed (requeued) run continues.

A JSON-lines file in the stage's work directory, one line per answer ({"i", "output",
"new_tokens"}), appended and fsynced after every batch (generation.batched.generate_batched).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def append_progress(progress: Path, answers: list[tuple[int, str, int]]) -> None:
    """Append one batch's (index, answer, new tokens), on disk before the next batch starts."""
    with open(progress, "a", encoding="utf-8") as fh:
        fh.writelines(
            json.dumps({"i": i, "output": output, "new_tokens": n}, ensure_ascii=False) + "\n"
            for i, output, n in answers
        )
        fh.flush()
        os.fsync(fh.fileno())


def read_progress(progress: Path | None, outputs: list[str], counts: list[int]) -> set[int]:
    """Fill in the answers a killed run already wrote. A cut last line is dropped from the file
    (its batch is redone), so that what is appended next starts a line of its own.

    Bytes, not text: a kill can cut the last line inside a UTF-8 character, and decoding the
    whole file would fail on it before the cut line is dropped. A line that does not decode or
    parse is skipped: its answer is generated again."""
    done: set[int] = set()
    if progress is None or not progress.is_file():
        return done
    data = progress.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        tmp = progress.with_name(progress.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, progress)
    for line in data.splitlines():
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both
            continue
        outputs[row["i"]], counts[row["i"]] = row["output"], row["new_tokens"]
        done.add(row["i"])
    return done
