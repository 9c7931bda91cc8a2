"""The console of a run tells its story: one line per stage (computed, reused or skipped, with its
time), a progress bar per long loop, no W&B banner, no library chatter or known-harmless warning
(each silenced at its source, pipeline/logs), and at the end where the report is and its first
finding."""

import logging
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.logs import ConsoleFilter, quiet_libraries, seconds_text, stage_line
from pipeline.store.store import Store
from tests.support.pipeline_run import ROOT, TinyRun

MTIME = "mtime may not be reliable on this filesystem, falling back to numerical ordering"
STAGE_LINE = re.compile(r"^\[(\w+)\] (.+): (computed|reused) -> (\S+) \((.+)\)$")


def test_a_stage_line_says_computed_reused_or_skipped_with_its_time():
    result = SimpleNamespace(key="finetune-tiny_default_base-0123", reused=False, seconds=372.4)
    line = stage_line("finetune", "base", result)
    assert line == "[finetune] base: computed -> finetune-tiny_default_base-0123 (6 min 12 s)"
    assert STAGE_LINE.match(line).groups()[2:] == ("computed", result.key, "6 min 12 s")
    reused = SimpleNamespace(key="generate-x-1", reused=True, seconds=0.04)
    line = stage_line("generate", "neft-uniform5", reused)
    assert line == "[generate] neft-uniform5: reused -> generate-x-1 (0.0 s)"
    assert stage_line("openllm", "base", skipped="openllm=none") == (
        "[openllm] base: skipped (openllm=none)"
    )
    assert seconds_text(4000) == "1 h 06 min"


def test_the_store_says_how_long_a_stage_took(tmp_path):
    store = Store(tmp_path / "store")
    spent = {}

    def compute(work: Path) -> dict:
        started = time.monotonic()
        (work / "x").write_text("x")
        spent["compute"] = time.monotonic() - started
        return {"n": 1}

    computed = store.materialize("s-a-000000000000", compute)
    assert not computed.reused and computed.seconds >= spent["compute"]
    reused = store.materialize("s-a-000000000000", compute)
    assert reused.reused and isinstance(reused.seconds, float) and reused.seconds >= 0


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    "name, level, message, shown",
    [
        ("pipeline.plan", logging.INFO, "[finetune] base: computed -> k (1.0 s)", True),
        ("pipeline.store", logging.WARNING, "stage k is corrupt", True),
        ("lm_eval.evaluator", logging.INFO, "Setting random seed to 1234", False),
        ("root", logging.INFO, "Annotating 6 examples with local_logprob_v1", False),
        (
            "lm_eval.evaluator",
            logging.WARNING,
            "Overwriting default num_fewshot of arc to 3",
            False,
        ),
        ("root", logging.WARNING, "Saving_path is given but not 'auto', make sure ...", False),
        ("lm_eval.evaluator", logging.WARNING, "a task has no test split", True),  # not known
        ("transformers.trainer", logging.WARNING, MTIME, False),
        ("alpaca_eval.main", logging.ERROR, "the judge failed", True),
    ],
)
def test_the_console_shows_the_pipelines_lines_and_warnings_that_matter(
    name, level, message, shown
):
    assert ConsoleFilter().filter(_record(name, level, message)) is shown


def test_the_console_prints_a_redacted_traceback_as_redacted():
    """secrets.RedactSecrets caches a redacted traceback in exc_text before any handler formats
    the record: the console's formatter must print that, not format exc_info again."""
    from pipeline.logs import ConsoleFormatter

    try:
        raise ValueError("sk-live-0123")
    except ValueError:
        failure = sys.exc_info()
    record = logging.LogRecord("root", logging.ERROR, __file__, 1, "failed", None, failure)
    record.exc_text = "ValueError: <redacted $KEY>"
    text = ConsoleFormatter().format(record)
    assert text.startswith("ERROR [root] failed") and "<redacted $KEY>" in text
    assert "sk-live-0123" not in text
    info = _record("pipeline.plan", logging.INFO, "[finetune] base: computed -> k (1.0 s)")
    assert ConsoleFormatter().format(info) == "[finetune] base: computed -> k (1.0 s)"


def test_transformers_sub_second_bars_are_off_and_its_other_bars_on():
    from transformers.utils import logging as hf_logging

    quiet_libraries()
    assert hf_logging.tqdm(range(2), desc="Loading weights").disable
    assert hf_logging.tqdm(range(2), desc="Writing model shards").disable
    assert not hf_logging.tqdm(range(2), desc="Downloading shards").disable
    assert logging.getLogger("transformers").handlers  # and its own handler filters its noise
    (handler,) = logging.getLogger("transformers").handlers
    assert not handler.filter(_record("transformers.trainer", logging.WARNING, MTIME))


@pytest.mark.parametrize(
    "message, category, module, shown",
    [
        ("pkg_resources is deprecated as an API.", UserWarning, "alpaca_eval.utils", False),
        (
            "'penalty' was deprecated in version 1.8 and",
            FutureWarning,
            "sklearn.linear_model._logistic",
            False,
        ),
        (
            "Inconsistent values: penalty=l1 with l1_ratio=0.0.",
            UserWarning,
            "sklearn.linear_model._logistic",
            False,
        ),
        ("pkg_resources is deprecated as an API.", UserWarning, "someone.else", True),  # not theirs
        (
            "Inconsistent values: penalty=l2 with l1_ratio=1",
            UserWarning,
            "sklearn.linear_model._logistic",
            True,
        ),
    ],
)
def test_known_harmless_warnings_are_filtered_by_message_and_module(
    message, category, module, shown
):
    quiet_libraries(transformers=False)
    with warnings.catch_warnings(record=True) as caught:  # the filters as they are, recorded
        warnings.warn_explicit(message, category, "x.py", 1, module=module)
    assert bool(caught) is shown


IMPORT_ALPACA_EVAL = "import hydra_plugins, alpaca_eval.utils"


@pytest.mark.parametrize("quiet", [False, True])
def test_alpaca_evals_import_warnings_are_silenced_at_their_source(quiet):
    """pkg_resources' notices when alpaca_eval imports it: silenced by quiet_libraries only."""
    code = ("from pipeline.logs import quiet_libraries; quiet_libraries()\n" if quiet else "") + (
        IMPORT_ALPACA_EVAL
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("UserWarning" in done.stderr) is not quiet


@pytest.mark.e2e
def test_the_tiny_runs_console_tells_the_story_in_few_lines(tmp_path):
    tiny = TinyRun(tmp_path / "store")
    # bytes, not text: text mode would turn each \r of a bar's redraw into a line of its own
    done = subprocess.run(
        [sys.executable, "-c", tiny.code()],
        cwd=tiny.root,
        env=tiny.env(),
        capture_output=True,
        timeout=600,
    )
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr[-3000:]
    console = stdout + stderr
    assert console.count("\n") < 80, console  # lines as a terminal (and `wc -l`) counts them
    assert "wandb:" not in console and "UserWarning" not in console and "Warning:" not in console
    # every stage instance the plan runs has its line, in the plan's order, with its time
    stages = [m for m in map(STAGE_LINE.match, stdout.splitlines()) if m]
    assert [m[1] for m in stages] == tiny.planned_stages()
    assert len(stages) == 14 and {m[3] for m in stages} == {"computed"}
    assert all(re.fullmatch(r"[\d.]+ s|\d+ min \d\d s", m[5]) for m in stages)
    assert "[overfit] arm: skipped (overfit=none)" in stdout.splitlines()
    # a bar per long loop: the Trainer's steps of each arm, without a dict per logging step
    assert "finetune tiny-llama_default_base: 100%" in stderr
    assert "clean loss=" in stderr.split("finetune tiny-llama_default_neft-uniform5: ")[-1]
    assert "{'loss'" not in console
    # the end: where the W&B runs and the report are, and the report's first finding
    tail = stdout.rstrip().splitlines()[-3:]
    assert tail[0].startswith("W&B: offline runs in ") and "wandb sync " in tail[0]
    assert tail[1] == f"report: {tiny.results_dir().resolve() / 'REPORT.md'}"
    assert tail[2].startswith("first finding: neft-uniform5 vs base: win rate vs the reference: ")
