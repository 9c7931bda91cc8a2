"""The Findings block that opens REPORT.md: for every comparison of every point, the effect of
NEFTune with its 95% CI and n, over several seeds the between-seed SD beside it (with one seed,
that one seed is all there is), whether the CI excludes zero and, where it does not, the smallest
effect the design could have detected and the prompts that would detect the paper's effect, or
where the arms agree on every item the design's floor (pipeline/results/power.py); the
dose-response across noise strengths (trend.py); and how far the judge behind the win rates can
be trusted, in plain words generated from the numbers."""

from __future__ import annotations

from pipeline.results.points import Point, StageRef
from pipeline.results.power import default_paper, null_words, paper_effect
from pipeline.results.trend import trend_lines

MEASURES = (  # (compare metric, what it is, unit, digits)
    ("win_rate", "win rate vs the reference", "points", 1),
    ("lc_win_rate", "length-controlled win rate", "points", 1),
    ("chars", "mean answer length", "characters", 1),
    ("words", "mean answer length", "whitespace tokens", 1),
    ("log_diversity", "log-diversity (Table-4 arithmetic)", "", 2),
)
# The most one item moves a difference, for the design floor (power.floor_words): a win score
# goes from 0 to 100 points; the LC win rate is a model's output and the rest are continuous.
ITEM_STEP = {"win_rate": 100.0}
ACCURACY_STEP = 100.0  # an lm-eval question scored 0/1, in points


def _method(m: dict, n_seeds: int) -> str:
    """How the intervals of one compare stage were made, in words (its `method`, and the
    pooled rows of compare before version 4)."""
    resamples = f"{m['win_rate']['n_resamples']} resamples" if m.get("win_rate") else ""
    if n_seeds == 1:
        return (
            "paired bootstrap over prompts, " + resamples + "; one training seed is all "
            "there is, so no interval here includes the variance between training runs"
        )
    if "n_seeds" not in (m.get("win_rate") or {}):
        return (
            "paired bootstrap over the prompts of all seeds pooled as independent rows "
            "(compare before version 4): these intervals leave out the variance between "
            "training runs"
        )
    return (
        "per-seed differences, their mean and an interval with the between-seed variance "
        "and a prompt bootstrap shared by the seeds, t at Satterthwaite df, " + resamples
    )


def _signed(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}"


def effect_line(what: str, unit: str, digits: int, d: dict, key: str, null: str = "") -> str:
    """One measure's effect in words: the difference, its CI, its n (and, over several seeds,
    their number and the between-seed SD of the effect) and what the CI says; `null` is what a
    CI including zero leaves possible (power.null_words)."""
    seeds = d.get("n_seeds", 1)
    n = f"n={d['n']} prompts" + (f" x {seeds} seeds" if seeds > 1 else "")
    total = d["n"] * seeds
    if "n_base" in d and min(d["n_base"], d["n_treated"]) < total:  # e.g. answers shorter than K
        of = f" of {total}" if seeds > 1 else ""
        n += f": {d['n_base']} base and {d['n_treated']} +NEFT answers{of} have a value"
    if d.get("between_seed_sd") is not None:
        n += f"; between-seed SD {d['between_seed_sd']:.{digits}f} {unit}".rstrip()
    ci = (
        f"{_signed(d['diff'], digits)} {unit} (95% CI {_signed(d['ci_low'], digits)} to "
        f"{_signed(d['ci_high'], digits)}, {n})"
    ).replace("  ", " ")
    if d["excludes_zero"]:
        words = "higher" if d["diff"] > 0 else "lower"
        verdict = f"the CI excludes zero: {words} with NEFT"
    else:
        verdict = "the CI includes zero: no change this study can detect" + (
            f"; {null}" if null else ""
        )
    return f"  - {what}: {ci}; {verdict}. [`{key}`]"


def _test_words(d: dict) -> str:
    """The paired test of one lm-eval task: exact McNemar with one seed, the seed interval's t
    test over seeds (each seed's McNemar p beside it)."""
    if "p_value" not in d:
        return ""
    if d.get("n_seeds", 1) == 1:
        return f"; McNemar p={d['p_value']:.2f} ({d['b']} vs {d['c']} discordant)"
    each = ", ".join(f"{p:.2f}" for p in d["p_value_per_seed"])
    return (
        f"; p={d['p_value']:.2f} (t over {d['n_seeds']} seeds; McNemar per seed p={each}; "
        f"{d['b']} vs {d['c']} discordant in all)"
    )


def judge_sentence(calibration: StageRef | None) -> tuple[str, bool | None]:
    """The judge's calibration in words, and whether its win rates are informative."""
    if calibration is None:
        return (
            "The judge was not calibrated (no calibration pairs here; get alpaca_eval's "
            "published GPT-4 verdicts with `python -m pipeline.prefetch <the run's overrides>` "
            "where there is internet, or give a local copy as `calibration.pairs=PATH`): how "
            "far its win rates can be trusted is unknown.",
            None,
        )
    m = calibration.metrics
    v = m["verdicts"]
    pc = m["position_consistency"]
    text = (
        f"Judge `{m['judge']}` on {m['n']} calibration pairs with GPT-4 verdicts: "
        f"{v['chance_verdict']}; {v['length_verdict']}; it picks the same answer in both "
        f"orders on {pc['mean']:.0f}% of pairs (CI {pc['ci_low']:.0f} to {pc['ci_high']:.0f}). "
        f"[`{calibration.key}`]"
    )
    return text, bool(v["informative"])


def findings(points: list[Point], paper: dict | None = None) -> list[str]:
    """Markdown lines of the Findings block; `paper`: the paper's numbers (default: shipped)."""
    paper = default_paper() if paper is None else paper
    md = ["## Findings", ""]
    for p in points:
        calibration = p.point_stages.get("judge_calibration")
        judge_text, informative = judge_sentence(calibration)
        for e in p.effects:
            m = e.stages["compare"].metrics
            seeds_n = len(e.seeds)
            seeds = f"{seeds_n} seed{'s' if seeds_n > 1 else ''}"
            md += [
                f"- **{e.arm} vs {e.baseline}** — {p.model} on {p.dataset}, judge {p.judge}, "
                f"{m['n_prompts']} prompts, {seeds} ({_method(m, seeds_n)}; point `{p.id}`):"
            ]
            for name, what, unit, digits in MEASURES:
                if m.get(name):
                    null = null_words(
                        m[name],
                        unit,
                        digits,
                        m["n_prompts"],
                        seeds_n,
                        paper_effect(paper, p.dataset, name),
                        item_step=ITEM_STEP.get(name),
                    )
                    md.append(
                        effect_line(what, unit, digits, m[name], e.stages["compare"].key, null)
                    )
            for task, d in (m.get("openllm") or {}).items():
                if "se" not in d:  # compare before version 3 kept lm-eval scores as fractions
                    d = {**d, **{k: 100 * d[k] for k in ("diff", "ci_low", "ci_high")}}
                null = null_words(
                    d,
                    "points",
                    1,
                    d["n"],
                    seeds_n,
                    None,
                    item_step=ACCURACY_STEP if "b" in d else None,
                )
                md.append(
                    effect_line(f"lm-eval {task}", "points", 1, d, e.stages["compare"].key, null)
                    .replace(" prompts", " questions")
                    .replace(". [`", f"{_test_words(d)}. [`")
                )
            for c in (c for c in p.comparisons if c.arm == e.arm):
                h = c.stages["head_to_head"].metrics
                md.append(
                    f"  - head to head (seed {c.seed}): the judge prefers {e.arm} in "
                    f"{h['win_rate']:.1f}% ± {h['standard_error']:.1f} of "
                    f"{int(h['n_total'])} pairs (50% = no preference). "
                    f"[`{c.stages['head_to_head'].key}`]"
                )
        md.append(f"- {judge_text}")
        if informative is False:
            md.append(
                "- **So the win-rate numbers of this point are uninformative**: the judge "
                "cannot be told apart from chance or from the length rule; read the length "
                "and diversity effects, not the win rates."
            )
        md.append("")
    trend = trend_lines(points)
    return md + trend + ([""] if trend else [])
