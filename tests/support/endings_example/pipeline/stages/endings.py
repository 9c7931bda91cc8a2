"""endings stage: the share of an arm's answers that end with a sentence-ending mark (. ! ?, a
closing quote or bracket after it allowed). An answer cut off by generate.max_new_tokens ends
mid-sentence, so this shows how often the length limit, not the model, ended an answer.

The worked example of a new per-arm stage (pipeline/README.md, "Extending"): it lives in
tests/support/endings_example/ at the paths a newcomer would add it, and
tests/test_worked_stage.py installs it into a copy of the repository and runs it.
Reads the arm's generate stage (outputs.json); writes per_output.json (1 where an answer ends a
sentence, per prompt in order: what a paired comparison would resample) and metrics.json:
endings_share (percent of answers) and endings_n (answers).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.stages.contract import Call, Context
from pipeline.store.store import StageResult, readable_of, stage_key, write_json_atomic

VERSION = 1
MARKS = (".", "!", "?")
CLOSERS = "\"')]»”’"  # may follow the mark: `He said "Yes."` ends a sentence


def ends_a_sentence(text: str) -> bool:
    return text.rstrip().rstrip(CLOSERS).endswith(MARKS)


def check(cfg) -> None:
    """Cheap: nothing of its own (no settings); generate checks the prompts it reads."""


def run(cfg, ctx: Context, call: Call) -> StageResult:
    """Plan entry: the share of the chain's generated answers that end a sentence."""
    gen = call.upstream["generate"]
    key = stage_key("endings", readable_of(gen.key), {}, [gen.key], VERSION)

    def compute(work: Path) -> dict:
        records = json.loads((gen.path / "outputs.json").read_text(encoding="utf-8"))
        ended = [int(ends_a_sentence(r["output"])) for r in records]
        write_json_atomic(work / "per_output.json", ended)
        return {"endings_share": 100.0 * sum(ended) / len(ended), "endings_n": len(ended)}

    return ctx.store.materialize(key, compute, config={"inputs": [gen.key]})
