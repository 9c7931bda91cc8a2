"""Typed results of one experiment point, written as results/<experiment>/points/<id>.json.

Every number a table shows is read from a `StageRef`: the stage key that computed it and that
stage's metrics.json, so a table cell can name (and link) the stage directory it came from.
Arms, seeds, length-control variants and head-to-head comparisons are lists, not name prefixes;
every record is built by keyword (kw_only), so a field added or moved cannot shift the others.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = 2  # 2: `extra` renamed `point_stages` (it holds the judge's calibration too)
# Point files of an older schema that this version still reads, and how each differs.
READABLE = {1: {"rename": {"extra": "point_stages"}}}


@dataclass(frozen=True, kw_only=True)
class StageRef:
    """One computed stage: its key (the directory under the store) and its metrics."""

    key: str
    metrics: dict


@dataclass(kw_only=True)
class Arm:
    """One fine-tuned model of a point (a noise setting x a seed) and the stages run on it."""

    name: str  # display name of the noise setting: base, neft-uniform5, neft-gaussian5-padded
    baseline: bool  # noise off
    seed: int  # finetune seed
    noise: dict  # {"kind": none|uniform|gaussian, "alpha": float, "length": ...}
    stages: dict[str, StageRef] = field(default_factory=dict)


@dataclass(kw_only=True)
class Variant:
    """A length-control generation of the baseline model (Table 5) and the stages run on it."""

    name: str
    seed: int
    setting: dict  # instruction_suffix, min_new_tokens, max_new_tokens
    stages: dict[str, StageRef] = field(default_factory=dict)


@dataclass(kw_only=True)
class Comparison:
    """+NEFT judged directly against the baseline of the same seed (the head-to-head)."""

    arm: str
    baseline: str
    seed: int
    stages: dict[str, StageRef] = field(default_factory=dict)


@dataclass(kw_only=True)
class Effect:
    """+NEFT minus the baseline on every measure, with CIs, pooled over seeds (compare stage)."""

    arm: str
    baseline: str
    seeds: list[int]
    stages: dict[str, StageRef] = field(default_factory=dict)


@dataclass(kw_only=True)
class Point:
    """Everything one run (one sweep point) computed, with the keys of the stages that did it."""

    id: str
    name: str | None
    experiment: str
    store: str  # absolute path of the stage store the keys live in
    model: str
    dataset: str
    judge: str
    reference: str
    setting: dict  # what the run was, for "where we differ from the paper" notes
    arms: list[Arm]
    variants: list[Variant] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    # Stages run once per point, not per arm: the training data's Table-4 row (train_analysis)
    # and the judge's calibration (judge_calibration).
    point_stages: dict[str, StageRef] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    choices: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    schema: int = SCHEMA

    def arms_named(self, name: str) -> list[Arm]:
        """Every seed of the arm `name` (or of the baseline when name is "base")."""
        return [a for a in self.arms if a.name == name]

    @property
    def baseline(self) -> list[Arm]:
        return [a for a in self.arms if a.baseline]

    @property
    def treated(self) -> list[str]:
        """Names of the non-baseline arms, in order."""
        return list(dict.fromkeys(a.name for a in self.arms if not a.baseline))

    def stage_path(self, key: str) -> Path:
        return Path(self.store) / key

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Point:
        data = _upgraded(data)
        if data.get("schema") != SCHEMA:
            raise ValueError(
                f"point {data.get('id')!r}: schema {data.get('schema')!r}, expected "
                f"{SCHEMA}; rerun the point to rewrite it"
            )

        def refs(stages: dict) -> dict[str, StageRef]:
            return {k: StageRef(**v) for k, v in stages.items()}

        fields = dict(data)
        fields["arms"] = [Arm(**{**a, "stages": refs(a["stages"])}) for a in data["arms"]]
        fields["variants"] = [
            Variant(**{**v, "stages": refs(v["stages"])}) for v in data["variants"]
        ]
        fields["comparisons"] = [
            Comparison(**{**c, "stages": refs(c["stages"])}) for c in data["comparisons"]
        ]
        fields["effects"] = [Effect(**{**e, "stages": refs(e["stages"])}) for e in data["effects"]]
        fields["point_stages"] = refs(data["point_stages"])
        return cls(**fields)


def _upgraded(data: dict) -> dict:
    """A point file of an older schema in this schema's shape (the committed studies and every
    results/<experiment>/points/ written before stay readable without rerunning them)."""
    change = READABLE.get(data.get("schema")) if isinstance(data, dict) else None
    if change is None:
        return data
    data = {change["rename"].get(k, k): v for k, v in data.items()}
    return data | {"schema": SCHEMA}


def _parsed(path: Path, data) -> Point:
    if not isinstance(data, dict):
        raise ValueError(f"top level is {type(data).__name__}, expected a point object")
    point = Point.from_json(data)
    refs = [
        r
        for a in point.arms + point.variants + point.comparisons + point.effects
        for r in a.stages.values()
    ] + list(point.point_stages.values())
    for ref in refs:
        if not isinstance(ref.metrics, dict) or not ref.metrics:
            raise ValueError(
                f"stage {ref.key}: metrics are {ref.metrics!r}, expected an object with its numbers"
            )
    return point


def read_point_files(points_dir: Path) -> tuple[list[tuple[Path, Point]], list[tuple[Path, str]]]:
    """([(file, point)] sorted by model, data and noise, [(file, why)] of files skipped).

    Hidden files (temp files of writers) are not points. A file that is no point this version
    can read, or repeats the id of another (only the file named after the id is kept), is
    skipped and named, so that one damaged file cannot stop the aggregation of the others."""
    files = sorted(f for f in Path(points_dir).glob("*.json") if not f.name.startswith("."))
    read, skipped = [], []
    for f in files:
        try:
            read.append((f, _parsed(f, json.loads(f.read_text(encoding="utf-8")))))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            skipped.append(
                (
                    f,
                    f"not a point file this version can read ({type(err).__name__}: "
                    f"{err}); rerun its point or delete the file",
                )
            )
    by_id: dict[str, list[Path]] = {}
    for f, point in read:
        by_id.setdefault(point.id, []).append(f)
    kept = []
    for f, point in read:
        owners = by_id[point.id]
        if len(owners) > 1 and f.stem != point.id:
            names = ", ".join(o.name for o in owners)
            skipped.append(
                (
                    f,
                    f"repeats point id {point.id} ({names}); only a file named "
                    f"{point.id}.json is read: delete the copies",
                )
            )
            continue
        kept.append((f, point))
    kept.sort(key=lambda fp: (fp[1].model, fp[1].dataset, _first_alpha(fp[1]), fp[1].treated))
    return kept, skipped


def read_points(points_dir: Path) -> list[Point]:
    """Every readable point file of an experiment, sorted by model, data and noise."""
    return [point for _, point in read_point_files(points_dir)[0]]


def _first_alpha(point: Point) -> float:
    treated = [a for a in point.arms if not a.baseline]
    return float(treated[0].noise["alpha"]) if treated else 0.0
