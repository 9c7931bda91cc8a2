"""The aggregation step: every table, figure and REPORT.md of an experiment, rebuilt from all its
points (results/<experiment>/points/*.json) as one generation: everything is built in a hidden
directory of its own first and moved into place only when all of it is built, so a failure never
leaves tables of two generations side by side, and points that finish together (a SLURM array)
never tear a file. A point file that cannot be read or built from is named, skipped and reported
in REPORT.md; the others are still aggregated.

Run: python -m pipeline.report results/<experiment>      (the pipeline runs it after every point)
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import yaml

from pipeline.data.loading import ASSETS
from pipeline.results.cells import write_table
from pipeline.results.cost import cost_section
from pipeline.results.findings import findings
from pipeline.results.points import Point, read_point_files
from pipeline.results.registry import TABLES
from pipeline.results.report_md import write_report
from pipeline.logs import get_logger

LOG = get_logger("results")

GENERATION = ".generation-"  # hidden: no glob that reads results (*.md, *.png) matches it
ABANDONED_AFTER_S = 3600  # a generation directory this old was left by a killed aggregation
# Below this much free space (or 1% of a small filesystem) a failed write is blamed on the disk
# (as the stage store does: libraries often hide ENOSPC).
LOW_SPACE_BYTES = 16 << 20


class ResultsError(RuntimeError):
    """The results directory cannot be written or has no usable point."""


def load_paper(source: str) -> dict:
    """The paper's numbers (pkg:<asset> or a path to a YAML file like the shipped one)."""
    path = ASSETS / source[len("pkg:") :] if source.startswith("pkg:") else Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"paths.paper_numbers={source!r}: no such file ({path}); use pkg:paper_numbers.yaml"
        )
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def check_writable(out_dir: Path) -> None:
    """Fail now, not after every stage, when results cannot be written to `out_dir`."""
    out_dir = Path(out_dir)
    probe = out_dir / f".writable-{uuid.uuid4().hex}.tmp"
    try:
        (out_dir / "points").mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 65536)  # a table and a figure's worth: a nearly full disk fails too
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise ResultsError(
            f"paths.results: cannot write results to {out_dir} "
            f"({type(err).__name__}: {err}); make it writable, free space there "
            "or set paths.results to another directory"
        ) from err
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def _usable(points: list[tuple[Path, Point]], paper: dict) -> tuple[list, list]:
    """(points every table and the findings can be built from, [(file, why)] of the others)."""
    good, bad = [], []
    for path, point in points:
        try:
            for spec in TABLES:
                if spec.covers(point):
                    spec.build([point], paper)
            findings([point], paper)
            cost_section([point])
        except Exception as err:  # noqa: BLE001  (any damage: the file is named and skipped)
            bad.append((path, f"cannot be built from ({type(err).__name__}: {err})"))
            continue
        good.append(point)
    return good, bad


def _build(out_dir: Path, stage: Path, points: list[Point], paper: dict, skipped: list) -> None:
    sections = []
    for spec in TABLES:
        covered = [p for p in points if spec.covers(p)]
        if not covered:
            sections.append((spec, [], []))
            continue
        write_table(stage, spec.build(covered, paper))
        pngs = [name for make in spec.figures for name in make(covered, stage)]
        sections.append((spec, covered, pngs))
    write_report(
        points,
        stage,
        [s for s in sections if s[0].in_report],
        skipped=skipped,
        study_dir=out_dir,
        paper=paper,
    )


def _sweep_abandoned(out_dir: Path) -> None:
    for old in out_dir.glob(f"{GENERATION}*"):
        try:
            if time.time() - old.stat().st_mtime > ABANDONED_AFTER_S:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:
            pass


def write_results(out_dir: Path, paper_numbers: str = "pkg:paper_numbers.yaml") -> Path:
    """Rebuild out_dir's tables, figures and REPORT.md from out_dir/points; returns out_dir."""
    out_dir = Path(out_dir)
    points, skipped = read_point_files(out_dir / "points")
    paper = load_paper(paper_numbers)
    points, unusable = _usable(points, paper)
    skipped = sorted(skipped + unusable)
    for path, why in skipped:
        LOG.warning("skipped point file %s: %s", path, why)
    if not points:
        raise ResultsError(
            f"{out_dir / 'points'}: no usable point files"
            + (f" ({len(skipped)} skipped, see above)" if skipped else "")
            + "; run the experiment first"
        )
    _sweep_abandoned(out_dir)
    stage = out_dir / f"{GENERATION}{uuid.uuid4().hex}"
    try:
        stage.mkdir()
        _build(out_dir, stage, points, paper, skipped)
        for built in sorted(stage.iterdir()):  # REPORT.md last: it names the files before it
            if built.name != "REPORT.md":
                os.replace(built, out_dir / built.name)
        os.replace(stage / "REPORT.md", out_dir / "REPORT.md")
    except Exception as err:
        full = _full_disk_message(err, out_dir)
        if full is None:
            raise
        raise ResultsError(full) from err
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out_dir


def _full_disk_message(err: Exception, out_dir: Path) -> str | None:
    """What to tell the user when `err` came from a full filesystem under `out_dir`, else None.

    PIL and a flush report ENOSPC without a path; the figure writer adds the figure's."""
    try:
        usage = shutil.disk_usage(out_dir)
        free, nearly_full = usage.free, usage.free < min(LOW_SPACE_BYTES, usage.total // 100)
    except OSError:
        free, nearly_full = "?", False
    if not nearly_full and getattr(err, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
        return None
    name = getattr(err, "filename", None)
    # A temp file of an atomic write (.<name>.<hex>.tmp) is reported by the file it was to be.
    name = name and re.sub(r"^\.(.+)\.[0-9a-f]{32}\.tmp$", r"\1", Path(name).name)
    writing = f" while writing {name}" if name else ""
    return (
        f"paths.results: no space left in {out_dir}{writing} ({free} bytes free); free space "
        "there or set paths.results to a larger filesystem, then rerun: every stage is reused "
        "from the store and only the tables, figures and REPORT.md are rebuilt"
    )
