"""tables stage: paper-shaped tables (Table 1 win rates, Table 4 length/diversity, Figure 3 leaderboard) and figures from an
experiment's stage outputs, with the paper's figures (../shared/paper_numbers.md) beside ours.

Writes results/<experiment>/table1, table4, figure3, noise_grid (.md + .csv), winrate.png, lengths.png, openllm.png,
from every point of the experiment (results/<experiment>/points/*.json: one per run or sweep point).
Run: python -m pipeline.run            (ends by writing results/default/)
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from pipeline.store import write_json_atomic

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
    header = ["row"] + [f"ours: {p['dataset']}, {p['noise']} (K={p['cutoff']})" for p in points] + [f"paper: {c}" for c in paper_cols]
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


OPENLLM_TASKS = ("arc", "hellaswag", "mmlu", "truthfulqa")
PAPER_FIG3_MODELS = {"llama2-7b": "LLaMA-2-7B", "llama1-7b": "LLaMA-1-7B"}


def figure3_table(points: list[dict], paper: dict, out_dir: Path) -> None:
    """Leaderboard scores (%) per task and their average, base vs +NEFT; ours then the paper's (Figure 3)."""
    header = ["source", "model, data", "arm", "ARC", "HellaSwag", "MMLU", "TruthfulQA", "average"]
    rows = []
    for p in points:
        for arm, field in (("base", "base_openllm"), ("+NEFT", "neft_openllm")):
            m = p[field]
            if m:
                scores = [100 * m[f"openllm_{t}"] for t in OPENLLM_TASKS]
                rows.append(["ours", f"{p['model']}, {p['dataset']}", arm] + [_fmt(x, 1) for x in scores] + [_fmt(100 * m["openllm_average"], 1)])
    for r in paper.get("Figure 3", [])[1:]:
        for arm, cell in (("base", r[1]), ("+NEFT", r[2])):
            scores = [float(x) for x in cell.split("/")]
            rows.append(["paper (≈, read off a chart)", r[0], arm] + [_fmt(x, 1) for x in scores] + [_fmt(sum(scores) / 4, 1)])
    settings = "; ".join(
        f"{p['model']}, {p['dataset']}: {p['openllm_config']} ({p['openllm_task_set']} task set, shots "
        + ", ".join(f"{t} {n}" for t, n in p["openllm_shots"].items())
        + (f", at most {p['openllm_limit']} questions per task" if p["openllm_limit"] else "") + ")"
        for p in points)
    caption = ("Figure 3 — Open LLM Leaderboard tasks (%), lm-eval. 'ours' computed by this run with " + settings
               + ". The leaderboard uses ARC 25-shot, HellaSwag 10-shot, MMLU 5-shot, TruthfulQA 0-shot on the full "
               "datasets; a local task set, fewer shots or a limit make our numbers a smoke test of the same code path, "
               "not comparable to the paper's. 'paper' rows: Jain et al. 2023, Figure 3.")
    _write(out_dir, "figure3", header, rows, caption)


ARMS = (("base", "#999999"), ("+NEFT", "#d62728"))


def _grouped_bars(ax, ticks: list[str], series: list[tuple[str, str, list, list | None]], ylabel: str, title: str) -> None:
    """Bars of each (label, color, values, errors) series side by side at every tick."""
    width = 0.8 / len(series)
    for k, (label, color, values, errors) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(ticks))], values, width, yerr=errors, color=color, label=label)
    ax.set_xticks(list(range(len(ticks))), ticks)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()


def figures(points: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 2.2 * len(points)), 3.5))
    series = [(label, color, [p[arm]["win_rate"] if p[arm] else 0 for p in points],
               [p[arm]["standard_error"] if p[arm] else 0 for p in points])
              for (label, color), arm in zip(ARMS, ("base", "neft"))]
    _grouped_bars(ax, [f"{p['dataset']}, {p['noise']}\n({p['model']})" for p in points], series,
                  "win rate vs reference (%)", f"AlpacaEval win rate, judge: {points[0]['judge']}")
    ax.axhline(50, color="black", lw=0.5, ls=":")
    fig.tight_layout()
    fig.savefig(out_dir / "winrate.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(points), figsize=(6 * len(points), 3.5), squeeze=False)
    for ax, p in zip(axes[0], points):
        series = [(label, color, [100 * p[field][f"openllm_{t}"] for t in OPENLLM_TASKS] + [100 * p[field]["openllm_average"]], None)
                  for (label, color), field in zip(ARMS, ("base_openllm", "neft_openllm")) if p[field]]
        _grouped_bars(ax, ["ARC", "HellaSwag", "MMLU", "TruthfulQA", "average"], series, "score (%)",
                      f"{p['model']}, {p['dataset']} ({p['openllm_config']})")
    fig.tight_layout()
    fig.savefig(out_dir / "openllm.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(points), figsize=(5 * len(points), 3.5), squeeze=False)
    for ax, p in zip(axes[0], points):
        longest = max(p["base_lengths"] + (p["neft_lengths"] or []))
        bins = [longest * i / 20 for i in range(21)]  # shared bins, so the two histograms compare bar by bar
        for (label, color), lengths in zip(ARMS, (p["base_lengths"], p["neft_lengths"])):
            if lengths:
                ax.hist(lengths, bins=bins, alpha=0.6, color=color, label=label)
        ax.set_xlabel("output length (characters)")
        ax.set_ylabel("outputs")
        ax.set_title(f"{p['dataset']}, {p['noise']}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "lengths.png", dpi=120)
    plt.close(fig)


def noise_grid(points: list[dict], paper: dict, out_dir: Path) -> None:
    """Every noise setting of the experiment (the baseline once per model/data), Table-6-like."""
    header = ["model, data", "noise", "win rate vs reference", "vs base (head to head)", "mean characters",
              "whitespace tokens", "log-diversity", "openllm average (%)"]
    rows, seen = [], set()
    for p in sorted(points, key=lambda p: (p["model"], p["dataset"], p["alpha"], p["noise"])):
        arms = [("base", p["base"], None, p["base_analysis"], p["base_openllm"])]
        if p["neft"]:
            arms.append((p["noise"], p["neft"], p["head_to_head"], p["neft_analysis"], p["neft_openllm"]))
        for label, wr, h2h, an, ol in arms:
            if (p["model"], p["dataset"], label) in seen:
                continue
            seen.add((p["model"], p["dataset"], label))
            rows.append([f"{p['model']}, {p['dataset']}", label, f"{_fmt(wr['win_rate'])} ± {_fmt(wr['standard_error'])}",
                         f"{_fmt(h2h['win_rate'])} ± {_fmt(h2h['standard_error'])}" if h2h else "–",
                         _fmt(an["chars_mean"], 1), _fmt(an["words_mean"], 1), _fmt(an["log_diversity"]),
                         _fmt(100 * ol["openllm_average"], 1)])
    paper_rows = paper.get("Table 6", [])[1:]
    caption = ("Noise settings — every arm of this experiment, computed by this run (judge: "
               + ", ".join(sorted({p["judge"] for p in points})) + "). Paper, Table 6 (ChatGPT judge, Alpaca / Evol-Instruct / "
               "OpenPlatypus): " + "; ".join(f"{r[0]}: {r[1]}" for r in paper_rows) + ".")
    _write(out_dir, "noise_grid", header, rows, caption)


def tables(point: dict, experiment: str, results_root: Path, paper_numbers: Path) -> Path:
    """Add `point` to results/<experiment>/points/ and rewrite every table and figure from all points there."""
    out_dir = Path(results_root) / experiment
    (out_dir / "points").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "points" / f"{point['id']}.json", point)
    points = [json.loads(f.read_text()) for f in sorted((out_dir / "points").glob("*.json"))]
    points.sort(key=lambda p: (p["model"], p["dataset"], p["alpha"], p["noise"]))
    paper = read_paper_tables(paper_numbers)
    table1(points, paper, out_dir)
    table4(points, paper, out_dir)
    figure3_table(points, paper, out_dir)
    noise_grid(points, paper, out_dir)
    figures(points, out_dir)
    return out_dir
