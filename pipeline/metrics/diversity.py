"""Length, repetition and diversity of texts: the paper's Table 4, exactly as the paper computed it.

The NEFTune paper takes repetition and diversity from Kirchenbauer et al. 2023 ("On the Reliability
of Watermarks for LLMs"), whose `measure_repetition_and_diversity` has two quirks that change the
numbers, and the paper's Table 4 carries both:
- its n-gram loop stops one n-gram early, so a chunk of K tokens yields K-n n-grams, not K-n+1;
- its diversity multiplies (1 - rep_n / 100) although rep_n is already a fraction in [0, 1].
definition="paper" reproduces that arithmetic (the default: it is what the paper's numbers mean);
definition="corrected" is the clean variant (K-n+1 n-grams, diversity = prod_n (1 - rep_n)).

Per output, on the first K whitespace tokens (outputs with fewer than K tokens are dropped from
repetition/diversity but kept for lengths): rep_n = 1 - unique/total n-grams (n = 2, 3, 4),
div = prod_n (1 - rep_n [/100]), log-div = -ln(max(1 - div, e^-20)); then averaged over the kept
outputs.
"""

from __future__ import annotations

import math

DEFINITIONS = ("paper", "corrected")
NGRAMS = (2, 3, 4)
LOG_DIVERSITY_CAP = 20.0  # -ln(e^-20): a chunk with no repeated n-gram


def _check(definition: str) -> None:
    if definition not in DEFINITIONS:
        raise ValueError(
            f"definition={definition!r} is unknown; use one of {DEFINITIONS} "
            "('paper': the reference code's arithmetic, 'corrected': the clean one)"
        )


def ngrams(tokens: list[str], n: int, definition: str = "paper") -> list[tuple[str, ...]]:
    """The n-grams of `tokens` counted under `definition` (paper: the last one is skipped)."""
    _check(definition)
    # The reference loop runs `while end < len(tokens)`, so the n-gram ending on the last token
    # is never counted; that is part of what the paper's figures mean.
    stop = len(tokens) - n + (0 if definition == "paper" else 1)
    return [tuple(tokens[i : i + n]) for i in range(max(stop, 0))]


def repetition(tokens: list[str], n: int, definition: str = "paper") -> float:
    """rep_n = 1 - unique/total n-grams of `tokens`, a fraction (0 = no repeated n-gram).

    A chunk too short to hold one n-gram counts as unrepeated (the reference code would divide by
    zero there; the paper's K of 50 to 150 never reaches it)."""
    grams = ngrams(tokens, n, definition)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def chunk_diversity(chunk: list[str], definition: str = "paper") -> dict:
    """rep_n (fractions), diversity and log-diversity of one chunk of whitespace tokens."""
    reps = {n: repetition(chunk, n, definition) for n in NGRAMS}
    # paper: rep_n is a fraction yet is divided by 100 again, as in the reference code
    scale = 100.0 if definition == "paper" else 1.0
    div = math.prod(1.0 - reps[n] / scale for n in NGRAMS)
    log_div = -math.log(max(1.0 - div, math.exp(-LOG_DIVERSITY_CAP)))
    return {**{f"rep{n}": reps[n] for n in NGRAMS}, "diversity": div, "log_diversity": log_div}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def length_diversity(texts: list[str], cutoff: int, definition: str = "paper") -> dict:
    """Table-4 statistics of `texts`; repetition/diversity on the first `cutoff` whitespace tokens.

    Returns n_total, chars_mean, words_mean, cutoff_k, n_kept, rep{2,3,4}_pct, diversity,
    log_diversity, definition, and per_output: {chars, words, rep2, rep3, rep4, diversity,
    log_diversity} lists aligned with `texts` (None where an output is shorter than `cutoff`),
    for paired bootstraps over prompts."""
    _check(definition)
    if not texts:
        raise ValueError("length_diversity needs at least one text")
    if cutoff < 1:
        raise ValueError(f"cutoff={cutoff}: give a positive number of whitespace tokens")
    words = [t.split() for t in texts]
    per_chunk = [
        chunk_diversity(w[:cutoff], definition) if len(w) >= cutoff else None for w in words
    ]
    kept = [c for c in per_chunk if c is not None]
    fields = [f"rep{n}" for n in NGRAMS] + ["diversity", "log_diversity"]
    per_output = {"chars": [len(t) for t in texts], "words": [len(w) for w in words]}
    per_output.update({f: [c[f] if c else None for c in per_chunk] for f in fields})
    out = {
        "n_total": len(texts),
        "chars_mean": _mean(per_output["chars"]),
        "words_mean": _mean(per_output["words"]),
        "cutoff_k": cutoff,
        "n_kept": len(kept),
    }
    for n in NGRAMS:
        out[f"rep{n}_pct"] = 100.0 * _mean([c[f"rep{n}"] for c in kept])
    out["diversity"] = _mean([c["diversity"] for c in kept])
    out["log_diversity"] = _mean([c["log_diversity"] for c in kept])
    out["definition"] = definition
    out["per_output"] = per_output
    return out
