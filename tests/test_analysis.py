"""Table-4 statistics on hand-computed examples: lengths, rep-n, the drop-below-K rule, the log-diversity cap."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.stages.analysis import length_diversity, repetition

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def test_repetition_counts_unique_ngrams():
    assert repetition("a b a b".split(), 2) == pytest.approx(1 / 3)  # ab, ba, ab
    assert repetition("a b a b".split(), 3) == 0.0
    assert repetition("a a a a a".split(), 2) == pytest.approx(3 / 4)
    assert repetition("a".split(), 2) == 0.0


def test_hand_computed_table4_row():
    texts = ["a b c d", "a b a b a b", "x y"]
    got = length_diversity(texts, cutoff=4)
    assert got["n_total"] == 3 and got["n_kept"] == 2  # "x y" is shorter than K: dropped from rep/div only
    assert got["chars_mean"] == pytest.approx((7 + 11 + 3) / 3)
    assert got["words_mean"] == pytest.approx((4 + 6 + 2) / 3)
    # Chunks: [a b c d] -> no repetition; [a b a b] -> rep2 = 1/3, rep3 = rep4 = 0.
    assert got["rep2_pct"] == pytest.approx(100 * (0 + 1 / 3) / 2)
    assert got["rep3_pct"] == 0.0 and got["rep4_pct"] == 0.0
    assert got["diversity"] == pytest.approx((1 + 2 / 3) / 2)
    # First chunk has diversity 1: log-diversity is capped at 20; second: -ln(1/3).
    assert got["log_diversity"] == pytest.approx((20 + math.log(3)) / 2)


def test_nothing_kept_gives_nan_diversity_but_real_lengths():
    got = length_diversity(["short text"], cutoff=50)
    assert got["n_kept"] == 0 and math.isnan(got["log_diversity"]) and got["words_mean"] == 2


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_script_runs_on_all_805_alpaca_eval_reference_outputs():
    path = SHARED / "alpaca_eval_v1_reference.json"
    result = subprocess.run([sys.executable, "scripts/length_diversity.py", str(path), "--cutoff", "50"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    records = json.loads(path.read_text())
    assert got["n_total"] == 805 == len(records)
    assert got["chars_mean"] == pytest.approx(sum(len(r["output"]) for r in records) / 805)
    assert 0 < got["n_kept"] < 805 and 0 < got["log_diversity"] <= 20
