"""A human study: the pairs (instruction, base answer, +NEFT answer) of one point of an experiment.

A study pairs a point's baseline arm with one non-baseline arm of the same seed. Its directory in
the stage store, human_study-<readable>-<hash of the two generate keys>/, holds study.json (the
pairs, fixed once written) and, by default, votes.sqlite. Answers are stored as base = output_1,
+NEFT = output_2 (alpaca_eval's convention); what an annotator sees is shuffled per annotator.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.logs import get_logger
from pipeline.store.store import readable_of, write_json_atomic

LOG = get_logger("human")

PREFIX = "human_study"
JUDGE_STAGE = "head_to_head"  # arms' stages whose name starts so: a judge of +NEFT vs base


class StudyError(ValueError):
    """The experiment cannot hold a study (no points, missing stage, mismatched outputs)."""


@dataclass
class Study:
    """One study: its id and directory, the two arms and the pairs (base = output_1)."""

    id: str
    dir: Path
    experiment: str
    point_id: str
    point_file: Path
    store: Path
    base: dict  # {"arm", "seed", "generate_key", "generator"}
    neft: dict
    pairs: list[dict]  # {"id", "instruction", "output_1", "output_2", "dataset"}
    judges: list[dict] = field(default_factory=list)  # {"name", "key", "metrics", "scored"}

    @property
    def default_db_url(self) -> str:
        return f"sqlite:///{self.dir / 'votes.sqlite'}"

    def pair(self, pair_id: int) -> dict | None:
        return self.pairs[pair_id] if 0 <= pair_id < len(self.pairs) else None


def sequence_for(study: Study, annotator: str) -> list[tuple[int, bool]]:
    """The annotator's (pair id, swapped) sequence: shuffled, seeded by study id and annotator,
    so a reload or a restarted server shows the same order. swapped: +NEFT is shown as A."""
    seed = hashlib.sha256(f"{study.id}\0{annotator}".encode()).digest()
    rng = random.Random(seed)
    order = list(range(len(study.pairs)))
    rng.shuffle(order)
    return [(pid, rng.random() < 0.5) for pid in order]


def _points(exp_dir: Path, experiment: str) -> list[tuple[Path, dict]]:
    files = sorted(f for f in (exp_dir / "points").glob("*.json") if not f.name.startswith("."))
    if not files:
        raise StudyError(
            f"no point files in {exp_dir / 'points'}: run the experiment first "
            f"(python -m pipeline.run experiment={experiment}), or pass --results "
            f"with the directory that holds {experiment}/points/"
        )
    return [(f, json.loads(f.read_text(encoding="utf-8"))) for f in files]


def _arm_pairs(point: dict, pfile: Path) -> list[tuple[dict, dict]]:
    """(baseline arm, non-baseline arm) of the same seed, in the point's arm order."""
    arms = point.get("arms")
    if not isinstance(arms, list):
        raise StudyError(
            f"{pfile} has no 'arms' list: rerun the experiment with this version of "
            f"the pipeline to rewrite its point files"
        )
    base_by_seed = {a["seed"]: a for a in arms if a.get("baseline")}
    return [
        (base_by_seed[a["seed"]], a)
        for a in arms
        if not a.get("baseline") and a["seed"] in base_by_seed
    ]


def _outputs(store: Path, arm: dict, pfile: Path) -> tuple[str, list[dict]]:
    stage = arm["stages"].get("generate")
    if stage is None:
        raise StudyError(
            f"{pfile}: arm {arm['name']!r} has no generate stage: rerun the experiment"
        )
    path = store / stage["key"] / "outputs.json"
    if not path.is_file():
        raise StudyError(
            f"{path} is missing (generate stage of arm {arm['name']!r} in {pfile}): "
            f"pass --store with the store that holds it, or rerun the experiment to "
            f"recompute it"
        )
    return stage["key"], json.loads(path.read_text(encoding="utf-8"))


def _judges(store: Path, arms: tuple[dict, dict]) -> list[dict]:
    """The point's judge stages of +NEFT vs base (scored.json: output_1 = base, 2 = +NEFT)."""
    found: dict[str, dict] = {}
    for arm in arms:
        for name, stage in arm["stages"].items():
            if name.startswith(JUDGE_STAGE) and stage["key"] not in found:
                scored = store / stage["key"] / "scored.json"
                found[stage["key"]] = {
                    "name": f"{name} ({readable_of(stage['key'])})",
                    "key": stage["key"],
                    "metrics": stage.get("metrics", {}),
                    "scored": scored if scored.is_file() else None,
                }
    return list(found.values())


def study_id(base_key: str, neft_key: str) -> str:
    """human_study-<readable of the +NEFT generate key>-<hash of both generate keys>."""
    digest = hashlib.sha256(f"{base_key}\n{neft_key}".encode()).hexdigest()[:12]
    return f"{PREFIX}-{readable_of(neft_key)}-{digest}"


def _build(
    exp_dir: Path,
    experiment: str,
    pfile: Path,
    point: dict,
    base: dict,
    neft: dict,
    store: Path | None,
) -> Study:
    store = Path(store or point["store"])
    base_key, base_out = _outputs(store, base, pfile)
    neft_key, neft_out = _outputs(store, neft, pfile)
    b_instr = [o["instruction"] for o in base_out]
    n_instr = [o["instruction"] for o in neft_out]
    if b_instr != n_instr:
        at = next(
            (i for i, (x, y) in enumerate(zip(b_instr, n_instr)) if x != y),
            min(len(b_instr), len(n_instr)),
        )
        raise StudyError(
            f"{store / base_key / 'outputs.json'} and {store / neft_key / 'outputs.json'} do not "
            f"hold the same instructions ({len(b_instr)} vs {len(n_instr)}, first difference at "
            f"#{at}): regenerate both arms on the same evaluation set"
        )
    pairs = [
        {
            "id": i,
            "instruction": b["instruction"],
            "output_1": b["output"],
            "output_2": n["output"],
            "dataset": b.get("dataset", ""),
        }
        for i, (b, n) in enumerate(zip(base_out, neft_out, strict=True))
    ]
    if not pairs:
        raise StudyError(f"{store / base_key / 'outputs.json'} holds no outputs")
    sid = study_id(base_key, neft_key)
    arm = {"base": (base, base_key, base_out), "neft": (neft, neft_key, neft_out)}
    info = {
        k: {
            "arm": a["name"],
            "seed": a["seed"],
            "generate_key": key,
            "generator": out[0].get("generator", a["name"]),
        }
        for k, (a, key, out) in arm.items()
    }
    return Study(
        sid,
        store / sid,
        experiment,
        str(point.get("id", pfile.stem)),
        pfile,
        store,
        info["base"],
        info["neft"],
        pairs,
        _judges(store, (base, neft)),
    )


def load_study(
    results: Path,
    experiment: str,
    point: str | None = None,
    arm: str | None = None,
    store: Path | None = None,
) -> Study:
    """The study of `experiment` (default: first point, its first non-baseline arm)."""
    exp_dir = Path(results) / experiment
    points = _points(exp_dir, experiment)
    if point is not None:
        points = [(f, p) for f, p in points if str(p.get("id")) == point or f.stem == point]
        if not points:
            raise StudyError(
                f"no point with id {point!r} in {exp_dir / 'points'}: "
                f"see the file names there for the ids"
            )
    pfile, pdata = points[0]
    candidates = _arm_pairs(pdata, pfile)
    if arm is not None:
        candidates = [c for c in candidates if c[1]["name"] == arm]
    if not candidates:
        names = [a.get("name") for a in pdata.get("arms", []) if not a.get("baseline")]
        raise StudyError(
            f"{pfile}: no non-baseline arm{f' named {arm!r}' if arm else ''} with a "
            f"baseline arm of the same seed (non-baseline arms: {names}); "
            f"choose one with --arm"
        )
    return _build(exp_dir, experiment, pfile, pdata, *candidates[0], store)


def existing_studies(results_dir: Path, store: Path | None = None) -> list[Study]:
    """Every study of the experiment in `results_dir` whose directory exists (for the report)."""
    results_dir = Path(results_dir)
    found = []
    for pfile in sorted((results_dir / "points").glob("*.json")):
        try:  # a damaged or hidden point file is the aggregation's to name, not the report's
            pdata = json.loads(pfile.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if pfile.name.startswith(".") or not isinstance(pdata, dict):
            continue
        try:
            pairs = _arm_pairs(pdata, pfile)
        except StudyError:
            continue
        for base, neft in pairs:
            root = Path(store or pdata.get("store", ""))
            keys = [a["stages"].get("generate", {}).get("key") for a in (base, neft)]
            if None in keys or not (root / study_id(*keys) / "study.json").is_file():
                continue
            try:
                found.append(_build(results_dir, results_dir.name, pfile, pdata, base, neft, root))
            except StudyError as err:  # a broken study must not break the whole report
                LOG.warning("study %s skipped: %s", study_id(*keys), err)
    return found


def ensure_dir(study: Study) -> Path:
    """Create the study directory and its study.json (written once; the pairs never change)."""
    study.dir.mkdir(parents=True, exist_ok=True)
    path = study.dir / "study.json"
    if not path.exists():
        write_json_atomic(
            path,
            {
                "id": study.id,
                "experiment": study.experiment,
                "point": study.point_id,
                "point_file": str(study.point_file),
                "base": study.base,
                "neft": study.neft,
                "convention": "output_1 = base, output_2 = +NEFT",
                "pairs": study.pairs,
            },
        )
    return path
