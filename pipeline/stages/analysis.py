"""analysis stage: length and diversity of outputs (paper Table 4), or of the training responses.

Definitions (DESIGN.md, pipeline/metrics/diversity.py): mean characters and whitespace tokens
over all outputs; repetition and diversity on the first K whitespace tokens of each output,
outputs shorter than K dropped; rep-n, diversity and log-diversity as in Kirchenbauer et al.
2023's reference code
(definition="paper", the default: what the paper's Table 4 means) or its clean arithmetic
(definition="corrected").

Run: python -m pipeline.run     ;  python scripts/length_diversity.py OUTPUTS.json --cutoff 50
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.loading import check_source, load_train, records_digest
from pipeline.metrics.diversity import length_diversity, repetition  # noqa: F401  (re-exported)
from pipeline.stages.contract import Call, Context
from pipeline.store.store import StageResult, Store, readable_of, stage_key, write_json_atomic

VERSION = 2  # 2: the paper's arithmetic by default, the definition in the key, per-output lists


def read_outputs(path: Path) -> list[str]:
    """The `output` texts of an AlpacaEval-format outputs.json; a clear error on bad records."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of {{instruction, output, ...}} records")
    texts = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("output"), str):
            raise ValueError(f"{path}: record {i} has no string field 'output'")
        texts.append(rec["output"])
    return texts


def analysis(
    texts: list[str],
    label: str,
    cutoff: int,
    input_keys: list[str],
    store: Store,
    definition: str = "paper",
) -> StageResult:
    """Length/diversity of `texts` (a generate stage's outputs or the training responses named by
    `input_keys`) under `definition` ("paper" or "corrected")."""
    params = {"cutoff": cutoff, "definition": str(definition)}  # plain str, not an Enum member
    key = stage_key("analysis", label, params, input_keys, VERSION)

    def compute(work: Path) -> dict:
        metrics = length_diversity(texts, cutoff, definition)
        # Per-output values (for paired bootstraps) in their own file: metrics stay scalar.
        write_json_atomic(work / "per_output.json", metrics.pop("per_output"))
        return metrics

    return store.materialize(key, compute, config={**params, "inputs": input_keys})


def check(cfg) -> None:
    """Cheap: the definition and the cutoff are valid, the training file exists."""
    if cfg.analysis.definition not in ("paper", "corrected"):
        raise ValueError(
            f"analysis.definition={cfg.analysis.definition!r}: use paper (the "
            "reference code's arithmetic, the paper's numbers) or corrected"
        )
    if cfg.data.diversity_cutoff < 2:
        raise ValueError(f"data.diversity_cutoff={cfg.data.diversity_cutoff}: must be >= 2")
    check_source(cfg.data.train, "data.train")


def run(cfg, ctx: Context, call: Call) -> StageResult:
    """Plan entry: the chain's generated answers, or (no upstream) the training responses."""
    cutoff, definition = cfg.data.diversity_cutoff, cfg.analysis.definition
    if "generate" in call.upstream:
        gen = call.upstream["generate"]
        texts = read_outputs(gen.path / "outputs.json")
        return analysis(texts, readable_of(gen.key), cutoff, [gen.key], ctx.store, definition)
    train = load_train(cfg.data.train, cfg.data.train_limit)
    return analysis(
        [r["output"] for r in train],
        f"{cfg.data.name}_train",
        cutoff,
        [records_digest(train)],
        ctx.store,
        definition,
    )
