"""analysis stage: length and diversity of outputs (paper Table 4), or of the training responses.

Definitions (DESIGN.md): mean characters and whitespace tokens over all outputs; repetition and
diversity on the first K whitespace tokens of each output, outputs shorter than K dropped;
rep-n = 1 - unique/total n-grams of that chunk (n = 2, 3, 4); per output
div = prod_n (1 - rep_n), log-div = -ln(max(1 - div, e^-20)) (Kirchenbauer et al. 2023), averaged.

Run: python -m pipeline.run     ;  python scripts/length_diversity.py OUTPUTS.json --cutoff 50
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.core.store import StageResult, Store, stage_key

VERSION = 1
NGRAMS = (2, 3, 4)
LOG_DIVERSITY_CAP = 20.0  # -ln(e^-20): a chunk with no repeated n-gram


def repetition(tokens: list[str], n: int) -> float:
    """1 - unique/total n-grams of `tokens` (0 = no repeated n-gram)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def length_diversity(texts: list[str], cutoff: int) -> dict:
    """Table-4 statistics of `texts` with repetition/diversity on the first `cutoff` whitespace tokens."""
    if not texts:
        raise ValueError("length_diversity needs at least one text")
    words = [t.split() for t in texts]
    kept = [w[:cutoff] for w in words if len(w) >= cutoff]
    out = {
        "n_total": len(texts),
        "chars_mean": sum(len(t) for t in texts) / len(texts),
        "words_mean": sum(len(w) for w in words) / len(texts),
        "cutoff_k": cutoff,
        "n_kept": len(kept),
    }
    reps = {n: [repetition(chunk, n) for chunk in kept] for n in NGRAMS}
    divs = [math.prod(1.0 - reps[n][i] for n in NGRAMS) for i in range(len(kept))]
    log_divs = [-math.log(max(1.0 - d, math.exp(-LOG_DIVERSITY_CAP))) for d in divs]
    for n in NGRAMS:
        out[f"rep{n}_pct"] = 100.0 * sum(reps[n]) / len(kept) if kept else float("nan")
    out["diversity"] = sum(divs) / len(kept) if kept else float("nan")
    out["log_diversity"] = sum(log_divs) / len(kept) if kept else float("nan")
    return out


def read_outputs(path: Path) -> list[str]:
    """The `output` texts of an AlpacaEval-format outputs.json, with a clear error on bad records."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of {{instruction, output, ...}} records")
    texts = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("output"), str):
            raise ValueError(f"{path}: record {i} has no string field 'output'")
        texts.append(rec["output"])
    return texts


def analysis(texts: list[str], label: str, cutoff: int, input_keys: list[str], store: Store) -> StageResult:
    """Length/diversity of `texts` (a generate stage's outputs or the training responses named by `input_keys`)."""
    key = stage_key("analysis", label, {"cutoff": cutoff}, input_keys, VERSION)

    def compute(work: Path) -> dict:
        return length_diversity(texts, cutoff)

    return store.materialize(key, compute, config={"cutoff": cutoff, "inputs": input_keys})
