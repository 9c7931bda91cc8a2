"""The Findings block that opens REPORT.md: for every comparison of every point, the effect of
NEFTune with its 95% CI and n, whether the CI excludes zero and, where it does not, the smallest
effect the design could have detected and the prompts that would detect the paper's effect
(pipeline/results/power.py); the dose-response across noise strengths (trend.py); and how far
the judge behind the win rates can be trusted, in plain words generated from the numbers."""

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


def _signed(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}"


def effect_line(what: str, unit: str, digits: int, d: dict, key: str, null: str = "") -> str:
    """One measure's effect in words: the difference, its CI, its n and what the CI says; `null`
    is what a CI including zero leaves possible (power.null_words)."""
    n = f"n={d['n']} prompts"
    if "n_base" in d and min(d["n_base"], d["n_treated"]) < d["n"]:  # e.g. answers shorter than K
        n += f": {d['n_base']} base and {d['n_treated']} +NEFT answers have a value"
    ci = (f"{_signed(d['diff'], digits)} {unit} (95% CI {_signed(d['ci_low'], digits)} to "
          f"{_signed(d['ci_high'], digits)}, {n})").replace("  ", " ")
    if d["excludes_zero"]:
        words = "higher" if d["diff"] > 0 else "lower"
        verdict = f"the CI excludes zero: {words} with NEFT"
    else:
        verdict = "the CI includes zero: no change this study can detect" + (
            f"; {null}" if null else "")
    return f"  - {what}: {ci}; {verdict}. [`{key}`]"


def judge_sentence(calibration: StageRef | None) -> tuple[str, bool | None]:
    """The judge's calibration in words, and whether its win rates are informative."""
    if calibration is None:
        return ("The judge was not calibrated (no calibration pairs here; get alpaca_eval's "
                "published GPT-4 verdicts with `python -m pipeline.prefetch <the run's overrides>` "
                "where there is internet, or give a local copy as `calibration.pairs=PATH`): how "
                "far its win rates can be trusted is unknown.", None)
    m = calibration.metrics
    v = m["verdicts"]
    pc = m["position_consistency"]
    text = (f"Judge `{m['judge']}` on {m['n']} calibration pairs with GPT-4 verdicts: "
            f"{v['chance_verdict']}; {v['length_verdict']}; it picks the same answer in both "
            f"orders on {pc['mean']:.0f}% of pairs (CI {pc['ci_low']:.0f} to {pc['ci_high']:.0f}). "
            f"[`{calibration.key}`]")
    return text, bool(v["informative"])


def findings(points: list[Point], paper: dict | None = None) -> list[str]:
    """Markdown lines of the Findings block; `paper`: the paper's numbers (default: shipped)."""
    paper = default_paper() if paper is None else paper
    md = ["## Findings", ""]
    for p in points:
        calibration = p.extra.get("judge_calibration")
        judge_text, informative = judge_sentence(calibration)
        for e in p.effects:
            m = e.stages["compare"].metrics
            seeds = f"{len(e.seeds)} seed{'s' if len(e.seeds) > 1 else ''}"
            md += [f"- **{e.arm} vs {e.baseline}** — {p.model} on {p.dataset}, judge {p.judge}, "
                   f"{m['n_prompts']} prompts, {seeds} (paired bootstrap over prompts, "
                   f"{m['win_rate']['n_resamples']} resamples; point `{p.id}`):"]
            seeds_n = len(e.seeds)
            for name, what, unit, digits in MEASURES:
                if m.get(name):
                    null = null_words(m[name], unit, digits, m["n_prompts"], seeds_n,
                                      paper_effect(paper, p.dataset, name))
                    md.append(effect_line(what, unit, digits, m[name], e.stages["compare"].key,
                                          null))
            for task, d in (m.get("openllm") or {}).items():
                test = (f"; McNemar p={d['p_value']:.2f} ({d['b']} vs {d['c']} discordant)"
                        if "p_value" in d else "")
                if "se" not in d:  # compare before version 3 kept lm-eval scores as fractions
                    d = {**d, **{k: 100 * d[k] for k in ("diff", "ci_low", "ci_high")}}
                null = null_words(d, "points", 1, d["n"], seeds_n, None)
                md.append(effect_line(f"lm-eval {task}", "points", 1, d, e.stages["compare"].key,
                                      null).replace(" prompts)", " questions)")
                          .replace(". [`", f"{test}. [`"))
            for c in (c for c in p.comparisons if c.arm == e.arm):
                h = c.stages["head_to_head"].metrics
                md.append(f"  - head to head (seed {c.seed}): the judge prefers {e.arm} in "
                          f"{h['win_rate']:.1f}% ± {h['standard_error']:.1f} of "
                          f"{int(h['n_total'])} pairs (50% = no preference). "
                          f"[`{c.stages['head_to_head'].key}`]")
        md.append(f"- {judge_text}")
        if informative is False:
            md.append("- **So the win-rate numbers of this point are uninformative**: the judge "
                      "cannot be told apart from chance or from the length rule; read the length "
                      "and diversity effects, not the win rates.")
        md.append("")
    trend = trend_lines(points)
    return md + trend + ([""] if trend else [])
