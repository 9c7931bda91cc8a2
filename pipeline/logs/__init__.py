"""Diagnostics through `logging`, with the rank in front of every line under torchrun, and the
tail of a failed worker's log quoted into the error that reports it; the console of a run.

Under `python -m pipeline.run` Hydra configures the root logger from conf/config.yaml's
hydra.job_logging: the console gets the pipeline's own INFO lines (one per stage, stage_line) and
every library's WARNING and above except the known-harmless ones (ConsoleFilter), the run's .log
file gets everything. Other entry points (a torchrun rank, the human-study and prefetch commands)
call `configure_logging`. `quiet_libraries` silences, each at its source, what libraries print
that says nothing to a user (see KNOWN_HARMLESS and QUIET_BARS). A command's own result (a table,
a path) is printed to stdout, not logged.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
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
    """Outside Hydra: INFO and above to stderr as '[rank r/w] [name] message' (libraries' INFO
    and known-harmless warnings left out, as on the console of a run). Idempotent."""
    # transformers only where this process has it already: the human-study app never loads it
    quiet_libraries(transformers="transformers" in sys.modules)
    root = logging.getLogger()
    if any(getattr(h, "_pipeline", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RankPrefix())
    handler.addFilter(ConsoleFilter())
    handler.setFormatter(logging.Formatter("%(rank)s[%(name)s] %(message)s"))
    handler._pipeline = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(min(root.level or level, level))


def log_tail(log: Path, lines: int = 30) -> str:
    """'its log is <log>:' and its last `lines` lines, quoted: what a worker's failure says."""
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"its log is {log}:\n" + "\n".join("  | " + line for line in tail)


# --- the console of a run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Harmless:
    """A library's log record that is known to say nothing a user must act on, and why."""

    logger: str  # the logger's name, or a parent of it ("root": a library logging on the root)
    starts: str  # how its message starts
    why: str


KNOWN_HARMLESS = (
    Harmless(
        "root",
        "Saving_path is given but not 'auto'",
        "alpaca_eval, for every judge: each judge stage caches its verdicts in its own stage "
        "directory, so no two seeds or judges share a cache",
    ),
    Harmless(
        "lm_eval",
        "Overwriting default num_fewshot",
        "lm-eval, per task: the shots are set on purpose (openllm.tasks.<task>.num_fewshot)",
    ),
    Harmless(
        "transformers",
        "mtime may not be reliable on this filesystem",
        "the Trainer, listing checkpoints: it falls back to ordering them by step number, "
        "which is what resuming needs",
    ),
)
# (message regex, category, module regex) of Python warnings that are known-harmless.
HARMLESS_WARNINGS = (
    # alpaca_eval.utils imports pkg_resources: setuptools' deprecation notice, and its note that
    # a namespace package (the project's hydra_plugins) was imported before it scanned sys.path.
    ("pkg_resources is deprecated", UserWarning, r"alpaca_eval(\.|$)"),
    (r"Module \w+ was already imported from", UserWarning, r"alpaca_eval(\.|$)"),
    # alpaca_eval's LC GLM passes penalty="l1" (solver liblinear); scikit-learn >= 1.8 still fits
    # L1 (an explicit penalty wins over l1_ratio) and notes the deprecation, at every fit.
    (r"'penalty' was deprecated in version", FutureWarning, r"sklearn(\.|$)"),
    (r"Inconsistent values: penalty=l1 with l1_ratio=", UserWarning, r"sklearn(\.|$)"),
)
# transformers' own progress bars that finish in well under a second on every model the
# pipeline loads or saves (per load, per save: dozens per run); the long loops keep theirs.
QUIET_BARS = ("Loading weights", "Writing model shards")


def _is_harmless(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    for known in KNOWN_HARMLESS:
        named = record.name == known.logger or record.name.startswith(known.logger + ".")
        if named and message.startswith(known.starts):
            return True
    return False


class ConsoleFilter(logging.Filter):
    """What reaches the console: the pipeline's own records (INFO and up: the story of the
    run) and every other library's WARNING and above, except KNOWN_HARMLESS. Libraries' INFO
    (alpaca_eval's annotator, lm-eval's task set-up) still reaches the run's .log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "pipeline" or record.name.startswith("pipeline.")
        if not ours and record.levelno < logging.WARNING:
            return False
        return not _is_harmless(record)


class ConsoleFormatter(logging.Formatter):
    """The pipeline's INFO lines as they are; anything else with its level and logger. (Both
    through logging.Formatter, which prints a record's cached exc_text: a traceback that
    secrets.RedactSecrets redacted stays redacted.)"""

    plain = logging.Formatter("%(message)s")
    named = logging.Formatter("%(levelname)s [%(name)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ours = record.name == "pipeline" or record.name.startswith("pipeline.")
        formatter = self.plain if ours and record.levelno == logging.INFO else self.named
        return getattr(record, "rank", "") + formatter.format(record)


def _quiet_bar(factory, args, kwargs):
    if kwargs.get("desc") in QUIET_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def quiet_libraries(transformers: bool = True) -> None:
    """Silence at its source what libraries print that says nothing to a user: the Python
    warnings of HARMLESS_WARNINGS and (`transformers`: importing it) transformers' sub-second
    bars (QUIET_BARS) and its known-harmless records (its own stderr handler bypasses the root
    logger's filters). Idempotent; call it first thing in an entry point (before alpaca_eval is
    imported)."""
    for message, category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if not transformers:
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the human-study app runs without it
        return
    hf_logging.set_tqdm_hook(_quiet_bar)
    hf_logging.get_logger()  # creates transformers' own handler if it has none yet
    for handler in logging.getLogger("transformers").handlers:
        if not any(isinstance(f, HarmlessOnly) for f in handler.filters):
            handler.addFilter(HarmlessOnly())


class HarmlessOnly(logging.Filter):
    """Drops KNOWN_HARMLESS records only (on a library's own handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_harmless(record)


def seconds_text(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def stage_line(stage: str, label: str, result=None, skipped: str | None = None) -> str:
    """The console's line for one stage of the plan: computed or reused (a StageResult: its
    key and the seconds it took), or skipped and why.

    [finetune] base: computed -> finetune-smollm2-135m_default_base-9b45a5206426 (6 min 12 s)
    [openllm] base: skipped (openllm=none)
    """
    if skipped is not None:
        return f"[{stage}] {label}: skipped ({skipped})"
    how = "reused" if result.reused else "computed"
    return f"[{stage}] {label}: {how} -> {result.key} ({seconds_text(result.seconds)})"
