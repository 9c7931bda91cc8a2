"""experiment=noise_family on the tiny stack (issue 31): one sweep trains the shared baseline once
and NEFTune, FreeLB, R3F and NoisyTune each at its paper's setting, and the report gets the
family's table (a row per kind, differences against the baseline with CIs, the noise-off losses,
the cost) and its figure, each number linked to its stage."""

import csv
import json

import pytest

from pipeline.results.cells import KEY_SUFFIX
from tests.support.pipeline_run import stage_dirs

pytestmark = pytest.mark.e2e

SMALL = (  # what this run changes of the tiny stack: few steps and prompts, no leaderboard
    "logger=disabled",
    "finetune.max_steps=6",
    "finetune.save_steps=6",
    "overfit=tiny",
    "overfit.generate_sample=2",
    "openllm=none",
    "head_to_head=false",
    "calibration.enabled=false",
    "compare.resamples=1000",
    "compare.lc_resamples=20",
)
ARMS = (
    "base",
    "neft-uniform5",
    "neft-freelb5-k2-lr0.04",
    "r3f-lambda1-sigma1e-05",
    "noisytune-lambda0.15",
)


def test_noise_family_trains_every_kind_once_and_tables_each_against_the_baseline(tiny_run):
    done = tiny_run.run("experiment=noise_family", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    store = tiny_run.store
    finetunes = [p.name for p in stage_dirs(store, "finetune")]
    assert len(finetunes) == len(ARMS)  # the baseline trained once for the four points
    for arm in ARMS:
        assert sum(f"_{arm}-" in name for name in finetunes) == 1, arm
    passes = {
        json.loads((p / "metrics.json").read_text())["noise_kind"]: json.loads(
            (p / "metrics.json").read_text()
        )["train_passes_per_example"]
        for p in stage_dirs(store, "finetune")
    }
    assert passes == {"none": 1.0, "uniform": 1.0, "freelb": 3.0, "r3f": 2.0, "noisytune": 1.0}

    out = tiny_run.results_dir("noise_family")
    assert len(list((out / "points").glob("*.json"))) == 4
    table = list(csv.DictReader((out / "noise_family.csv").open(encoding="utf-8")))
    assert table[0]["arm"] == "base" and sorted(r["arm"] for r in table) == sorted(ARMS)
    delta = "Δ win rate vs base (95% CI)"
    for row in table[1:]:
        # "+d (lo to hi)", read from that arm's compare stage
        assert " to " in row[delta] and row[delta + KEY_SUFFIX].startswith("compare-"), row
        assert row["Δ mean characters vs base (95% CI)"].count(" to ") == 1
        assert row["held-out loss" + KEY_SUFFIX].startswith("overfit-")
        assert float(row["train loss (noise off)"]) > 0 and float(row["held-out loss"]) > 0
        assert row["steps"] == "6" and float(row["train seconds"]) > 0
    assert {row["arm"]: row["passes per example"] for row in table} == dict(
        zip(ARMS, ("1", "1", "3", "2", "1"))
    )
    assert table[0][delta] == "–"  # the baseline against itself: nothing

    report = (out / "REPORT.md").read_text()
    assert "## Noise family — each regulariser against the same baseline" in report
    assert "![noise_family.png](noise_family.png)" in report
    assert (out / "noise_family.png").stat().st_size > 1000
    assert "### Training cost per arm" in report
    assert "| neft-freelb5-k2-lr0.04 | 42 | `finetune-" in report
