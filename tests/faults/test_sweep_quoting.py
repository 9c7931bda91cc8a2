"""The points of a sweep as shell words (issue 26, item 12): scripts/sweep_points.py prints each
point's overrides quoted, and slurm/sweep_array.sbatch reads them back word for word, so that a
value with a space stays one override and a value with a glob character is not expanded on the
node. The sbatch script runs under bash without SLURM here, with PYTHON set to a stand-in that
runs sweep_points.py for real and prints the argv `python -m pipeline.run` would get."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STAND_IN = f"""#!/bin/bash
if [ "$1" = -m ]; then
  exec {sys.executable} -c 'import json, sys; print("ARGV " + json.dumps(sys.argv[3:]))' "$@"
fi
shift  # scripts/sweep_points.py, relative to the submit directory: this repository's
exec {sys.executable} {ROOT}/scripts/sweep_points.py "$@"
"""


def _task(tmp_path: Path, task: int, *overrides: str) -> list[str]:
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    # Submitted from tmp_path: the node's working directory, where a glob would be expanded.
    env = dict(
        os.environ,
        PYTHON=str(python),
        SLURM_ARRAY_TASK_ID=str(task),
        SLURM_SUBMIT_DIR=str(tmp_path),
    )
    done = subprocess.run(
        ["bash", str(ROOT / "slurm" / "sweep_array.sbatch"), *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (argv,) = [line[5:] for line in done.stdout.splitlines() if line.startswith("ARGV ")]
    return json.loads(argv)


def test_an_override_with_a_space_or_a_glob_reaches_the_point_as_given(tmp_path):
    glob = "point_name=z*"
    (tmp_path / "point_name=zebra").write_text("")  # what the word `point_name=z*` globs to
    name = "generate.dataset_name='my data'"
    argv = _task(tmp_path, 2, "sweep=alpha_grid", name, glob)
    assert argv == [
        "sweep=alpha_grid",
        name,
        glob,
        "hydra.mode=RUN",
        "noise.kind=uniform",
        "noise.alpha=10",
    ]


def test_printed_points_are_shell_words_one_line_each():
    done = subprocess.run(
        [
            sys.executable,
            "scripts/sweep_points.py",
            "sweep=alpha_grid",
            "generate.dataset_name='a b'",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    assert lines[1] == (
        "sweep=alpha_grid 'generate.dataset_name='\"'\"'a b'\"'\"'' hydra.mode=RUN "
        "noise.kind=uniform noise.alpha=5"
    )
