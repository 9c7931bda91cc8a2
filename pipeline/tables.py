"""tables stage: paper-shaped tables (Table 1 win rates, Table 4 length/diversity) and figures from an
experiment's stage outputs, with the paper's figures (../shared/paper_numbers.md) beside ours.

Writes results/<experiment>/table1.{md,csv}, table4.{md,csv}, winrate.png, lengths.png.
Run: python -m pipeline.run            (ends by writing results/default/)
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

PAPER_DATASETS = {"alpaca": "Alpaca", "evol-instruct": "Evol-Instruct", "sharegpt": "ShareGPT", "open-platypus": "OpenPlatypus"}
TABLE4_ROWS = [  # (paper row prefix, our arm, our metric)
    ("characters", "chars_mean"),
    ("whitespace tokens", "words_mean"),
    ("2-gram repetition %", "rep2_pct"),
    ("log-diversity", "log_diversity"),
]


def read_paper_tables(path: Path) -> dict[str, list[list[str]]]:
    """Markdown tables of paper_numbers.md by section title prefix ("Table 1", "Table 4", ...); {} if absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    tables: dict[str, list[list[str]]] = {}
    section = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].split(" — ")[0].strip()
            tables[section] = []
        elif section and line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            tables[section].append([c.strip() for c in line.strip().strip("|").split("|")])
    return tables


def _fmt(x, digits=2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _write(out_dir: Path, stem: str, header: list[str], rows: list[list[str]], caption: str) -> None:
    with open(out_dir / f"{stem}.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    md = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    (out_dir / f"{stem}.md").write_text("\n".join(md) + "\n", encoding="utf-8")


def table1(points: list[dict], paper: dict, out_dir: Path) -> None:
    """Win rate, base vs +NEFT, per dataset: ours and the paper's (LLaMA-2-7B, GPT-4 judge)."""
    paper_rows = {r[0]: r for r in paper.get("Table 1", [])[1:]}
    header = ["dataset", "ours: model", "ours: judge / reference", "ours: base", "ours: +NEFT", "ours: alpha",
              "ours: +NEFT vs base (head to head)", "paper: base", "paper: +NEFT", "paper: alpha"]
    rows, covered = [], set()
    for p in points:
        pname = PAPER_DATASETS.get(p["dataset"])
        pr = paper_rows.get(pname, ["", "–", "–", "–"])
        covered.add(pname)
        rows.append([p["dataset"], p["model"], f"{p['judge']} / {p['reference']}",
                     f"{_fmt(p['base']['win_rate'])} ± {_fmt(p['base']['standard_error'])}",
                     f"{_fmt(p['neft']['win_rate'])} ± {_fmt(p['neft']['standard_error'])}" if p["neft"] else "–",
                     _fmt(p["alpha"], 0) if p["neft"] else "–",
                     f"{_fmt(p['head_to_head']['win_rate'])} ± {_fmt(p['head_to_head']['standard_error'])}" if p["head_to_head"] else "–",
                     pr[1], pr[2], pr[3]])
    for name, pr in paper_rows.items():
        if name not in covered:
            rows.append([f"{name} (paper only)", "–", "–", "–", "–", "–", "–", pr[1], pr[2], pr[3]])
    caption = ("Table 1 — AlpacaEval win rate (%) ± standard error. 'ours' columns were computed by this run; "
               "'paper' columns are Jain et al. 2023, Table 1 (LLaMA-2-7B, GPT-4 judge, AlpacaEval 1 vs text-davinci-003)"
               + ("" if paper_rows else " — paper numbers not found, columns left empty") + ".")
    _write(out_dir, "table1", header, rows, caption)


def table4(points: list[dict], paper: dict, out_dir: Path) -> None:
    """Length and diversity rows as in the paper's Table 4; our datasets first, then the paper's columns."""
    paper_rows = paper.get("Table 4", [])
    paper_cols = paper_rows[0][1:] if paper_rows else []
    by_row = {r[0]: r[1:] for r in paper_rows[1:]}
    header = ["row"] + [f"ours: {p['dataset']} (K={p['cutoff']})" for p in points] + [f"paper: {c}" for c in paper_cols]
    rows = []
    for label, metric in TABLE4_ROWS:
        arms = [("training data", "train")] if metric == "chars_mean" else []
        arms += [("base", "base_analysis"), ("+NEFT", "neft_analysis")]
        for arm_label, field in arms:
            ours = [_fmt((p[field] or {}).get(metric)) for p in points]
            theirs = by_row.get(f"{arm_label}, {label}", ["–"] * len(paper_cols))
            rows.append([f"{arm_label}, {label}"] + ours + theirs)
    kept = [f"{p['dataset']}: base {p['base_analysis']['n_kept']}/{p['base_analysis']['n_total']}"
            + (f", +NEFT {p['neft_analysis']['n_kept']}/{p['neft_analysis']['n_total']}" if p["neft_analysis"] else "")
            for p in points]
    caption = ("Table 4 — length and diversity of the outputs. 'ours' computed by this run (repetition and "
               "log-diversity on the first K whitespace tokens; outputs shorter than K dropped, kept: " + "; ".join(kept)
               + "); 'paper' columns are Jain et al. 2023, Table 4 (LLaMA-2-7B).")
    _write(out_dir, "table4", header, rows, caption)


def figures(points: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 2.2 * len(points)), 3.5))
    xs = range(len(points))
    for offset, arm, color in ((-0.2, "base", "#999999"), (0.2, "neft", "#d62728")):
        vals = [p[arm]["win_rate"] if p[arm] else 0 for p in points]
        errs = [p[arm]["standard_error"] if p[arm] else 0 for p in points]
        ax.bar([x + offset for x in xs], vals, 0.4, yerr=errs, color=color, label="base" if arm == "base" else "+NEFT")
    ax.set_xticks(list(xs), [f"{p['dataset']}\n({p['model']})" for p in points])
    ax.set_ylabel(f"win rate vs reference (%)")
    ax.set_title(f"AlpacaEval win rate, judge: {points[0]['judge']}")
    ax.axhline(50, color="black", lw=0.5, ls=":")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "winrate.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(points), figsize=(5 * len(points), 3.5), squeeze=False)
    for ax, p in zip(axes[0], points):
        for arm, color in (("base", "#999999"), ("neft", "#d62728")):
            if p[f"{arm}_lengths"]:
                ax.hist(p[f"{arm}_lengths"], bins=20, alpha=0.6, color=color, label="base" if arm == "base" else "+NEFT")
        ax.set_xlabel("output length (characters)")
        ax.set_ylabel("outputs")
        ax.set_title(p["dataset"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "lengths.png", dpi=120)
    plt.close(fig)


def tables(points: list[dict], experiment: str, results_root: Path, paper_numbers: Path) -> Path:
    """Write every table and figure of `points` (one dict per dataset/model point) to results/<experiment>/."""
    out_dir = Path(results_root) / experiment
    out_dir.mkdir(parents=True, exist_ok=True)
    paper = read_paper_tables(paper_numbers)
    table1(points, paper, out_dir)
    table4(points, paper, out_dir)
    figures(points, out_dir)
    (out_dir / "points.json").write_text(json.dumps(
        [{k: v for k, v in p.items() if not k.endswith("_lengths")} for p in points], indent=1))
    return out_dir
