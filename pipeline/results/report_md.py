"""REPORT.md: every table an experiment covers, ours beside the paper's, with its figures, the
versions and configs that produced it, and per table a note on where our setting differs from the
paper's. Written by the aggregation step (pipeline/results/aggregate.py).

Run: python -m pipeline.report results/<experiment>
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import time
from pathlib import Path

import yaml

from pipeline.store.store import write_text_atomic
from pipeline.results.cost import cost_section
from pipeline.markup import escape_md
from pipeline.results.findings import findings
from pipeline.results.points import Point

PACKAGES = ("neftune-repro", "torch", "transformers", "peft", "datasets", "alpaca-eval",
            "lm-eval", "hydra-core", "wandb")


def versions() -> dict[str, str]:
    """Installed versions of the packages that compute the numbers, and the pipeline's commit."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipeline", "conf"],
                               cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit, dirty = "", ""
    changes = " + uncommitted changes to pipeline/ or conf/" if dirty else ""
    out["neftune-repro commit"] = commit + changes if commit else "unknown (not a git checkout)"
    return out


def setting_note(paper_setting: str, points: list[Point]) -> str:
    """Where this experiment's setting differs from the paper's for one table."""
    lines = []
    for p in points:
        s = p.setting
        ours = (f"model {p.model}, data {p.dataset} ({s['n_train']} examples), {s['method']}, "
                f"{s['epochs']} epoch(s), lr {s['learning_rate']}, effective batch "
                f"{s['effective_batch']} over {s['world_size']} process(es), seeds {s['seeds']}, "
                f"judge {p.judge} vs "
                f"reference {p.reference} ({s['n_eval']} prompts), "
                f"generate={p.choices.get('generate', '?')}")
        if ours not in lines:
            lines.append(ours)
    return f"Paper: {paper_setting}. Ours: " + "; ".join(lines) + "."


def write_report(points: list[Point], out_dir: Path, sections: list, skipped: list = (),
                 study_dir: Path | None = None, paper: dict | None = None) -> Path:
    """out_dir/REPORT.md from the points and the (spec, covered points, figures) of each table;
    `skipped`: [(point file, why)] left out, named at the top; `study_dir`: where the human
    study's files are (default out_dir); `paper`: the paper's numbers (default: shipped)."""
    experiment = points[0].experiment
    md = [f"# NEFTune reproduction report — experiment `{experiment}`", "",
          f"Rebuilt {time.strftime('%Y-%m-%d %H:%M')} from {len(points)} point(s) in `points/`; "
          "every 'ours' number was computed by this pipeline from its own runs and is followed by "
          "a footnote naming the stage key (a directory under the stage store, with its "
          "metrics.json) it was read from; every 'paper' number is quoted from Jain et al. 2023 "
          "(pipeline/assets/paper_numbers.yaml).", ""]
    if skipped:
        md += ["> **Warning: point files skipped.** These were left out of every table below:", ""]
        md += [f"> - {escape_md(path.name)}: {escape_md(why)}" for path, why in skipped]
        md += [""]
    md += findings(points, paper)
    md += cost_section(points)
    md += ["## Versions"]
    md += ["", "| package | version |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in versions().items()]
    stores = sorted({p.store for p in points})
    md += ["", f"Judge(s): {', '.join(sorted({p.judge for p in points}))}. "
           f"Stage store(s): {', '.join(f'`{s}`' for s in stores)}.", "",
           "## Points and their configs", "",
           "Each point's command (run from the repository root); the full composed config of "
           "each is at the end of this file.", ""]
    md += [f"- `{p.id}`: `python -m pipeline.run {' '.join(p.overrides)}`".rstrip() for p in points]
    for spec, covered, pngs in sections:
        md += ["", f"## {spec.title}", ""]
        if not covered:
            md += ["Not covered by this experiment (no point of it has this analysis)."]
            continue
        md += [(out_dir / f"{spec.stem}.md").read_text(encoding="utf-8").strip(), ""]
        md += [f"![{png}]({png})" for png in pngs]
        md += ["", "**Where our setting differs from the paper's.** "
               + setting_note(spec.paper_setting, covered)]
    from pipeline.human.report_section import human_report_section

    # None until a study of this experiment exists; its figure goes beside the report.
    human = human_report_section(Path(study_dir or out_dir), figures_dir=Path(out_dir))
    if human:
        md += ["", human.strip()]
    md += ["", "## Composed config of each point", ""]
    for p in points:
        md += [f"<details><summary><code>{p.id}</code></summary>", "", "```yaml",
               yaml.safe_dump(p.config, sort_keys=False).strip(), "```", "</details>", ""]
    path = Path(out_dir) / "REPORT.md"
    write_text_atomic(path, "\n".join(md) + "\n")
    return path
