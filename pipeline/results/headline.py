"""What the end of a run says about its results: where REPORT.md is and its first finding.

Run: pipeline.run prints report_lines(results/<experiment>) last.
"""

from __future__ import annotations

import re
from pathlib import Path

KEY_REF = re.compile(r"\s*\[[^\]]*`[^`]*`[^\]]*\]\s*$")  # a trailing [`stage key`, ...]


def _plain(markdown: str) -> str:
    return KEY_REF.sub("", markdown).replace("**", "").replace("`", "").strip(" -")


def _clauses(text: str, keep: int) -> str:
    """The first `keep` clauses of a finding ('; ' outside parentheses ends one): the effect
    with its CI and n, and what the CI says; what the design could detect is in the report."""
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and text.startswith("; ", i):
            parts.append(text[start:i])
            start = i + 2
    parts.append(text[start:])
    short = "; ".join(parts[:keep])
    return short if short.endswith(".") else short + "."


def first_finding(report: str) -> str | None:
    """The first finding of a REPORT.md's Findings block, as plain text: its first measured
    effect with the comparison it belongs to ('neft-uniform5 vs base: win rate vs the
    reference: ...'), or the block's first line where no effect was measured."""
    lines = report.splitlines()
    try:
        start = lines.index("## Findings")
    except ValueError:
        return None
    heading = None
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("- **") and "**" in line[4:]:
            heading = line[4 : line.index("**", 4)]
            continue
        if line.startswith("  - ") and heading is not None:
            return f"{heading}: {_clauses(_plain(line), 2)}"
        if line.startswith("- "):
            return _plain(line)
    return None


def report_lines(out_dir: Path) -> list[str]:
    """'report: <path of REPORT.md>' and 'first finding: ...' (the latter where there is one)."""
    report = Path(out_dir).resolve() / "REPORT.md"
    if not report.is_file():
        return []
    lines = [f"report: {report}"]
    finding = first_finding(report.read_text(encoding="utf-8"))
    if finding:
        lines.append(f"first finding: {finding}")
    return lines
