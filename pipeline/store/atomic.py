"""Atomic file writes: a reader sees the old or the new file, never a torn one."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` at once: readers see the old or the new file, never a torn one."""
    path = Path(path)
    # Unique per writer (even across hosts), so concurrent writers never share or remove a temp.
    tmp = path.with_name(f".{path.name[:200]}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to `path` atomically (see write_text_atomic)."""
    write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False))
