"""The tables the aggregation's W&B run holds beside results/<experiment>/*.csv: the findings,
one row per measured effect, as the compare stages computed them (the numbers REPORT.md's
Findings are written from, pipeline/results/findings.py), and the answers side by side, one row
per prompt of every +NEFT arm and seed: the prompt, the base and +NEFT answers, their lengths
and the judge's verdicts, read from the points' generate (outputs.json) and alpaca_eval
(scored.json) stage directories.

Run: pipeline.run logs them after every point (Tracker.log_tables(out, report_tables(out))).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.metrics.stats import win_scores
from pipeline.results.findings import MEASURES
from pipeline.results.points import Arm, Point, read_points

FINDING_COLUMNS = [
    "point",
    "model",
    "data",
    "judge",
    "arm",
    "baseline",
    "seeds",
    "measure",
    "unit",
    "diff",
    "ci_low",
    "ci_high",
    "n",
    "n_seeds",
    "between_seed_sd",
    "excludes_zero",
    "p_value",
    "stage_key",
]
GENERATION_COLUMNS = [
    "point",
    "arm",
    "seed",
    "alpha",
    "prompt",
    "base answer",
    "+NEFT answer",
    "base chars",
    "+NEFT chars",
    # win scores of alpaca_eval's verdicts (pipeline.metrics.stats.win_scores): 100 = the judge
    # prefers the answer, 50 = a tie, 0 = it prefers the other; None = not judged
    "base vs reference",
    "+NEFT vs reference",
    "+NEFT vs base (head to head)",
]


@dataclass
class TableRows:
    """One table for W&B: its columns and rows (pipeline.tracking.tracker.TableRows)."""

    columns: list[str]
    rows: list[list] = field(default_factory=list)


def _finding(p: Point, effect, measure: str, unit: str, d: dict, key: str) -> list:
    return [
        p.id,
        p.model,
        p.dataset,
        p.judge,
        effect.arm,
        effect.baseline,
        ",".join(str(s) for s in effect.seeds),
        measure,
        unit,
        d["diff"],
        d["ci_low"],
        d["ci_high"],
        d.get("n"),
        d.get("n_seeds", 1),
        d.get("between_seed_sd"),
        bool(d["excludes_zero"]),
        d.get("p_value"),
        key,
    ]


def findings_rows(points: list[Point]) -> TableRows:
    """Every effect of the Findings: per point, +NEFT arm and measure (and lm-eval task), the
    difference from the baseline with its CI and n, as its compare stage stored it."""
    table = TableRows(FINDING_COLUMNS)
    for p in points:
        for e in p.effects:
            ref = e.stages["compare"]
            m = ref.metrics
            for name, what, unit, _digits in MEASURES:
                if m.get(name):
                    table.rows.append(_finding(p, e, what, unit, m[name], ref.key))
            for task, d in (m.get("openllm") or {}).items():
                # compare before version 3 kept lm-eval scores as fractions (findings.py)
                unit = "points" if "se" in d else "fraction"
                table.rows.append(_finding(p, e, f"lm-eval {task}", unit, d, ref.key))
    return table


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a point committed without its store: no answers to show


def _stage_file(p: Point, stages: dict, stage: str, name: str):
    return _json(p.stage_path(stages[stage].key) / name) if stage in stages else None


def _verdicts(scored) -> dict[str, float]:
    """instruction -> the win score of the judged answer (output_2)."""
    if not scored:
        return {}
    scores = win_scores([r["preference"] for r in scored])
    return {r["instruction"]: float(s) for r, s in zip(scored, scores)}


def _answers(p: Point, arm: Arm) -> tuple[list, dict] | None:
    outputs = _stage_file(p, arm.stages, "generate", "outputs.json")
    if outputs is None:
        return None
    return outputs, _verdicts(_stage_file(p, arm.stages, "alpaca_eval", "scored.json"))


def generation_rows(points: list[Point]) -> TableRows:
    """The answers side by side: per point, +NEFT arm and seed, one row per prompt with the
    baseline's answer of the same seed, both lengths and the judge's verdicts."""
    table = TableRows(GENERATION_COLUMNS)
    for p in points:
        for treated in (a for a in p.arms if not a.baseline):
            base = next((a for a in p.baseline if a.seed == treated.seed), None)
            sides = [_answers(p, a) for a in (base, treated) if a is not None]
            if len(sides) != 2 or None in sides:
                continue
            (base_out, base_v), (neft_out, neft_v) = sides
            head = next(
                (c for c in p.comparisons if c.arm == treated.name and c.seed == treated.seed), None
            )
            scored = _stage_file(p, head.stages, "head_to_head", "scored.json") if head else None
            head_v = _verdicts(scored)
            base_by = {o["instruction"]: o["output"] for o in base_out}
            for o in neft_out:
                prompt, answer = o["instruction"], o["output"]
                base_answer = base_by.get(prompt)
                table.rows.append(
                    [
                        p.id,
                        treated.name,
                        treated.seed,
                        float(treated.noise.get("alpha", 0.0)),
                        prompt,
                        base_answer,
                        answer,
                        None if base_answer is None else len(base_answer),
                        len(answer),
                        base_v.get(prompt),
                        neft_v.get(prompt),
                        head_v.get(prompt),
                    ]
                )
    return table


def report_tables(out_dir: Path) -> dict[str, TableRows]:
    """The findings and the answers side by side of results/<experiment>/ (out_dir)."""
    points = read_points(Path(out_dir) / "points")
    return {"findings": findings_rows(points), "generations": generation_rows(points)}
