"""What a failed worker's log says, quoted into the error that reports it."""

from __future__ import annotations

from pathlib import Path

def log_tail(log: Path, lines: int = 30) -> str:
    """'its log is <log>:' and its last `lines` lines, quoted: what a worker's failure says."""
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"its log is {log}:\n" + "\n".join("  | " + line for line in tail)
