"""tables stage: paper-shaped tables (Table 1 win rates, Table 4 length/diversity, Figure 3 leaderboard) and figures from an
experiment's stage outputs, with the paper's figures (../shared/paper_numbers.md) beside ours.

Writes results/<experiment>/table1, table3, table4, table5, table6, figure3, overfit, noise_grid (.md + .csv), winrate.png,
lengths.png, openllm.png, overfit_loss.png, overfit_overlap.png (each when some point covers it) and REPORT.md, from every point of the experiment (results/<experiment>/points/*.json: one per run or sweep point).
Run: python -m pipeline.run            (ends by writing results/default/)
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from pipeline.results.report import write_report
from pipeline.core.store import write_json_atomic

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

    scored = [p for p in points if p["base_openllm"]]
    fig, axes = plt.subplots(1, max(1, len(scored)), figsize=(6 * max(1, len(scored)), 3.5), squeeze=False)
    for ax, p in zip(axes[0], scored):
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
                         _fmt(100 * ol["openllm_average"], 1) if ol else "–"])
    paper_rows = paper.get("Table 6", [])[1:]
    caption = ("Noise settings — every arm of this experiment, computed by this run (judge: "
               + ", ".join(sorted({p["judge"] for p in points})) + "). Paper, Table 6 (ChatGPT judge, Alpaca / Evol-Instruct / "
               "OpenPlatypus): " + "; ".join(f"{r[0]}: {r[1]}" for r in paper_rows) + ".")
    _write(out_dir, "noise_grid", header, rows, caption)



def _wr(m: dict | None) -> str:
    return f"{_fmt(m['win_rate'])} ± {_fmt(m['standard_error'])}" if m else "–"


PAPER_MODELS = {"llama2-7b": "LLaMA-2-7B", "llama2-13b": "LLaMA-2-13B", "llama1-30b": "LLaMA-1-30B", "llama1-7b": "LLaMA-1-7B"}


def table3(points: list[dict], paper: dict, out_dir: Path) -> None:
    """(Q)LoRA win rates, base and one column per uniform alpha, per model and data; the paper's Table 3 beside."""
    paper_rows = paper.get("Table 3", [])
    alphas = [5, 10, 15]
    cells: dict[tuple, dict] = {}
    for p in points:
        row = cells.setdefault((p["model"], p["dataset"]), {"base": p["base"], "4bit": p["lora_4bit"]})
        if p["neft"] and p["noise"].startswith("neft-uniform") and not p["noise"].endswith("-padded"):
            row[int(p["alpha"])] = p["neft"]
    header = ["model / data", "source", "base"] + [f"alpha {a}" for a in alphas]
    rows = [[f"{m} / {d}", "ours, " + ("QLoRA (4-bit base)" if c["4bit"] else "LoRA (plain base)"), _wr(c["base"])]
            + [_wr(c.get(a)) for a in alphas] for (m, d), c in cells.items()]
    rows += [[r[0], "paper, QLoRA"] + r[1:] for r in paper_rows[1:]]
    caption = ("Table 3 — AlpacaEval win rate (%) of LoRA-finetuned models (1 epoch), noise off and uniform NEFTune at each "
               "alpha; 'ours' computed by this run (judge " + ", ".join(sorted({p["judge"] for p in points}))
               + "), 'paper' rows are Jain et al. 2023, Table 3 (QLoRA, ChatGPT judge).")
    _write(out_dir, "table3", header, rows, caption)


TABLE5_PAPER_ROWS = {"base": "base", "long": '"Long" prompt', "comprehensive": '"Comprehensive" prompt',
                     "long_comprehensive": '"Long + Comprehensive" prompt', "min_250_tokens": "at least 250 new tokens", "+NEFT": "+NEFT"}


def table5(points: list[dict], paper: dict, out_dir: Path) -> None:
    """Noise-off model with length-inducing prompts / forced length vs +NEFT: win rate and mean characters."""
    paper_rows = {r[0]: r for r in paper.get("Table 5", [])[1:]}
    header = ["setting", "ours: model, data", "ours: win rate", "ours: mean characters", "ours: change to the prompt / decoding",
              "paper: win rate", "paper: mean characters"]
    rows = []
    for p in points:
        settings = [("base", p["base"], p["base_analysis"]["chars_mean"], "none")]
        settings += [(name, v, v["chars_mean"], (f"instruction + {v['instruction_suffix']!r}" if v["instruction_suffix"] else "")
                      + (f"at least {v['min_new_tokens']} new tokens" if v["min_new_tokens"] else ""))
                     for name, v in p["length_control"].items()]
        if p["neft"]:
            settings.append(("+NEFT", p["neft"], p["neft_analysis"]["chars_mean"], f"{p['noise']} finetune, plain prompt"))
        for name, wr, chars, change in settings:
            pr = paper_rows.get(TABLE5_PAPER_ROWS.get(name, ""), ["", "–", "–"])
            rows.append([name, f"{p['model']}, {p['dataset']}", _wr(wr), _fmt(chars, 1), change, pr[1], pr[2]])
    caption = ("Table 5 — length is (not) all you need: the noise-off model asked for long answers or forced to write at "
               "least N new tokens, against the +NEFT model; 'ours' computed by this run (judge "
               + ", ".join(sorted({p["judge"] for p in points})) + "), 'paper' columns are Jain et al. 2023, Table 5 "
               "(LLaMA-1-7B on Alpaca, GPT-4 judge).")
    _write(out_dir, "table5", header, rows, caption)


def _paper_noise_row(noise: str) -> str:
    m = re.fullmatch(r"neft-(uniform|gaussian)([0-9.]+)", noise)
    return f"{m.group(1)} alpha {m.group(2)}" if m else ""


def table6(points: list[dict], paper: dict, out_dir: Path) -> None:
    """Uniform vs Gaussian noise: one row per noise setting, one column per model/data; the paper's Table 6 beside."""
    paper_rows = {r[0]: r[1] for r in paper.get("Table 6", [])[1:]}
    columns = sorted({(p["model"], p["dataset"]) for p in points})
    by_noise: dict[str, dict] = {}
    for p in points:
        by_noise.setdefault("base", {})[(p["model"], p["dataset"])] = (p["base"], p["base_analysis"])
        if p["neft"]:
            by_noise.setdefault(p["noise"], {})[(p["model"], p["dataset"])] = (p["neft"], p["neft_analysis"])
    header = ["noise"] + [f"ours: {m}, {d} — win rate / mean chars" for m, d in columns] + [
        "paper: win rate Alpaca / Evol-Instruct / OpenPlatypus"]
    order = sorted(by_noise, key=lambda n: (n != "base", "gaussian" in n, float(re.sub(r"[^0-9.]", "", n) or 0)))
    rows = []
    for noise in order:
        cells = [f"{_wr(by_noise[noise][c][0])} / {_fmt(by_noise[noise][c][1]['chars_mean'], 1)}" if c in by_noise[noise] else "–"
                 for c in columns]
        rows.append([noise] + cells + [paper_rows.get(_paper_noise_row(noise), "–")])
    caption = ("Table 6 — uniform vs Gaussian NEFTune noise, each against the same noise-off baseline; 'ours' computed by "
               "this run (judge " + ", ".join(sorted({p["judge"] for p in points})) + "), 'paper' column is Jain et al. "
               "2023, Table 6 (LLaMA-2-7B, ChatGPT judge).")
    _write(out_dir, "table6", header, rows, caption)


OVERFIT_METRICS = (("training loss (noise off)", "overfit_train_loss", 4), ("held-out loss", "overfit_heldout_loss", 4),
                   ("ROUGE-L vs training responses", "overfit_rougeL", 4), ("BLEU vs training responses", "overfit_bleu", 2))


def overfit_table(points: list[dict], out_dir: Path) -> None:
    """Means of the overfitting measures (Figs 4-5) per arm."""
    header = ["model, data", "arm"] + [label for label, _, _ in OVERFIT_METRICS] + ["rows (train / held-out / generated)", "held-out set"]
    rows = []
    for p in points:
        for arm, field in (("base", "base_overfit"), (p["noise"], "neft_overfit")):
            m = p[field]
            if m:
                rows.append([f"{p['model']}, {p['dataset']}", arm] + [_fmt(m[k], d) for _, k, d in OVERFIT_METRICS]
                            + [f"{m['overfit_n_train']} / {m['overfit_n_heldout']} / {m['overfit_n_generated']}", m["overfit_heldout"]])
    caption = ("Figures 4-5 — overfitting, measured with noise off after training: mean loss per response token on the "
               "training data and on held-out data; ROUGE-L (F, 0-1) and sentence BLEU (0-100) of greedy answers to training "
               "instructions against their training responses. Paper (LLaMA-2-7B, Alpaca, held-out Evol-Instruct; histograms "
               "only): with NEFT the training loss is higher, the held-out loss slightly lower, ROUGE-L and BLEU lower.")
    _write(out_dir, "overfit", header, rows, caption)


def overfit_figures(points: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for stem, panels in (("overfit_loss", (("train_loss", "loss on training data (noise off)"), ("heldout_loss", "loss on held-out data"))),
                         ("overfit_overlap", (("rougeL", "ROUGE-L vs training response"), ("bleu", "BLEU vs training response")))):
        fig, axes = plt.subplots(len(points), 2, figsize=(10, 3.3 * len(points)), squeeze=False)
        for row, p in zip(axes, points):
            for ax, (key, xlabel) in zip(row, panels):
                values = [(label, color, p[field][key]) for (label, color), field in zip(ARMS, ("base_overfit", "neft_overfit")) if p[field]]
                lo = min(min(v) for _, _, v in values)
                hi = max(max(v) for _, _, v in values)
                bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi > lo else 20
                for label, color, v in values:
                    ax.hist(v, bins=bins, alpha=0.6, color=color, label=f"{label} (mean {sum(v) / len(v):.4f})")
                ax.set_xlabel(xlabel)
                ax.set_ylabel("examples")
                ax.set_title(f"{p['model']}, {p['dataset']}")
                ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}.png", dpi=110)
        plt.close(fig)

def tables(point: dict, experiment: str, results_root: Path, paper_numbers: Path) -> Path:
    """Add `point` to results/<experiment>/points/ and rewrite every table and figure from all points there."""
    out_dir = Path(results_root) / experiment
    (out_dir / "points").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "points" / f"{point['id']}.json", point)
    points = [json.loads(f.read_text()) for f in sorted((out_dir / "points").glob("*.json"))]
    points.sort(key=lambda p: (p["model"], p["dataset"], p["alpha"], p["noise"]))
    paper = read_paper_tables(paper_numbers)
    full = [p for p in points if not p["lora"]]  # LoRA points have their own table (3)
    lora = [p for p in points if p["lora"]]
    with_length_control = [p for p in full if p["length_control"]]
    with_overfit = [p for p in points if p["base_overfit"]]
    covered: dict[str, list[dict]] = {}  # table stem -> the points it was built from
    if full:
        table1(full, paper, out_dir)
        table4(full, paper, out_dir)
        figure3_table(full, paper, out_dir)
        noise_grid(full, paper, out_dir)
        table6(full, paper, out_dir)
        figures(full, out_dir)
        covered |= {"table1": full, "table4": full, "table6": full}
        scored = [p for p in full if p["base_openllm"]]
        if scored:
            covered["figure3"] = scored
    if lora:
        table3(lora, paper, out_dir)
        covered["table3"] = lora
    if with_length_control:
        table5(with_length_control, paper, out_dir)
        covered["table5"] = with_length_control
    if with_overfit:
        overfit_table(with_overfit, out_dir)
        overfit_figures(with_overfit, out_dir)
        covered["overfit"] = with_overfit
    write_report(points, experiment, out_dir, covered)
    return out_dir
