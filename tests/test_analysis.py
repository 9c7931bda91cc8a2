"""Table-4 statistics on hand-computed chunks under both definitions: the paper's arithmetic
(Kirchenbauer et al.'s reference code: K-n n-grams per chunk, diversity with rep_n/100) and the
corrected one (K-n+1 n-grams, diversity with rep_n); lengths, the drop-below-K rule, the cap."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.stages.analysis import VERSION, analysis, length_diversity, repetition
from pipeline.store.store import Store
from tests.support.skips import needs_shared_data

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
REFERENCE = SHARED / "alpaca_eval_v1_reference.json"


def test_paper_counts_one_ngram_fewer_than_the_corrected_definition():
    # "a b c d a b": corrected bigrams ab bc cd da ab (5, "ab" twice) -> rep2 = 1 - 4/5;
    # the paper's loop stops before the last bigram: ab bc cd da (4, all unique) -> rep2 = 0.
    tokens = "a b c d a b".split()
    assert repetition(tokens, 2, "corrected") == pytest.approx(1 / 5)
    assert repetition(tokens, 2, "paper") == 0.0
    assert repetition(tokens, 2) == 0.0  # the paper's arithmetic is the default
    # "a a a a a": corrected aa x4 -> 1 - 1/4; paper aa x3 -> 1 - 1/3.
    assert repetition("a a a a a".split(), 2, "corrected") == pytest.approx(3 / 4)
    assert repetition("a a a a a".split(), 2, "paper") == pytest.approx(2 / 3)
    # Too short for one n-gram: nothing repeated (the reference code would divide by zero).
    assert repetition(["a"], 2, "corrected") == 0.0 and repetition(["a", "b"], 2, "paper") == 0.0


TEXTS = ["a b a b a", "a b c d e f", "x y"]  # K = 5: the third is dropped from rep/div


def test_hand_computed_table4_row_paper_definition():
    got = length_diversity(TEXTS, cutoff=5, definition="paper")
    assert got["definition"] == "paper" and got["n_total"] == 3 and got["n_kept"] == 2
    assert got["chars_mean"] == pytest.approx((9 + 11 + 3) / 3)
    assert got["words_mean"] == pytest.approx((5 + 6 + 2) / 3)
    # Chunk 1 [a b a b a], K-n n-grams: bigrams ab ba ab (3, 2 unique) -> rep2 = 1/3;
    # trigrams aba bab (2 unique) -> 0; 4-grams abab (1) -> 0.
    # Chunk 2 [a b c d e]: nothing repeats -> 0, 0, 0.
    assert got["rep2_pct"] == pytest.approx(100 * (1 / 3 + 0) / 2)
    assert got["rep3_pct"] == 0.0 and got["rep4_pct"] == 0.0
    # div1 = (1 - (1/3)/100) * 1 * 1 = 299/300, log-div1 = -ln(1/300) = ln 300 (about 5.70);
    # div2 = 1, log-div2 = the cap 20.
    assert got["diversity"] == pytest.approx((299 / 300 + 1) / 2)
    assert got["log_diversity"] == pytest.approx((math.log(300) + 20) / 2)


def test_hand_computed_table4_row_corrected_definition():
    got = length_diversity(TEXTS, cutoff=5, definition="corrected")
    assert got["definition"] == "corrected" and got["n_kept"] == 2
    # Chunk 1 [a b a b a], K-n+1 n-grams: bigrams ab ba ab ba (4, 2 unique) -> rep2 = 1/2;
    # trigrams aba bab aba (3, 2 unique) -> rep3 = 1/3; 4-grams abab baba (2 unique) -> 0.
    assert got["rep2_pct"] == pytest.approx(100 * (1 / 2) / 2)
    assert got["rep3_pct"] == pytest.approx(100 * (1 / 3) / 2)
    assert got["rep4_pct"] == 0.0
    # div1 = (1 - 1/2)(1 - 1/3)(1 - 0) = 1/3, log-div1 = -ln(2/3) = ln 1.5; chunk 2: 1 and 20.
    assert got["diversity"] == pytest.approx((1 / 3 + 1) / 2)
    assert got["log_diversity"] == pytest.approx((math.log(1.5) + 20) / 2)


def test_per_output_lists_are_aligned_and_json_serialisable():
    got = length_diversity(TEXTS, cutoff=5)
    per = got["per_output"]
    assert per["chars"] == [9, 11, 3] and per["words"] == [5, 6, 2]
    assert per["log_diversity"][0] == pytest.approx(math.log(300))
    assert per["log_diversity"][1] == 20.0 and per["log_diversity"][2] is None
    assert per["rep2"][0] == pytest.approx(1 / 3) and per["diversity"][2] is None
    assert json.loads(json.dumps(got))["per_output"]["log_diversity"][2] is None


def test_unknown_definition_names_the_accepted_ones():
    with pytest.raises(ValueError, match="'paper', 'corrected'"):
        length_diversity(TEXTS, cutoff=5, definition="clean")


def test_nothing_kept_gives_nan_diversity_but_real_lengths():
    got = length_diversity(["short text"], cutoff=50)
    assert got["n_kept"] == 0 and math.isnan(got["log_diversity"]) and got["words_mean"] == 2


def test_stage_key_carries_the_definition(tmp_path):
    store = Store(tmp_path)
    paper = analysis(TEXTS, "demo", 5, ["generate-x"], store)
    corrected = analysis(TEXTS, "demo", 5, ["generate-x"], store, definition="corrected")
    again = analysis(TEXTS, "demo", 5, ["generate-x"], store, definition="paper")
    assert VERSION == 2 and paper.key != corrected.key and again.key == paper.key and again.reused
    assert paper.metrics["log_diversity"] == pytest.approx((math.log(300) + 20) / 2)
    assert corrected.metrics["log_diversity"] == pytest.approx((math.log(1.5) + 20) / 2)


def _script(*args):
    result = subprocess.run(
        [sys.executable, "scripts/length_diversity.py", str(REFERENCE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@needs_shared_data("data", "alpaca_eval_v1_reference.json")
def test_script_on_all_805_alpaca_eval_reference_outputs_both_definitions():
    records = json.loads(REFERENCE.read_text())
    paper = _script("--cutoff", "50")
    corrected = _script("--cutoff", "50", "--definition", "corrected", "--per-output")
    assert "per_output" not in paper and len(corrected["per_output"]["chars"]) == 805
    for got in (paper, corrected):
        assert got["n_total"] == 805 == len(records) and got["n_kept"] == 319
        assert got["chars_mean"] == pytest.approx(sum(len(r["output"]) for r in records) / 805)
    # Measured values (text-davinci-003's AlpacaEval 1 outputs, K = 50). The paper's /100 makes
    # 1 - div about 100 times smaller where anything repeats, so log-div grows by about ln 100
    # there; 69 of the 319 chunks (68 corrected) sit at the cap 20 either way.
    assert paper["definition"] == "paper" and paper["rep2_pct"] == pytest.approx(7.7325, abs=1e-4)
    assert paper["log_diversity"] == pytest.approx(9.8395, abs=1e-4)
    assert corrected["rep2_pct"] == pytest.approx(7.8690, abs=1e-4)
    assert corrected["log_diversity"] == pytest.approx(6.2009, abs=1e-4)
