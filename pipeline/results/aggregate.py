"""The aggregation step: every table, figure and REPORT.md of an experiment, rebuilt from all its
points (results/<experiment>/points/*.json), each file written under a unique temp name and renamed
into place, so points that finish together (a SLURM array) never tear a file.

Run: python -m pipeline.report results/<experiment>      (the pipeline runs it after every point)
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.core.data import ASSETS
from pipeline.results.cells import write_table
from pipeline.results.points import read_points
from pipeline.results.registry import TABLES
from pipeline.results.report import write_report


def load_paper(source: str) -> dict:
    """The paper's numbers (pkg:<asset> or a path to a YAML file like the shipped one)."""
    path = ASSETS / source[len("pkg:"):] if source.startswith("pkg:") else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"paths.paper_numbers={source!r}: no such file ({path}); "
                                "use pkg:paper_numbers.yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_results(out_dir: Path, paper_numbers: str = "pkg:paper_numbers.yaml") -> Path:
    """Rebuild out_dir's tables, figures and REPORT.md from out_dir/points; returns out_dir."""
    out_dir = Path(out_dir)
    points = read_points(out_dir / "points")
    if not points:
        raise FileNotFoundError(f"{out_dir / 'points'}: no point files; run the experiment first")
    paper = load_paper(paper_numbers)
    sections = []
    for spec in TABLES:
        covered = [p for p in points if spec.covers(p)]
        if not covered:
            sections.append((spec, [], []))
            continue
        write_table(out_dir, spec.build(covered, paper))
        pngs = [name for make in spec.figures for name in make(covered, out_dir)]
        sections.append((spec, covered, pngs))
    write_report(points, out_dir, [s for s in sections if s[0].in_report])
    return out_dir
