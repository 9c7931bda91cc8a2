"""Table cells that carry the stage keys of their numbers, and how tables are written.

A `Cell` is the text shown plus the keys of the stages whose metrics.json it was read from. In
Markdown a keyed cell gets a footnote number and the keys are listed under the table; in CSV every
column with keyed cells gets a "<column> — stage key" column beside it.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.store.store import write_text_atomic
from pipeline.results.points import Arm

KEY_SUFFIX = " — stage key"


@dataclass(frozen=True)
class Cell:
    text: str
    keys: tuple[str, ...] = ()


@dataclass
class Table:
    stem: str  # file name: <stem>.md, <stem>.csv
    caption: str
    header: list[str]
    rows: list[list] = field(default_factory=list)  # Cell or str per column


def fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def metric(arms: list[Arm], stage: str, name: str, digits: int = 2, scale: float = 1.0,
           error: str | None = None) -> Cell:
    """`name` from the `stage` metrics of every seed of an arm: one seed shows its value (and
    ± `error`); several show mean ± sd over seeds."""
    refs = [a.stages[stage] for a in arms if stage in a.stages]
    values = [r.metrics[name] for r in refs if r.metrics.get(name) is not None]
    if not values:
        return Cell("–")
    keys = tuple(r.key for r in refs)
    values = [scale * v for v in values]
    if len(values) == 1:
        text = fmt(values[0], digits)
        if error is not None and refs[0].metrics.get(error) is not None:
            text += f" ± {fmt(scale * refs[0].metrics[error], digits)}"
        return Cell(text, keys)
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return Cell(f"{fmt(mean, digits)} ± {fmt(sd, digits)} (sd, {len(values)} seeds)", keys)


def win_rate(arms: list[Arm], stage: str = "alpaca_eval") -> Cell:
    return metric(arms, stage, "win_rate", error="standard_error")


def lc_win_rate(arms: list[Arm], stage: str = "alpaca_eval") -> Cell:
    """The length-controlled win rate (± its SE where alpaca_eval's GLM gives one)."""
    return metric(arms, stage, "lc_win_rate", error="lc_standard_error")


def _text(cell) -> str:
    return cell.text if isinstance(cell, Cell) else str(cell)


def to_markdown(table: Table) -> str:
    notes: dict[tuple, int] = {}
    lines = [table.caption, "", "| " + " | ".join(table.header) + " |",
             "|" + "---|" * len(table.header)]
    for row in table.rows:
        shown = []
        for cell in row:
            if isinstance(cell, Cell) and cell.keys:
                n = notes.setdefault(cell.keys, len(notes) + 1)
                shown.append(f"{cell.text} [{n}]")
            else:
                shown.append(_text(cell))
        lines.append("| " + " | ".join(shown) + " |")
    if notes:
        lines += ["", "Stage keys (directories under the stage store, each with its metrics.json):"]
        lines += [f"[{n}] " + ", ".join(f"`{k}`" for k in keys) for keys, n in notes.items()]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    keyed = [any(isinstance(r[i], Cell) and r[i].keys for r in table.rows)
             for i in range(len(table.header))]
    header = []
    for name, has in zip(table.header, keyed):
        header += [name, name + KEY_SUFFIX] if has else [name]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        line = []
        for cell, has in zip(row, keyed):
            line.append(_text(cell))
            if has:
                line.append(";".join(cell.keys) if isinstance(cell, Cell) else "")
        writer.writerow(line)
    return out.getvalue()


def write_table(out_dir: Path, table: Table) -> None:
    """<stem>.md and <stem>.csv, each written atomically under a unique temp name."""
    write_text_atomic(Path(out_dir) / f"{table.stem}.csv", to_csv(table))
    write_text_atomic(Path(out_dir) / f"{table.stem}.md", to_markdown(table))
