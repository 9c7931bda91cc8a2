"""Diagnostics through `logging`, with the rank in front of every line under torchrun, and the
tail of a failed worker's log quoted into the error that reports it.

Under `python -m pipeline.run` Hydra configures the root logger (console and the run's .log
file); other entry points (a torchrun rank, the human-study and prefetch commands) call
`configure_logging`. A command's own result (a table, a path) is printed to stdout, not logged.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def get_logger(name: str) -> logging.Logger:
    """The logger of one part of the pipeline: pipeline.<name> (e.g. store, plan, finetune)."""
    return logging.getLogger(f"pipeline.{name}")


class RankPrefix(logging.Filter):
    """Puts '[rank r/w] ' in front of a message when the process is one of several ranks."""

    def filter(self, record: logging.LogRecord) -> bool:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        rank = os.environ.get("RANK", "0")
        record.rank = f"[rank {rank}/{world}] " if world > 1 else ""
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """Outside Hydra: INFO and above to stderr as '[rank r/w] [name] message'. Idempotent."""
    root = logging.getLogger()
    if any(getattr(h, "_pipeline", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RankPrefix())
    handler.setFormatter(logging.Formatter("%(rank)s[%(name)s] %(message)s"))
    handler._pipeline = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(min(root.level or level, level))


def log_tail(log: Path, lines: int = 30) -> str:
    """'its log is <log>:' and its last `lines` lines, quoted: what a worker's failure says."""
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"its log is {log}:\n" + "\n".join("  | " + line for line in tail)
