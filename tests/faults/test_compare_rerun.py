"""compare after a kill: the first rerun reuses every judged stage, so compare is the first to
import alpaca_eval (through core.winrate); it must import the configured AlpacaEval version so
that the judges after it in the same process still run (issue 19, item 4)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RERUN = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
from pipeline.store.store import StageResult, Store
from pipeline.stages import compare
from pipeline.stages.contract import ArmPair
from pipeline.judging import judges as judging
from tests.support.composed import composed

base = Path(sys.argv[1])
cfg = composed("judge=local_tiny", "compare.resamples=1000", "compare.lc_resamples=20")
sides = {}
for prefix in ("base_", ""):
    sides[prefix] = {stage: StageResult(f"{stage}-{prefix or 'neft'}x-0", base / f"{prefix}{stage}",
                                        {}, True) for stage in ("alpaca_eval", "analysis")}
call = SimpleNamespace(pairs=(ArmPair(0, sides["base_"], sides[""]),))
compare.run(cfg, SimpleNamespace(store=Store(base / "store")), call)
importer = getattr(judging, "import_alpaca_eval", None) or judging._import_alpaca_eval
importer(cfg.judge.alpaca_eval_version)  # what the judge of a later stage does
print("judge imported alpaca_eval")
"""


def _judged(path: Path, seed: int) -> None:
    path.mkdir(parents=True)
    scored = [
        {
            "instruction": f"q{i}",
            "output_1": "r" * (10 + i),
            "output_2": "o" * (5 + 3 * i),
            "preference": 1.0 + ((i * seed) % 3) / 2,
        }
        for i in range(12)
    ]
    (path / "scored.json").write_text(json.dumps(scored))


def _analysed(path: Path, seed: int) -> None:
    path.mkdir(parents=True)
    per_output = {
        "chars": [10.0 + i * seed for i in range(12)],
        "words": [2.0 + i for i in range(12)],
        "log_diversity": [1.0 + 0.1 * i * seed for i in range(12)],
    }
    (path / "per_output.json").write_text(json.dumps(per_output))


@pytest.mark.e2e  # the compare stage and a judge in a fresh interpreter: about 15 s on this CPU
def test_compare_first_in_a_rerun_leaves_the_judges_their_alpaca_eval_version(tmp_path):
    for prefix, seed in (("base_", 1), ("", 2)):
        _judged(tmp_path / f"{prefix}alpaca_eval", seed)
        _analysed(tmp_path / f"{prefix}analysis", seed)
    env = {k: v for k, v in os.environ.items() if k != "IS_ALPACA_EVAL_2"}  # as a user runs it
    done = subprocess.run(
        [sys.executable, "-c", RERUN, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "judge imported alpaca_eval" in done.stdout
