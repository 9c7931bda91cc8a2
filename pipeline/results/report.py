"""REPORT.md: every table an experiment covers, ours beside the paper's, with its figures, the versions and configs
that produced it, and per table a note on where our setting differs from the paper's.

Written by the tables step after each point (results/<experiment>/REPORT.md), from results/<experiment>/points/.
Run: python -m pipeline.run experiment=default_all        (or experiment=paper_all on a GPU cluster)
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import time
from pathlib import Path

import yaml

PACKAGES = ("neftune-repro", "torch", "transformers", "peft", "datasets", "alpaca-eval", "lm-eval", "hydra-core", "wandb")

# Settings of the paper each table was made with (DESIGN.md, paper_numbers.md), for the "differs" notes.
PAPER_SETTING = {
    "table1": dict(model="llama2-7b", judge="alpaca_eval_gpt4", finetune="3 epochs, lr 5e-5, batch 128, full finetune"),
    "table3": dict(model="llama2-7b/13b, llama1-30b", judge="chatgpt_fn", finetune="QLoRA, 1 epoch, 4-bit base"),
    "table4": dict(model="llama2-7b", judge="–", finetune="3 epochs, lr 5e-5, batch 128, full finetune"),
    "table5": dict(model="llama1-7b", judge="alpaca_eval_gpt4", finetune="3 epochs, lr 5e-5, batch 128, full finetune"),
    "table6": dict(model="llama2-7b", judge="chatgpt_fn", finetune="3 epochs, lr 5e-5, batch 128, full finetune"),
    "figure3": dict(model="llama2-7b, llama1-7b", judge="–", finetune="3 epochs, lr 5e-5, batch 128, full finetune"),
    "overfit": dict(model="llama2-7b", judge="–", finetune="3 epochs, lr 5e-5, batch 128, full finetune"),
}

SECTIONS = [  # (stem, title, figures, paper data it needs)
    ("table1", "Table 1 — AlpacaEval win rate, base vs +NEFT", ["winrate.png"]),
    ("table3", "Table 3 — (Q)LoRA", []),
    ("table4", "Table 4 — length and diversity of the answers", ["lengths.png"]),
    ("table5", "Table 5 — length is (not) all you need", []),
    ("table6", "Table 6 — uniform vs Gaussian noise", []),
    ("figure3", "Figure 3 — OpenLLM leaderboard tasks", ["openllm.png"]),
    ("overfit", "Figures 4-5 — overfitting: noise-off losses and overlap with the training responses", ["overfit_loss.png", "overfit_overlap.png"]),
]


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipeline", "conf"], cwd=repo, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit, dirty = "", ""
    out["neftune-repro commit"] = (commit + (" + uncommitted changes to pipeline/ or conf/" if dirty else "")) if commit else "unknown (not a git checkout)"
    return out


def _setting_note(stem: str, points: list[dict]) -> str:
    """Where this experiment's setting differs from the paper's for one table, from the points' own configs."""
    paper = PAPER_SETTING[stem]
    lines = []
    for p in points:
        cfg, ch = p["config"], p["choices"]
        ft = cfg["finetune"]
        method = "LoRA" + (" (4-bit base)" if p["lora_4bit"] else " (plain base, no 4-bit)") if p["lora"] else "full finetune"
        ours = (f"model {p['model']}, data {p['dataset']} ({p['n_train']} examples), {method}, "
                f"{ft['epochs']} epoch(s), lr {ft['learning_rate']}, effective batch "
                f"{ft['per_device_batch_size'] * ft['gradient_accumulation_steps']} per device, "
                f"judge {p['judge']} vs reference {p['reference']} ({p['n_eval']} prompts), generate={ch['generate']}")
        if ours not in lines:
            lines.append(ours)
    return (f"Paper: model {paper['model']}, judge {paper['judge']}, {paper['finetune']}. "
            "Ours: " + "; ".join(lines) + ".")


def write_report(points: list[dict], experiment: str, out_dir: Path, covered: dict[str, list[dict]]) -> Path:
    """Write out_dir/REPORT.md from the experiment's points and the tables written (stem -> the points each covers)."""
    v = versions()
    md = [f"# NEFTune reproduction report — experiment `{experiment}`", "",
          f"Rebuilt {time.strftime('%Y-%m-%d %H:%M')} from {len(points)} point(s) in `points/`; every 'ours' number was "
          "computed by this pipeline from its own runs, every 'paper' number is quoted from Jain et al. 2023 "
          "(../shared/paper_numbers.md).", "",
          "## Versions", "", "| package | version |", "|---|---|"]
    md += [f"| {k} | {val} |" for k, val in v.items()]
    judges = sorted({p["judge"] for p in points})
    md += ["", f"Judge(s): {', '.join(judges)}.", "", "## Points and their configs", "",
           "Each point's command (run from the repository root); the full composed config of each is at the end of this file.", ""]
    for p in points:
        md += [f"- `{p['id']}`: `python -m pipeline.run {' '.join(p['overrides'])}`".rstrip()]
    for stem, title, figures in SECTIONS:
        md += ["", f"## {title}", ""]
        if stem not in covered:
            md += ["Not covered by this experiment (no point of it has this analysis)."]
            continue
        md += [(out_dir / f"{stem}.md").read_text(encoding="utf-8").strip(), ""]
        md += [f"![{fig}]({fig})" for fig in figures if (out_dir / fig).is_file()]
        md += ["", "**Where our setting differs from the paper's.** " + _setting_note(stem, covered[stem])]
    md += ["", "## Composed config of each point", ""]
    for p in points:
        md += [f"<details><summary><code>{p['id']}</code></summary>", "", "```yaml",
               yaml.safe_dump(p["config"], sort_keys=False).strip(), "```", "</details>", ""]
    path = out_dir / "REPORT.md"
    tmp = path.with_suffix(".md.partial")
    tmp.write_text("\n".join(md) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path

