"""No silent wrong number, round three (issue 26, items 1, 2, 3, 9, 10, 13, 15), through the real
`python -m pipeline.run +stack=smoke`: a seed given twice, max_steps=0, a NaN learning rate, a
prompt given twice, an input prompt with no reference answer to its input, max_new_tokens=0 and
an experiment name that leaves results/ each exit non-zero in the checks, before any stage
directory (done or .partial) exists; prompts with an input are judged against the reference
answer to that input. The checks themselves, case by case: tests/test_checks_before_training.py.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.support.pipeline_run import ROOT, TinyRun, stage_dirs

# What these runs change of the tiny stack: small wherever the case allows, so that a run the
# checks let through (before the fixes: all of them) costs seconds of training, not minutes.
FAST = [
    "openllm=none",
    "logger=disabled",
    "noise=off",
    "head_to_head=false",
    "calibration.enabled=false",
    "finetune.max_steps=2",
]
INPUT_ROWS = [  # five: the fewest an LC win rate takes
    {"instruction": "Translate to English.", "input": word, "output": english}
    for word, english in [
        ("Hallo Welt", "Hello world"),
        ("Guten Tag", "Good day"),
        ("Danke", "Thanks"),
        ("Bitte", "Please"),
        ("Tschüss", "Bye"),
    ]
]
REFUSED = {  # case -> (overrides; what the last error line says)
    "seed given twice": (["seeds=[42,42]"], "ValueError: seeds=[42, 42]: seed 42 is given twice"),
    "max_steps 0": (
        ["finetune.max_steps=0"],
        "ValueError: finetune.max_steps=0: use -1 to train finetune.epochs, or >= 1",
    ),
    "learning rate nan": (
        ["finetune.learning_rate=nan"],
        "ValueError: finetune.learning_rate=nan: the peak learning rate, a finite number > 0",
    ),
    "prompt given twice": (
        ["generate.prompts={tmp}/twice.json"],
        "DataError: generate.prompts: {tmp}/twice.json: rows 0 and 5 hold the same prompt",
    ),
    "input prompt, bare reference": (
        ["generate.prompts={tmp}/inputs.json", "generate.reference={tmp}/bare.json"],
        "JudgeError: generate.prompts='{tmp}/inputs.json': 5 of 5 prompts have no reference answer",
    ),
    "max_new_tokens 0": (
        ["generate.max_new_tokens=0"],
        "ValueError: generate.max_new_tokens=0: must be >= 1",
    ),
    "experiment name leaves results": (
        ["experiment.name=../escaped"],
        "ValueError: experiment.name='../escaped': names one directory under paths.results",
    ),
}
# Judged, not refused: prompts with an input against an Alpaca-format reference (one file for
# both, as conf/generate/paper.yaml does).
JUDGED = ["generate.prompts={tmp}/inputs.json", "generate.reference={tmp}/inputs.json"]


def _error_line(stderr: str) -> str:
    """The exception line Hydra prints last (its hint about HYDRA_FULL_ERROR follows it)."""
    return next((line for line in reversed(stderr.splitlines()) if "Error: " in line), "")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case, started at once (the refused ones are mostly imports); case -> (finished
    process, its store, the input dir)."""
    tmp = tmp_path_factory.mktemp("silent_numbers")
    # Shipped prompts, so that each has its reference answer: only the repeat is wrong.
    shipped = json.loads((ROOT / "pipeline" / "assets" / "default_eval.json").read_text())[:5]
    (tmp / "twice.json").write_text(json.dumps(shipped + shipped[:1]))
    (tmp / "inputs.json").write_text(json.dumps(INPUT_ROWS))
    (tmp / "bare.json").write_text(
        json.dumps([{"instruction": "Translate to English.", "output": "Hello world"}])
    )
    cases = {case: overrides for case, (overrides, _) in REFUSED.items()} | {"judged": JUDGED}
    started, procs = time.monotonic(), {}
    for i, (case, overrides) in enumerate(cases.items()):
        store = tmp / "runs" / f"store{i}"
        procs[case] = (TinyRun(store).start(*FAST, *(o.format(tmp=tmp) for o in overrides)), store)
    done = {}
    for case, (proc, store) in procs.items():
        out, err = proc.communicate(timeout=900)
        done[case] = (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), store, tmp)
    print(f"{len(done)} runs together: {time.monotonic() - started:.1f} s")
    return done


@pytest.mark.e2e
@pytest.mark.parametrize("case", list(REFUSED))
def test_the_checks_refuse_it_before_any_stage_exists(runs, case):
    done, store, tmp = runs[case]
    expected = REFUSED[case][1].format(tmp=tmp)
    assert done.returncode == 1, done.stderr[-2000:]
    assert expected in _error_line(done.stderr), done.stderr[-2000:]
    # Only Hydra's own log dir: no stage (done or .partial), no lock, no converted base model.
    # (experiment.name=../escaped would have written <store>/escaped/points.)
    assert sorted(p.name for p in store.iterdir()) == ["hydra"]


@pytest.mark.e2e
def test_prompts_with_an_input_are_judged_against_the_answer_to_that_input(runs):
    done, store, _ = runs["judged"]
    # Before: the checks passed, then the judge found no reference for "instruction\n\ninput".
    assert done.returncode == 0, done.stderr[-3000:]
    (judged,) = stage_dirs(store, "alpaca_eval")
    scored = json.loads((judged / "scored.json").read_text())
    assert [(s["instruction"], s["output_1"]) for s in scored] == [
        (f"Translate to English.\n\n{row['input']}", row["output"]) for row in INPUT_ROWS
    ]
