"""A sweep rerun after a finished, a partly finished or an interrupted run (issue 26, item 7).

alpaca_eval reads its AlpacaEval version (IS_ALPACA_EVAL_2) once, at its first import, for the
whole process. In a rerun of `sweep=alpha_grid` every stage of point #0 is reused, so the first
import came from the aggregation's dose-response trend (metrics.glm), unpinned, as alpaca_eval's
default 2; point #1's compare then pinned version 1 and failed, although its stage was stored.
The order of those imports, in a fresh process as a user starts it (no IS_ALPACA_EVAL_2):
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.pipeline_run import ROOT, TinyRun

ORDER = """
import sys
import numpy as np
from tests.support.composed import composed
from pipeline.judging.alpaca_import import import_alpaca_eval, pin_alpaca_eval_version
from pipeline.results.trend import _lc_matrix

judge = composed(sys.argv[1]).judge
if sys.argv[2] == "checked":  # what every job of a run does first (plan.check_all)
    from pipeline.judging.judges import validate_judge
    validate_judge(judge)
records = [{"instruction": f"q{i}", "output_1": "r" * (10 + i), "output_2": "o" * (5 + 3 * i),
            "preference": 1.0 + (i % 3) / 2} for i in range(12)]
_lc_matrix([records, records], np.zeros((2, 12), dtype=int))  # the trend after point #0
pin_alpaca_eval_version(judge.alpaca_eval_version)  # point #1's compare
constants = import_alpaca_eval(judge.alpaca_eval_version).constants  # and its judges
print("imported as", 2 if constants.IS_ALPACA_EVAL_2 else 1)
"""


def _order(judge: str, checked: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "IS_ALPACA_EVAL_2"}  # as a user runs it
    env.update(OPENAI_API_KEY="sk-not-used", HF_HUB_OFFLINE="1")  # the API judge's check passes
    return subprocess.run(
        [sys.executable, "-c", ORDER, f"judge={judge}", checked],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.e2e  # a fresh interpreter importing the judge stack: 10-15 s each on this CPU
@pytest.mark.parametrize(
    "judge, checked, version",
    [
        ("local_tiny", "checked", 1),  # the sweep of the issue
        ("local_tiny", "unchecked", 1),  # a process without a config (a report): the paper's
        ("weighted_alpaca_eval_gpt4_turbo", "checked", 2),  # the check pins the judge's version
    ],
)
def test_the_aggregation_before_a_judge_imports_its_version(judge, checked, version):
    done = _order(judge, checked)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"imported as {version}" in done.stdout


# --- the whole sweep, killed and rerun --------------------------------------------------------

SWEEP = [  # what the sweep changes of the tiny stack
    "sweep=alpha_grid",
    "logger=disabled",  # the compared metrics and tables do not depend on W&B
    "openllm=none",  # 40-90 s an arm on this CPU, and no part of what a rerun can get wrong
    "calibration.n_pairs=10",
    "experiment.name=rerun",
]
POINT1_CHECKPOINT = "finetune-*_neft-uniform5-*.partial/checkpoints/checkpoint-*/trainer_state.json"
# Keys of a stage's metrics that say how this attempt went, not what it computed.
HISTORY = re.compile(r"runtime|_per_s$|^resumed_from_step$|wall")


def _start(root: Path, log: str) -> subprocess.Popen:
    with open(root / log, "w") as out:
        return TinyRun(root / "store", results=root / "results").start(
            *SWEEP,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill reaches every child
        )


def _interrupt(root: Path, log: str, when, sig: signal.Signals) -> None:
    """Run the sweep until `when(root)` holds, then send `sig` to its whole process group."""
    proc = _start(root, log)
    try:
        while proc.poll() is None and not when(root):
            time.sleep(0.1)
        assert proc.poll() is None, f"the sweep ended before the kill point: {_tail(root, log)}"
        os.killpg(proc.pid, sig)
        # SIGTERM ends the run as SystemExit(128 + 15) (pipeline.run's exit_on_sigterm: every
        # lock released); SIGKILL leaves it no say
        assert proc.wait(timeout=120) == (128 + sig if sig == signal.SIGTERM else -sig)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _finish(root: Path, log: str) -> str:
    proc = _start(root, log)
    assert proc.wait(timeout=900) == 0, _tail(root, log)
    return (root / log).read_text()


def _tail(root: Path, log: str) -> str:
    return (root / log).read_text()[-3000:]


def _first_finetune_done(root: Path) -> bool:
    return any((root / "store").glob("finetune-*/COMPLETE"))


def _point1_checkpointed(root: Path) -> bool:
    return any((root / "store").glob(POINT1_CHECKPOINT))


def _three_points_written(root: Path) -> bool:
    return len(list((root / "results" / "rerun" / "points").glob("*.json"))) >= 3


def _without_history(metrics):
    if isinstance(metrics, dict):
        return {k: _without_history(v) for k, v in metrics.items() if not HISTORY.search(k)}
    return metrics


def _stage_metrics(store: Path) -> dict:
    """Every finished stage's metrics, by key, without the keys about its attempt."""
    return {
        d.name: _without_history(json.loads((d / "metrics.json").read_text()))
        for d in sorted(store.iterdir())
        if (d / "COMPLETE").is_file()
    }


# Table columns that say how long an attempt took (the noise family's train seconds).
HISTORY_COLUMN = re.compile(r"seconds|runtime|per s\b|/s\b")


def _tables(root: Path) -> dict:
    """Every table of the results, the store's path written as <store>; a table with a column of
    HISTORY_COLUMN as its CSV without that column (its .md holds the same cells: left out)."""
    out = root / "results" / "rerun"
    tables = {}
    for path in sorted(out.glob("*.csv")):
        rows = list(csv.reader(path.read_text().replace(str(root), "<root>").splitlines()))
        keep = [i for i, name in enumerate(rows[0]) if not HISTORY_COLUMN.search(name)]
        tables[path.name] = [[row[i] for i in keep] for row in rows]
        if len(keep) == len(rows[0]):
            md = path.with_suffix(".md")
            tables[md.name] = md.read_text().replace(str(root), "<root>")
    return tables


@pytest.mark.e2e
def test_an_interrupted_sweep_rerun_reports_what_a_cold_run_reports(tmp_path):
    cold, killed = tmp_path / "cold", tmp_path / "killed"
    cold.mkdir()
    killed.mkdir()
    uninterrupted = _start(cold, "cold.log")  # beside the kill chain: two cores, one each
    try:
        # Inside point #0 (its finetune stored, its generate or judges running).
        _interrupt(killed, "1-term.log", _first_finetune_done, signal.SIGTERM)
        # Inside point #1's finetune, after a checkpoint: the rerun resumes from it.
        _interrupt(killed, "2-kill.log", _point1_checkpointed, signal.SIGKILL)
        # Inside point #3: the rerun aggregates three points (a dose-response family) after
        # point #0, before point #1's judges (the failure of item 7).
        _interrupt(killed, "3-term.log", _three_points_written, signal.SIGTERM)
        _finish(killed, "4-rerun.log")
        again = _finish(killed, "5-again.log")
        assert uninterrupted.wait(timeout=900) == 0, _tail(cold, "cold.log")
    finally:
        if uninterrupted.poll() is None:
            os.killpg(uninterrupted.pid, signal.SIGKILL)
            uninterrupted.wait()

    assert "computed ->" not in again and again.count("reused ->") >= 4 * 5  # all reused
    store = killed / "store"
    assert not list(store.glob("*.partial")) and not list(store.glob("*.lock"))
    assert not list(store.glob("*.corrupt-*"))
    assert "resumed_from_step" in json.loads(
        next(store.glob("finetune-*_neft-uniform5-*/metrics.json")).read_text()
    )
    resumed = json.loads(next(store.glob("finetune-*_neft-uniform5-*/metrics.json")).read_text())
    assert resumed["resumed_from_step"] >= 8  # the kill was mid-finetune, after a checkpoint
    expected, got = _stage_metrics(cold / "store"), _stage_metrics(store)
    assert sorted(got) == sorted(expected)
    assert len(expected) >= 4 + 3 * 2 + 2  # finetune per arm, compare per dose, calibration
    for key in expected:
        assert got[key] == expected[key], key
    expected_tables, got_tables = _tables(cold), _tables(killed)
    assert sorted(got_tables) == sorted(expected_tables) and "dose_response.md" in got_tables
    for name in expected_tables:
        assert got_tables[name] == expected_tables[name], name
