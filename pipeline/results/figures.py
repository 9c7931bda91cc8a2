"""Figures of an experiment (matplotlib PNGs beside the tables): win rates, leaderboard scores,
output lengths, the overfitting histograms of Figs 4-5, and the noise family against its
baseline.

Per-output data (answer lengths, per-example losses) is read from the stage directories the
points name; a figure whose stages are not in this store is skipped with a message.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from pipeline.results.points import Arm, Point
from pipeline.logs import get_logger

LOG = get_logger("results")

COLORS = {"base": "#999999", "+NEFT": "#d62728"}
OPENLLM_TASKS = ("arc", "hellaswag", "mmlu", "truthfulqa")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 120) -> None:
    # A unique temp name and a rename: points finishing together never leave a torn PNG. The
    # name is hidden and ends in .tmp, so that no glob reading results (*.png) takes it for one.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fig.tight_layout()
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is not None:
            raise
        # PIL's write error (a full disk: bare "[Errno 28]") names no file: name the figure.
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)
        _plt().close(fig)


def _grouped_bars(ax, ticks, series, ylabel: str, title: str) -> None:
    """Bars of each (label, values, errors) series side by side at every tick."""
    width = 0.8 / len(series)
    for k, (label, values, errors) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar(
            [x + offset for x in range(len(ticks))],
            values,
            width,
            yerr=errors,
            color=COLORS[label],
            label=label,
        )
    ax.set_xticks(list(range(len(ticks))), ticks)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()


def _sides(p: Point) -> list[tuple[str, list[Arm]]]:
    return [("base", p.baseline)] + [("+NEFT", p.arms_named(t)) for t in p.treated[:1]]


def _first(arms: list[Arm], stage: str, name: str, default=0.0):
    refs = [a.stages[stage].metrics for a in arms if stage in a.stages]
    return refs[0][name] if refs else default


def winrate_figure(points: list[Point], out_dir: Path) -> list[str]:
    fig, ax = _plt().subplots(figsize=(max(4, 2.2 * len(points)), 3.5))
    series = [
        (
            side,
            [_first(dict(_sides(p)).get(side, []), "alpaca_eval", "win_rate") for p in points],
            [
                _first(dict(_sides(p)).get(side, []), "alpaca_eval", "standard_error")
                for p in points
            ],
        )
        for side in COLORS
    ]
    ticks = [f"{p.dataset}, {(p.treated or ['base'])[0]}\n({p.model})" for p in points]
    _grouped_bars(
        ax,
        ticks,
        series,
        "win rate vs reference (%)",
        f"AlpacaEval win rate, judge: {points[0].judge}",
    )
    ax.axhline(50, color="black", lw=0.5, ls=":")
    _save(fig, out_dir / "winrate.png")
    return ["winrate.png"]


def openllm_figure(points: list[Point], out_dir: Path) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, len(points), figsize=(6 * len(points), 3.5), squeeze=False)
    for ax, p in zip(axes[0], points):
        series = [
            (
                side,
                [100 * _first(arms, "openllm", f"openllm_{t}") for t in OPENLLM_TASKS]
                + [100 * _first(arms, "openllm", "openllm_average")],
                None,
            )
            for side, arms in _sides(p)
            if any("openllm" in a.stages for a in arms)
        ]
        _grouped_bars(
            ax,
            ["ARC", "HellaSwag", "MMLU", "TruthfulQA", "average"],
            series,
            "score (%)",
            f"{p.model}, {p.dataset} ({p.setting['openllm']['name']})",
        )
    _save(fig, out_dir / "openllm.png")
    return ["openllm.png"]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        LOG.warning("%s is not readable here; its figure is skipped", path)
        return None


def lengths_figure(points: list[Point], out_dir: Path) -> list[str]:
    lengths = {}
    for p in points:
        for side, arms in _sides(p):
            outputs = _read_json(p.stage_path(arms[0].stages["generate"].key) / "outputs.json")
            if outputs is None:
                return []
            lengths[(p.id, side)] = [len(o["output"]) for o in outputs]
    plt = _plt()
    fig, axes = plt.subplots(1, len(points), figsize=(5 * len(points), 3.5), squeeze=False)
    for ax, p in zip(axes[0], points):
        longest = max(max(v) for (pid, _), v in lengths.items() if pid == p.id) or 1
        bins = [longest * i / 20 for i in range(21)]  # shared bins: the arms compare bar by bar
        for side, _ in _sides(p):
            ax.hist(lengths[(p.id, side)], bins=bins, alpha=0.6, color=COLORS[side], label=side)
        ax.set_xlabel("output length (characters)")
        ax.set_ylabel("outputs")
        ax.set_title(f"{p.dataset}, {(p.treated or ['base'])[0]}")
        ax.legend()
    _save(fig, out_dir / "lengths.png")
    return ["lengths.png"]


OVERFIT_PANELS = (
    (
        "overfit_loss",
        (
            ("train_loss", "loss on training data (noise off)"),
            ("heldout_loss", "loss on held-out data"),
        ),
    ),
    (
        "overfit_overlap",
        (("rougeL", "ROUGE-L vs training response"), ("bleu", "BLEU vs training response")),
    ),
)


def overfit_figures(points: list[Point], out_dir: Path) -> list[str]:
    per_example = {}
    for p in points:
        for side, arms in _sides(p):
            if "overfit" in arms[0].stages:
                data = _read_json(p.stage_path(arms[0].stages["overfit"].key) / "per_example.json")
                if data is None:
                    return []
                per_example[(p.id, side)] = data
    plt = _plt()
    for stem, panels in OVERFIT_PANELS:
        fig, axes = plt.subplots(len(points), 2, figsize=(10, 3.3 * len(points)), squeeze=False)
        for row, p in zip(axes, points):
            for ax, (key, xlabel) in zip(row, panels):
                values = [
                    (side, per_example[(p.id, side)][key])
                    for side in COLORS
                    if (p.id, side) in per_example
                ]
                lo = min(min(v) for _, v in values)
                hi = max(max(v) for _, v in values)
                bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi > lo else 20
                for side, v in values:
                    ax.hist(
                        v,
                        bins=bins,
                        alpha=0.6,
                        color=COLORS[side],
                        label=f"{side} (mean {sum(v) / len(v):.4f})",
                    )
                ax.set_xlabel(xlabel)
                ax.set_ylabel("examples")
                ax.set_title(f"{p.model}, {p.dataset}")
                ax.legend()
        _save(fig, out_dir / f"{stem}.png", dpi=110)
    return [f"{stem}.png" for stem, _ in OVERFIT_PANELS]


def dose_response_figure(points: list[Point], out_dir: Path) -> list[str]:
    """Each measure's difference from the baseline against alpha, with its 95% CI, and the
    least-squares line of the dose-response finding (pipeline/results/trend.py)."""
    from pipeline.results.trend import MEASURES, families, trends

    fams = families(points)
    if not fams:
        return []
    plt = _plt()
    fig, axes = plt.subplots(
        len(fams), len(MEASURES), figsize=(4 * len(MEASURES), 3.3 * len(fams)), squeeze=False
    )
    for row, f in zip(axes, fams):
        by_measure = {t.measure: t for t in trends(f)}
        for ax, (measure, what, unit, _) in zip(row, MEASURES):
            t = by_measure.get(measure)
            if t is None:
                ax.set_axis_off()
                continue
            y = [0.0] + [d["diff"] for d in t.diffs]
            low = [0.0] + [d["diff"] - d["ci_low"] for d in t.diffs]
            high = [0.0] + [d["ci_high"] - d["diff"] for d in t.diffs]
            ax.errorbar(
                t.alphas,
                y,
                yerr=[low, high],
                fmt="o",
                color=COLORS["+NEFT"],
                capsize=3,
                label="vs base (95% CI)",
            )
            mean_a, mean_y = sum(t.alphas) / len(t.alphas), sum(y) / len(y)
            ax.plot(
                [t.alphas[0], t.alphas[-1]],
                [mean_y + t.slope * (a - mean_a) for a in (t.alphas[0], t.alphas[-1])],
                color="black",
                lw=1,
                ls="--",
                label=f"slope {t.slope:+.3g} ({t.ci_low:+.3g} to {t.ci_high:+.3g})",
            )
            ax.axhline(0, color=COLORS["base"], lw=0.5)
            ax.set_xlabel(f"alpha ({f.kind} noise)")
            ax.set_ylabel("+NEFT - base" + (f" ({unit})" if unit else ""))
            ax.set_title(f"{what}\n{f.point.model}, {f.point.dataset}", fontsize=9)
            ax.legend(fontsize=7)
    _save(fig, out_dir / "dose_response.png", dpi=110)
    return ["dose_response.png"]


FAMILY_PANELS = (  # (compare metric, what, unit)
    ("win_rate", "win rate vs the reference", "points"),
    ("lc_win_rate", "length-controlled win rate", "points"),
    ("chars", "mean answer length", "characters"),
    ("log_diversity", "log-diversity", ""),
)


def _family(points: list[Point]) -> list[tuple[str, Point, list[Arm], dict | None]]:
    """(label, point, arms, compare metrics or None for the baseline) of every arm, each
    model/data's baseline once, in the points' order."""
    out, seen = [], set()
    several = len({(q.model, q.dataset) for q in points}) > 1
    for p in points:
        for name in ["base"] + p.treated:
            if (p.model, p.dataset, name) in seen:
                continue
            seen.add((p.model, p.dataset, name))
            arms = p.baseline if name == "base" else p.arms_named(name)
            effect = next((e for e in p.effects if e.arm == name and "compare" in e.stages), None)
            if name != "base" and effect is None:
                continue
            label = name + (f"\n({p.model}, {p.dataset})" if several else "")
            out.append((label, p, arms, effect.stages["compare"].metrics if effect else None))
    return out


def noise_family_figure(points: list[Point], out_dir: Path) -> list[str]:
    """Each noise arm minus the shared baseline on every measure, with its 95% CI (the compare
    stage), and what each arm cost to train (seconds of the training loop, passes per
    example)."""
    rows = _family(points)
    treated = [r for r in rows if r[3] is not None]
    if not treated:
        return []
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(FAMILY_PANELS) + 1, figsize=(3.6 * (len(FAMILY_PANELS) + 1), 3.8), squeeze=False
    )
    for ax, (measure, what, unit) in zip(axes[0], FAMILY_PANELS):
        shown = [(label, m[measure]) for label, _, _, m in treated if m.get(measure)]
        x = list(range(len(shown)))
        if shown:
            ax.errorbar(
                x,
                [d["diff"] for _, d in shown],
                yerr=[
                    [d["diff"] - d["ci_low"] for _, d in shown],
                    [d["ci_high"] - d["diff"] for _, d in shown],
                ],
                fmt="o",
                color=COLORS["+NEFT"],
                capsize=3,
            )
        if not shown:  # e.g. log-diversity when no answer reaches the cutoff K
            ax.text(0.5, 0.5, "no difference measured", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
        ax.axhline(0, color=COLORS["base"], lw=0.8)
        ax.set_xticks(x, [label for label, _ in shown], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("arm - base" + (f" ({unit})" if unit else ""))
        ax.set_title(f"{what}\n(95% CI)", fontsize=9)
    ax = axes[0][-1]
    seconds = [_first(arms, "finetune", "train_runtime_s", None) for _, _, arms, _ in rows]
    passes = [_first(arms, "finetune", "train_passes_per_example", None) for _, _, arms, _ in rows]
    ax.bar(
        range(len(rows)),
        [s or 0.0 for s in seconds],
        color=[COLORS["base"] if m is None else COLORS["+NEFT"] for *_, m in rows],
    )
    for i, n in enumerate(passes):
        ax.annotate("passes ?" if n is None else f"{n:g} pass{'es' if n != 1 else ''}",
                    (i, seconds[i] or 0.0), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [label for label, *_ in rows], rotation=30, ha="right",
                  fontsize=7)
    ax.set_ylabel("training loop (s)")
    ax.set_title("cost to train\n(passes per example)", fontsize=9)
    _save(fig, out_dir / "noise_family.png", dpi=110)
    return ["noise_family.png"]
