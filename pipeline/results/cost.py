"""What a study cost, from its stages' own records: per stage the compute it used (CPU seconds,
or GPUs x wall seconds) and, for judged stages, the verdicts and what an API judge billed; per
experiment the total, every stage counted once however many points share it (the baseline); per
trained arm what its noise kind cost: optimiser steps, the training loop's seconds and the
forward+backward passes of the model per example and step (finetune's
train_passes_per_example: 1 for plain fine-tuning and NEFTune, 2 for R3F, K + 1 for FreeLB).

Sources, in order: the stage's COMPLETE marker (`wall_s` and `device`, which the store records
at publication), else the runtime the stage put in its metrics.json (finetune's train_runtime_s,
generate's gen_runtime_s: the training or generation loop only, on the device the point's config
chose), else "not recorded". Price: the sum of alpaca_eval's `price_per_example` over the
verdicts in the stage's annotations.json; a local judge bills nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.store.manifest import MARKER
from pipeline.markup import escape_md
from pipeline.results.points import Point, StageRef

RUNTIME_METRIC = {"finetune": "train_runtime_s", "generate": "gen_runtime_s"}
JUDGED = ("alpaca_eval", "head_to_head")  # stages whose verdicts a judge gave


@dataclass
class StageCost:
    key: str
    role: str  # which arm / comparison of which point it served
    wall_s: float | None
    device: str  # cpu, N x cuda, or "not recorded"
    gpus: int
    source: str
    verdicts: int | None = None
    price: float | None = None
    price_source: str = ""

    @property
    def cpu_s(self) -> float:
        return self.wall_s if self.wall_s is not None and self.device == "cpu" else 0.0

    @property
    def gpu_s(self) -> float:
        return self.gpus * self.wall_s if self.wall_s is not None else 0.0


def _stages(p: Point) -> list[tuple[str, str, StageRef]]:
    """(stage name, role, ref) of every stage a point names."""
    out = [(s, f"{a.name} seed {a.seed}", r) for a in p.arms for s, r in a.stages.items()]
    out += [(s, f"{v.name} seed {v.seed}", r) for v in p.variants for s, r in v.stages.items()]
    out += [(s, f"{c.arm} vs {c.baseline} seed {c.seed}", r) for c in p.comparisons
            for s, r in c.stages.items()]
    out += [(s, f"{e.arm} vs {e.baseline}", r) for e in p.effects for s, r in e.stages.items()]
    return out + [(s, "point", r) for s, r in p.point_stages.items()]


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _runtime(p: Point, stage: str, ref: StageRef) -> tuple[float | None, str, int, str]:
    """(wall seconds, device, GPUs, source) of one stage."""
    marker = _json(p.stage_path(ref.key) / MARKER)
    if isinstance(marker, dict) and marker.get("wall_s") is not None:
        dev = marker.get("device") or {}
        gpus = int(dev.get("count", 0)) if dev.get("kind") == "cuda" else 0
        device = f"{gpus} x cuda" if gpus else "cpu" if dev.get("kind") == "cpu" else "not recorded"
        return float(marker["wall_s"]), device, gpus, "COMPLETE wall_s"
    name = RUNTIME_METRIC.get(stage)
    if name and ref.metrics.get(name) is not None:
        choice = str(p.choices.get(stage, ""))
        device = "cpu" if choice == "cpu" else "not recorded"
        return float(ref.metrics[name]), device, 0, f"metrics.json {name}"
    return None, "not recorded", 0, "not recorded"


def _verdicts(p: Point, stage: str, ref: StageRef) -> tuple[int | None, float | None, str]:
    """(verdicts, price in USD, source) of a judged stage."""
    local = (p.config.get("judge") or {}).get("kind") == "local"
    annotations = _json(p.stage_path(ref.key) / "annotations.json")
    if isinstance(annotations, list):
        prices = [a.get("price_per_example") for a in annotations if isinstance(a, dict)]
        price = sum(float(x) for x in prices if x is not None)
        return len(annotations), price, "annotations.json price_per_example"
    n = ref.metrics.get("n_total")
    n = int(n) if n is not None else None
    if local:
        return n, 0.0, "local judge (no bill); verdicts: metrics.json n_total"
    return n, None, "annotations.json not in this store"


def stage_costs(points: list[Point]) -> list[StageCost]:
    """Every stage of the experiment once, in the order the points name them."""
    seen, out = set(), []
    for p in points:
        for stage, role, ref in _stages(p):
            if ref.key in seen:
                continue
            seen.add(ref.key)
            cost = StageCost(ref.key, role, *_runtime(p, stage, ref))
            if stage in JUDGED:
                cost.verdicts, cost.price, cost.price_source = _verdicts(p, stage, ref)
            out.append(cost)
    return out


def _s(x: float | None) -> str:
    return "–" if x is None else f"{x:,.1f}"


def cost_section(points: list[Point]) -> list[str]:
    """Markdown lines of the REPORT's cost section: per stage, then the experiment's total."""
    costs = stage_costs(points)
    unknown = [c for c in costs if c.wall_s is None]
    billed = [c for c in costs if c.price is not None]
    unpriced = [c for c in costs if c.verdicts is not None and c.price is None]
    unrecorded = sum(c.wall_s for c in costs if c.device == "not recorded" and c.wall_s)
    verdicts = sum(c.verdicts for c in costs if c.verdicts)
    total = (f"**Total** over {len(costs)} stages (each counted once): "
             f"{_s(sum(c.cpu_s for c in costs))} CPU seconds, {_s(sum(c.gpu_s for c in costs))} "
             f"GPU seconds, {_s(unrecorded)} seconds on a device not recorded; {len(unknown)} "
             f"stages without a recorded runtime; {verdicts} judge verdicts, billed "
             f"${sum(c.price for c in billed):.2f}"
             + (f" (+ {len(unpriced)} judged stages whose price is not readable here)"
                if unpriced else "") + ".")
    md = ["## Cost", "",
          "What each stage used, from its own record (COMPLETE `wall_s` and `device`, written by "
          "the store when the stage was published, else the runtime in its metrics.json, which "
          "times the training or generation loop only); judged stages give their verdicts and "
          "what an API judge billed (alpaca_eval's `price_per_example` in annotations.json). "
          "Stages reused from the store cost nothing more in this run.", "", total, "",
          "| stage key | for | device | wall s | GPU s | source | verdicts | price (USD) |",
          "|---|---|---|---|---|---|---|---|"]
    for c in costs:
        price = "–" if c.price is None else f"{c.price:.4f}"
        verdicts = "–" if c.verdicts is None else f"{c.verdicts} ({c.price_source})"
        md.append(f"| `{c.key}` | {escape_md(c.role)} | {c.device} | {_s(c.wall_s)} | "
                  f"{_s(c.gpu_s) if c.gpus else '–'} | {c.source} | {verdicts} | {price} |")
    return md + [""] + training_section(points)


@dataclass
class TrainingCost:
    """What training one arm cost (its finetune stage's metrics.json)."""

    key: str
    arm: str
    seed: int
    group: tuple  # (model, dataset, seed): the arms whose baseline it is compared with
    baseline: bool
    steps: int | None
    seconds: float | None  # the training loop's (train_runtime_s)
    passes: float | None  # forward+backward passes per example and step (None: not recorded)

    @property
    def passes_in_all(self) -> float | None:
        """Passes of the model over each example position of a batch, all steps together."""
        return None if self.steps is None or self.passes is None else self.steps * self.passes


def training_costs(points: list[Point]) -> list[TrainingCost]:
    """Every arm's finetune stage once, in the points' order."""
    seen, out = set(), []
    for p in points:
        for a in p.arms:
            ref = a.stages.get("finetune")
            if ref is None or ref.key in seen:
                continue
            seen.add(ref.key)
            m = ref.metrics
            out.append(TrainingCost(
                ref.key, a.name, a.seed, (p.model, p.dataset, a.seed), a.baseline,
                m.get("train_steps"), m.get("train_runtime_s"), m.get("train_passes_per_example")))
    return out


def training_section(points: list[Point]) -> list[str]:
    """Markdown lines: per trained arm its steps, passes and seconds, and its seconds against
    its baseline's (same model, data and seed)."""
    costs = training_costs(points)
    if not costs:
        return []
    base_s = {c.group: c.seconds for c in costs if c.baseline and c.seconds}
    md = ["### Training cost per arm", "",
          "From each finetune stage's metrics.json: optimiser steps, forward+backward passes of "
          "the model per example and step (1: plain fine-tuning and NEFTune; R3F 2, a clean and "
          "a noised pass; FreeLB K + 1; '–': a stage stored before passes were counted), their "
          "product, and the seconds of the training loop (on the device of its point's config), "
          "also as a multiple of its baseline's (same model, data and seed).", "",
          "| arm | seed | finetune key | steps | passes per example | passes x steps | "
          "train seconds | x baseline |", "|---|---|---|---|---|---|---|---|"]
    for c in costs:
        ref = base_s.get(c.group)
        ratio = "–" if ref is None or c.seconds is None else f"{c.seconds / ref:.2f}"
        passes = "–" if c.passes is None else f"{c.passes:g}"
        total = "–" if c.passes_in_all is None else f"{c.passes_in_all:g}"
        steps = "–" if c.steps is None else str(c.steps)
        md.append(f"| {escape_md(c.arm)} | {c.seed} | `{c.key}` | {steps} | {passes} | {total} | "
                  f"{_s(c.seconds)} | {ratio} |")
    return md + [""]
