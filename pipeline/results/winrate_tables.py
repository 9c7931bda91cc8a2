"""Win-rate tables (paper Tables 1, 3, 5, 6, every noise arm and the noise family), ours beside
the paper's.

Each builder takes the typed points a table covers and the paper's numbers (paper_numbers.yaml) and
returns a Table whose cells carry the keys of the stages they were read from.
"""

from __future__ import annotations

from pipeline.results.cells import Cell, Table, fmt, lc_win_rate, metric, win_rate
from pipeline.results.points import Point

PAPER_DATASET_NAMES = {"alpaca": "Alpaca", "evol-instruct": "Evol-Instruct",
                       "sharegpt": "ShareGPT", "open-platypus": "OpenPlatypus"}


def _judges(points: list[Point]) -> str:
    return ", ".join(sorted({p.judge for p in points}))


def evidence(points: list[Point]) -> str:
    """What a win-rate table's reader must know: the LC method, n, and the judge's calibration."""
    methods = sorted({a.stages["alpaca_eval"].metrics.get("lc_label", "–")
                      for p in points for a in p.arms if "alpaca_eval" in a.stages})
    sizes = sorted({(p.setting["n_eval"], len(p.setting["seeds"])) for p in points})
    text = (f" LC = length-controlled win rate ({', '.join(methods)}, alpaca_eval's GLM). n = "
            + ", ".join(f"{n} prompts x {s} seed(s)" for n, s in sizes) + ".")
    judged = {}
    for p in points:
        ref = p.point_stages.get("judge_calibration")
        judged[p.judge] = ref.metrics if ref else None
    for judge, m in sorted(judged.items()):
        if m is None:
            text += f" Judge {judge}: not calibrated here, its reliability is unknown."
            continue
        a, length = m["accuracy"], m["length_baseline"]
        words = "informative" if m["verdicts"]["informative"] else (
            "UNINFORMATIVE: not distinguishable from chance or from the length rule")
        text += (f" Judge {judge}: agrees with GPT-4 on {a['mean']:.1f}% (CI {a['ci_low']:.1f} "
                 f"to {a['ci_high']:.1f}) of {m['n']} calibration pairs; the length rule agrees "
                 f"{length['mean']:.1f}%; its win rates are {words}.")
    return text


def _head_to_head(point: Point, arm: str, lc: bool = False) -> Cell:
    comparisons = [c for c in point.comparisons if c.arm == arm]
    if not comparisons:
        return Cell("–")
    return (lc_win_rate if lc else win_rate)(comparisons, "head_to_head")


def table1(points: list[Point], paper: dict) -> Table:
    """Win rate, base vs +NEFT, per dataset: ours and the paper's (LLaMA-2-7B, GPT-4 judge)."""
    ref = paper.get("table1", {})
    header = ["dataset", "ours: model", "ours: judge / reference", "ours: base", "ours: +NEFT",
              "ours: base, LC", "ours: +NEFT, LC", "ours: alpha",
              "ours: +NEFT vs base (head to head)", "ours: head to head, LC", "paper: base",
              "paper: +NEFT", "paper: alpha"]
    rows, covered = [], set()
    for p in points:
        row = ref.get(p.dataset, {})
        covered.add(p.dataset)
        treated = p.treated[0] if p.treated else None
        neft_arms = p.arms_named(treated) if treated else []
        # alpha 0 on a treated arm: a kind whose strength is a setting of its own (R3F, ...)
        alpha = fmt(neft_arms[0].noise["alpha"], 0) if neft_arms else "–"
        alpha = alpha if alpha not in ("0", "-0") else "–"
        rows.append([p.dataset, p.model, f"{p.judge} / {p.reference}", win_rate(p.baseline),
                     win_rate(neft_arms) if neft_arms else "–", lc_win_rate(p.baseline),
                     lc_win_rate(neft_arms) if neft_arms else "–", alpha,
                     _head_to_head(p, treated) if treated else "–",
                     _head_to_head(p, treated, lc=True) if treated else "–",
                     fmt(row.get("base")), fmt(row.get("neft")), fmt(row.get("alpha"), 0)])
    for name, row in ref.items():
        if name not in covered:
            label = PAPER_DATASET_NAMES.get(name, name)
            rows.append([f"{label} (paper only)"] + ["–"] * 9
                        + [fmt(row["base"]), fmt(row["neft"]), fmt(row["alpha"], 0)])
    caption = ("Table 1 — AlpacaEval win rate (%) ± standard error. 'ours': computed "
               "by this run; 'paper' columns are Jain et al. 2023, Table 1 (LLaMA-2-7B, GPT-4 "
               "judge, AlpacaEval 1 vs text-davinci-003)." + evidence(points))
    return Table("table1", caption, header, rows)


def table3(points: list[Point], paper: dict) -> Table:
    """(Q)LoRA win rates: base and one column per uniform alpha; the paper's Table 3 beside."""
    alphas = (5, 10, 15)
    cells: dict[tuple, dict] = {}
    for p in points:
        cell = cells.setdefault((p.model, p.dataset), {"base": win_rate(p.baseline),
                                                       "base LC": lc_win_rate(p.baseline),
                                                       "4bit": p.setting["lora_4bit"]})
        for arm in p.arms:
            n = arm.noise
            if not arm.baseline and n["kind"] == "uniform" and n["length"] == "per_example":
                cell[float(n["alpha"])] = win_rate(p.arms_named(arm.name))
                cell[f"{float(n['alpha'])} LC"] = lc_win_rate(p.arms_named(arm.name))
    header = (["model / data", "source", "base"] + [f"alpha {a}" for a in alphas]
              + ["base, LC"] + [f"alpha {a}, LC" for a in alphas])
    rows = [[f"{m} / {d}", "ours, " + ("QLoRA (4-bit base)" if c["4bit"] else "LoRA (plain base)"),
             c["base"]] + [c.get(float(a), "–") for a in alphas]
            + [c["base LC"]] + [c.get(f"{float(a)} LC", "–") for a in alphas]
            for (m, d), c in cells.items()]
    rows += [[r["label"], "paper, QLoRA", fmt(r["base"])] + [fmt(r[f"alpha{a}"]) for a in alphas]
             + ["–"] * 4 for r in paper.get("table3", [])]
    caption = ("Table 3 — AlpacaEval win rate (%) of LoRA-finetuned models (1 epoch), noise off "
               "and uniform NEFTune at each alpha; 'ours' computed by this run (judge "
               f"{_judges(points)}), 'paper' rows are Jain et al. 2023, Table 3 (QLoRA, ChatGPT "
               "judge)." + evidence(points))
    return Table("table3", caption, header, rows)


TABLE5_PAPER_ROWS = ("base", "long", "comprehensive", "long_comprehensive", "min_250_tokens")


def table5(points: list[Point], paper: dict) -> Table:
    """Noise-off model with length-inducing prompts / forced length vs +NEFT."""
    ref = paper.get("table5", {})
    header = ["setting", "ours: model, data", "ours: win rate", "ours: mean characters",
              "ours: change to the prompt / decoding", "paper: win rate",
              "paper: mean characters"]
    rows = []
    for p in points:
        where = f"{p.model}, {p.dataset}"
        settings = [("base", p.baseline, "none")]
        for name in dict.fromkeys(v.name for v in p.variants):
            variants = [v for v in p.variants if v.name == name]
            s = variants[0].setting
            change = (f"instruction + {s['instruction_suffix']!r}" if s["instruction_suffix"]
                      else "") + (f"at least {s['min_new_tokens']} new tokens"
                                  if s["min_new_tokens"] else "")
            settings.append((name, variants, change))
        for treated in p.treated:
            settings.append(("+NEFT", p.arms_named(treated), f"{treated} finetune, plain prompt"))
        for name, arms, change in settings:
            row = ref.get("neft" if name == "+NEFT" else name, {})
            rows.append([name, where, win_rate(arms), metric(arms, "analysis", "chars_mean", 1),
                         change, fmt(row.get("win_rate")), fmt(row.get("chars"), 0)])
    caption = ("Table 5 — length is (not) all you need: the noise-off model asked for long "
               "answers or forced to write at least N new tokens, against the +NEFT model; 'ours' "
               f"computed by this run (judge {_judges(points)}), 'paper' columns are Jain et al. "
               "2023, Table 5 (LLaMA-1-7B on Alpaca, GPT-4 judge)." + evidence(points))
    return Table("table5", caption, header, rows)


def _paper_noise(noise: dict) -> str:
    alpha = float(noise["alpha"])
    return f"{noise['kind']}{int(alpha) if alpha.is_integer() else alpha}"


def table6(points: list[Point], paper: dict) -> Table:
    """Uniform vs Gaussian noise: a row per noise setting, a column per model/data."""
    ref = paper.get("table6", {})
    columns = sorted({(p.model, p.dataset) for p in points})
    rows_by_noise: dict[str, dict] = {}
    for p in points:
        for name in ["base"] + p.treated:
            arms = p.baseline if name == "base" else p.arms_named(name)
            rows_by_noise.setdefault(name, {"noise": arms[0].noise})[(p.model, p.dataset)] = arms
    header = ["noise"] + [f"ours: {m}, {d} — win rate" for m, d in columns] + [
        f"ours: {m}, {d} — LC" for m, d in columns] + [
        f"ours: {m}, {d} — mean chars" for m, d in columns] + [
        "paper: win rate Alpaca / Evol-Instruct / OpenPlatypus"]

    def order(name: str):
        n = rows_by_noise[name]["noise"]
        return (name != "base", n["kind"] == "gaussian", float(n.get("alpha", 0)))

    rows = []
    for name in sorted(rows_by_noise, key=order):
        cells = rows_by_noise[name]
        paper_row = ref.get(_paper_noise(cells["noise"]), {}) if name != "base" else {}
        datasets = ("alpaca", "evol-instruct", "open-platypus")
        paper_text = " / ".join(fmt(paper_row.get(d)) for d in datasets) if paper_row else "–"
        rows.append([name] + [win_rate(cells[c]) if c in cells else "–" for c in columns]
                    + [lc_win_rate(cells[c]) if c in cells else "–" for c in columns]
                    + [metric(cells[c], "analysis", "chars_mean", 1) if c in cells else "–"
                       for c in columns] + [paper_text])
    caption = ("Table 6 — uniform vs Gaussian NEFTune noise, each against the same noise-off "
               f"baseline; 'ours' computed by this run (judge {_judges(points)}), 'paper' column "
               "is Jain et al. 2023, Table 6 (LLaMA-2-7B, ChatGPT judge)." + evidence(points))
    return Table("table6", caption, header, rows)


def noise_grid(points: list[Point], paper: dict) -> Table:
    """Every noise arm of the experiment (the baseline once per model/data)."""
    header = ["model, data", "noise", "win rate vs reference", "vs base (head to head)",
              "mean characters", "whitespace tokens", "log-diversity", "openllm average (%)"]
    rows, seen = [], set()
    for p in points:
        for name in ["base"] + p.treated:
            if (p.model, p.dataset, name) in seen:
                continue
            seen.add((p.model, p.dataset, name))
            arms = p.baseline if name == "base" else p.arms_named(name)
            rows.append([f"{p.model}, {p.dataset}", name, win_rate(arms),
                         _head_to_head(p, name) if name != "base" else "–",
                         metric(arms, "analysis", "chars_mean", 1),
                         metric(arms, "analysis", "words_mean", 1),
                         metric(arms, "analysis", "log_diversity"),
                         metric(arms, "openllm", "openllm_average", 1, scale=100.0)])
    ref = paper.get("table6", {})
    caption = ("Noise settings — every arm of this experiment, computed by this run (judge "
               f"{_judges(points)}). Paper, Table 6 (ChatGPT judge, Alpaca / Evol-Instruct / "
               "OpenPlatypus): " + "; ".join(
                   f"{k}: " + " / ".join(fmt(v) for v in row.values()) for k, row in ref.items())
               + ".")
    return Table("noise_grid", caption, header, rows)


FAMILY_EFFECTS = (  # (compare metric, column, digits): each against the shared baseline
    ("win_rate", "win rate", 1),
    ("lc_win_rate", "LC win rate", 1),
    ("chars", "mean characters", 1),
    ("log_diversity", "log-diversity", 2),
)


def _effect_cell(effects: list, name: str, digits: int) -> Cell:
    """A compare difference with its CI: `+d (lo to hi)`, linked to the compare stage."""
    refs = [e.stages["compare"] for e in effects if "compare" in e.stages]
    d = refs[0].metrics.get(name) if refs else None
    if not d:
        return Cell("–")
    return Cell(f"{d['diff']:+.{digits}f} ({d['ci_low']:+.{digits}f} to "
                f"{d['ci_high']:+.{digits}f})", (refs[0].key,))


def _leaderboard_cell(effects: list) -> Cell:
    """Per leaderboard task the difference in points with its CI (compare's paired tests)."""
    refs = [e.stages["compare"] for e in effects if "compare" in e.stages]
    tasks = (refs[0].metrics.get("openllm") or {}) if refs else {}
    if not tasks:
        return Cell("–")
    parts = []
    for task, d in tasks.items():
        if "se" not in d:  # compare before version 3 kept lm-eval scores as fractions
            d = {**d, **{k: 100 * d[k] for k in ("diff", "ci_low", "ci_high")}}
        parts.append(f"{task} {d['diff']:+.1f} ({d['ci_low']:+.1f} to {d['ci_high']:+.1f})")
    return Cell("; ".join(parts), (refs[0].key,))


def family_setting(noise: dict) -> str:
    """A noise setting in words: its kind, the alpha it uses and its own settings."""
    if noise.get("kind", "none") == "none":
        return "none (baseline)"
    alpha = float(noise.get("alpha") or 0.0)
    parts = [f"alpha {alpha:g}"] if alpha else []  # 0: a kind whose strength is its own
    parts += [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
              for k, v in (noise.get("settings") or {}).items()]
    return f"{noise['kind']}: " + ", ".join(parts) if parts else noise["kind"]


def noise_family(points: list[Point], paper: dict) -> Table:
    """Every noise arm against the shared noise-off baseline: its win rates and their
    differences with 95% CIs (the compare stage), answer length and diversity, the leaderboard
    tasks, the noise-off training and held-out loss (the overfit stage) and what it cost to
    train (the finetune stage: steps, seconds, passes)."""
    header = (["model, data", "arm", "setting", "win rate", "LC win rate"]
              + [f"Δ {label} vs base (95% CI)" for _, label, _ in FAMILY_EFFECTS]
              + ["Δ leaderboard tasks vs base, points (95% CI)", "leaderboard average (%)",
                 "train loss (noise off)", "held-out loss", "steps", "train seconds",
                 "passes per example"])
    rows, seen = [], set()
    for p in points:
        for name in ["base"] + p.treated:
            arms = p.baseline if name == "base" else p.arms_named(name)
            # One row per trained model (the baseline every point shares: once).
            trained = tuple(sorted(a.stages["finetune"].key for a in arms
                                   if "finetune" in a.stages))
            if (p.model, p.dataset, name, trained) in seen:
                continue
            seen.add((p.model, p.dataset, name, trained))
            effects = [] if name == "base" else [e for e in p.effects if e.arm == name]
            rows.append(
                [f"{p.model}, {p.dataset}", name, family_setting(arms[0].noise),
                 win_rate(arms), lc_win_rate(arms)]
                + [_effect_cell(effects, m, d) if effects else "–" for m, _, d in FAMILY_EFFECTS]
                + [_leaderboard_cell(effects) if effects else "–",
                   metric(arms, "openllm", "openllm_average", 1, scale=100.0),
                   metric(arms, "overfit", "overfit_train_loss", 4),
                   metric(arms, "overfit", "overfit_heldout_loss", 4),
                   metric(arms, "finetune", "train_steps", 0),
                   metric(arms, "finetune", "train_runtime_s", 1),
                   metric(arms, "finetune", "train_passes_per_example", 0)])
    caption = (
        "Noise family — NEFTune and its relatives (FreeLB's K ascent steps from NEFTune's init, "
        "R3F's symmetric-KL term, NoisyTune's one-off weight noise), each trained on the same "
        "data with the same seeds and judged, decoded and measured alike, each against the same "
        "noise-off baseline. Δ: the arm minus the baseline, paired over the same prompts (and "
        "seeds), with the compare stage's 95% CI; win rates in points, lengths in characters. "
        "Train loss and held-out loss: mean NLL per response token measured with the noise off "
        "after training (the overfit stage; '–' where overfit=none). Cost: optimiser steps, "
        "seconds of the training loop (finetune's train_runtime_s, on the point's device) and "
        "forward+backward passes of the model per example and step (1: plain fine-tuning; R3F "
        "2; FreeLB K + 1; '–': not recorded by a stage stored before passes were counted). "
        f"Computed by this run (judge {_judges(points)})." + evidence(points))
    return Table("noise_family", caption, header, rows)
