"""Late or unclear failures (issue 13, defect 7): bad inputs fail in the checks, before anything is
trained, with the config key, the file and the fix; two runs started together keep separate Hydra
logs (the documented smoke command: tests/faults/test_documented_commands.py).

(A full disk is covered by tests/faults/test_store_integrity.py.)
"""

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.support.pipeline_run import ROOT, TinyRun

FAST = ("openllm=none", "logger=disabled")  # what these runs change of the tiny stack
# Rows that decode as latin-1 but not as UTF-8 ("é" is the single byte 0xE9 in latin-1).
ROWS = [
    {"instruction": f"Name a French word {i}.", "input": "", "output": f"Café, numéro {i}."}
    for i in range(8)
]

# Each process imports the pipeline (seconds), says it is ready, and waits for the test's go (a
# time just ahead) so that both reach Hydra's `now` together, as a SLURM array's tasks may.
TOGETHER = """
import os, time
from pathlib import Path
import pipeline.run
ready = Path(os.environ["READY_DIR"])
(ready / f"ready-{os.getpid()}").touch()
while not (ready / "go").exists():
    time.sleep(0.001)
start = float((ready / "go").read_text())
while time.time() < start:
    pass
"""


def error_line(stderr: str) -> str:
    """The exception line Hydra prints last (its hint about HYDRA_FULL_ERROR follows it)."""
    return next(line for line in reversed(stderr.splitlines()) if "Error: " in line)


def assert_nothing_trained(store: Path) -> None:
    # Only Hydra's own log dir: no stage (done or .partial), no lock, no converted base model.
    assert sorted(p.name for p in store.iterdir()) == ["hydra"]


def latin1_file(path: Path, rows=ROWS) -> int:
    """Writes `rows` as JSON in latin-1; returns the offset of the first byte UTF-8 rejects."""
    text = json.dumps(rows, ensure_ascii=False, indent=1)
    path.write_bytes(text.encode("latin-1"))
    return len(text[: text.index("é")].encode("latin-1"))


# --- inputs checked before any training ---------------------------------------------------------

BAD_INPUTS = {  # case -> (overrides naming the bad file, which is written by `bad_input_runs`)
    "missing prompts": ["generate.prompts={tmp}/no_such_prompts.json"],
    "latin-1 data.train": ["data.train={tmp}/latin1.json"],
    "latin-1 generate.prompts": ["generate.prompts={tmp}/latin1.json"],
    "latin-1 overfit.heldout": ["overfit=tiny", "overfit.heldout={tmp}/latin1.json"],
    "prompt row without instruction": ["generate.prompts={tmp}/prompts.json"],
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every BAD_INPUTS run, started at once (each is mostly imports: together they take about
    what two take one after the other); case -> (finished process, its store, the input dir)."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    offset = latin1_file(tmp / "latin1.json")
    (tmp / "prompts.json").write_text(
        json.dumps([{"instruction": "Say hi."}, {"input": "no instruction"}])
    )
    started, procs = time.monotonic(), {}
    for i, (case, overrides) in enumerate(BAD_INPUTS.items()):
        store = tmp / f"store{i}"
        procs[case] = (TinyRun(store).start(*FAST, *(o.format(tmp=tmp) for o in overrides)), store)
    runs = {}
    for case, (proc, store) in procs.items():
        out, err = proc.communicate(timeout=300)
        runs[case] = (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), store, tmp)
    print(
        f"{len(runs)} bad-input runs together: all failed within {time.monotonic() - started:.1f} s"
    )
    return runs, offset


@pytest.mark.e2e
def test_a_missing_prompts_file_fails_before_anything_is_trained(bad_input_runs):
    done, store, tmp = bad_input_runs[0]["missing prompts"]
    missing = tmp / "no_such_prompts.json"
    assert done.returncode == 1
    assert error_line(done.stderr) == (
        f"pipeline.data.loading.DataError: generate.prompts='{missing}': no such file ({missing}); "
        "give a local .json/.jsonl path, pkg:<file in pipeline/assets> or hf:<dataset>"
    )
    assert "[finetune]" not in done.stdout  # no stage was even looked up
    assert_nothing_trained(store)


@pytest.mark.e2e
@pytest.mark.parametrize("key", ["data.train", "generate.prompts", "overfit.heldout"])
def test_a_file_that_is_not_utf8_fails_before_training_naming_it(bad_input_runs, key):
    runs, offset = bad_input_runs
    done, store, tmp = runs[f"latin-1 {key}"]
    assert done.returncode == 1
    # Before the fix a latin-1 generate.prompts or overfit.heldout file was read only after the
    # base model had trained and been stored; data.train gave a bare UnicodeDecodeError.
    assert_nothing_trained(store)
    assert error_line(done.stderr) == (
        f"pipeline.data.loading.DataError: {key}: {tmp / 'latin1.json'}: not UTF-8 text (byte "
        f"{offset}: invalid continuation byte); re-save it as UTF-8"
    )


@pytest.mark.e2e
def test_a_prompt_row_without_instruction_fails_before_training(bad_input_runs):
    done, store, tmp = bad_input_runs[0]["prompt row without instruction"]
    assert done.returncode == 1
    assert_nothing_trained(store)  # before the fix: found after the base model was trained
    assert error_line(done.stderr) == (
        f"pipeline.data.loading.DataError: {tmp / 'prompts.json'}: row 1: missing field "
        "'instruction'; every record needs it"
    )


# --- Hydra run directories ----------------------------------------------------------------------


def _run_dir_time(run_dir: Path) -> datetime:
    return datetime.strptime(run_dir.name, "%Y-%m-%d_%H-%M-%S-%f")


def _two_together(store: Path, ready: Path, *extra: str, offset: float = 0.0) -> float:
    """Two fail-fast runs (missing prompts) released into Hydra at the same instant: `offset`
    seconds past the next whole second, which is returned."""
    ready.mkdir()
    procs = [
        TinyRun(store).start(
            *FAST,
            *extra,
            f"experiment.name=twin{i}",
            f"generate.prompts={store.parent / 'missing.json'}",
            prelude=TOGETHER,
            env={"READY_DIR": str(ready)},
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(list(ready.glob("ready-*"))) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go = int(time.time()) + 1 + offset
    (ready / "go").write_text(repr(go))
    outs = [p.communicate(timeout=120) for p in procs]
    errors = [err[-2000:] for _, err in outs]
    assert [p.returncode for p in procs] == [1, 1], errors
    assert all("DataError: generate.prompts=" in err for err in errors), errors
    return go


@pytest.mark.e2e
def test_two_runs_started_together_get_their_own_hydra_dirs(tmp_path):
    # Hydra resolves `now` some 0.4-1 s after the go (more under load). The go is placed so that
    # this lands mid-second; when the two still straddle a second, the delay just measured from
    # the microsecond names places the next go.
    delay = 0.5
    for attempt in range(3):
        store = tmp_path / f"store{attempt}"
        go = _two_together(store, tmp_path / f"ready{attempt}", offset=(0.5 - delay) % 1)
        dirs = sorted((store / "hydra").iterdir())
        assert len(dirs) == 2  # before: one shared dir when both started in the same second
        times = [_run_dir_time(d) for d in dirs]
        if times[0].replace(microsecond=0) == times[1].replace(microsecond=0):
            break  # the case that collided with the old, seconds-only name
        delay = sum(t.timestamp() for t in times) / 2 - go
    else:
        pytest.fail("the two runs never reached Hydra within one second in 3 attempts")
    apart = abs((times[1] - times[0]).total_seconds())
    print(f"attempt {attempt + 1}: two Hydra dirs {apart * 1000:.1f} ms apart, same second")
    names = []
    for run_dir in dirs:  # each holds its own run's overrides, config and log file
        (override,) = [
            o
            for o in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
            if o.startswith("experiment.")
        ]
        names.append(override)
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        assert f"experiment.name={config['experiment']['name']}" == override
        assert (run_dir / "run.log").is_file()
    assert sorted(names) == ["experiment.name=twin0", "experiment.name=twin1"]


@pytest.mark.e2e
def test_the_harness_sees_coarse_run_dir_names_collide(tmp_path):
    # Names coarser than the start times are shared, and the harness sees it: one dir, one run's
    # overrides. Minutes here, so that the two runs all but surely share one; the pre-fix names
    # had seconds and were shared whenever both runs landed in one second, as the test above
    # checks they do.
    store = tmp_path / "store"
    _two_together(
        store, tmp_path / "ready", "hydra.run.dir=${paths.store}/hydra/${now:%Y-%m-%d_%H-%M}"
    )
    (shared,) = (store / "hydra").iterdir()
    overrides = yaml.safe_load((shared / ".hydra" / "overrides.yaml").read_text())
    assert len([o for o in overrides if o.startswith("experiment.name=twin")]) == 1


def test_the_configured_run_dir_has_microseconds():
    hydra = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["hydra"]
    assert hydra["run"]["dir"].endswith("${now:%Y-%m-%d_%H-%M-%S-%f}")
    assert hydra["sweep"]["dir"].endswith("${now:%Y-%m-%d_%H-%M-%S-%f}")
