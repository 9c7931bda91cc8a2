"""Tables of the answers and the models themselves: Table 4 (length and diversity), Figure 3
(OpenLLM leaderboard tasks) and Figures 4-5 (overfitting), ours beside the paper's."""

from __future__ import annotations

from pipeline.results.cells import Cell, Table, fmt, metric
from pipeline.results.points import Point

TABLE4_ROWS = (("characters", "chars_mean"), ("whitespace tokens", "words_mean"),
               ("2-gram repetition %", "rep2_pct"), ("log-diversity", "log_diversity"))


def _definitions(points: list[Point]) -> str:
    found = {a.stages["analysis"].metrics.get("definition", "corrected")
             for p in points for a in p.arms if "analysis" in a.stages}
    return ", ".join(sorted(found))


def table4(points: list[Point], paper: dict) -> Table:
    """Length and diversity rows as in the paper's Table 4; ours first, then the paper's columns."""
    ref = paper.get("table4", {})
    paper_cols = ref.get("columns", [])
    header = ["row"] + [f"ours: {p.dataset}, {(p.treated or ['base'])[0]} (K={p.setting['cutoff']})"
                        for p in points] + [f"paper: {c}" for c in paper_cols]
    rows = []
    for label, name in TABLE4_ROWS:
        lines = [("training data", None)] if name == "chars_mean" else []
        lines += [("base", "base"), ("+NEFT", "neft")]
        for arm_label, which in lines:
            ours = []
            for p in points:
                if which is None:
                    ref_ = p.point_stages["train_analysis"]
                    ours.append(Cell(fmt(ref_.metrics[name]), (ref_.key,)))
                else:
                    arms = p.baseline if which == "base" else (
                        p.arms_named(p.treated[0]) if p.treated else [])
                    ours.append(metric(arms, "analysis", name) if arms else "–")
            theirs = ref.get(f"{arm_label}, {label}", ["–"] * len(paper_cols))
            rows.append([f"{arm_label}, {label}"] + ours + [fmt(x) for x in theirs])
    kept = []
    for p in points:
        parts = []
        for arm in p.arms:
            m = arm.stages["analysis"].metrics
            parts.append(f"{arm.name} {m['n_kept']}/{m['n_total']}")
        kept.append(f"{p.dataset}: " + ", ".join(parts))
    caption = ("Table 4 — length and diversity of the outputs. 'ours' computed by this run "
               "(repetition and log-diversity on the first K whitespace tokens; outputs shorter "
               f"than K dropped, kept: {'; '.join(kept)}; arithmetic: {_definitions(points)}); "
               "'paper' columns are Jain et al. 2023, Table 4 (LLaMA-2-7B).")
    return Table("table4", caption, header, rows)


OPENLLM_TASKS = ("arc", "hellaswag", "mmlu", "truthfulqa")


def figure3(points: list[Point], paper: dict) -> Table:
    """Leaderboard scores (%) per task and their average, base vs +NEFT; ours, then the paper's."""
    header = ["source", "model, data", "arm", "ARC", "HellaSwag", "MMLU", "TruthfulQA", "average"]
    rows = []
    for p in points:
        for label, arms in [("base", p.baseline)] + [("+NEFT", p.arms_named(t)) for t in p.treated]:
            if any("openllm" in a.stages for a in arms):
                rows.append(["ours", f"{p.model}, {p.dataset}", label]
                            + [metric(arms, "openllm", f"openllm_{t}", 1, 100.0)
                               for t in OPENLLM_TASKS]
                            + [metric(arms, "openllm", "openllm_average", 1, 100.0)])
    for r in paper.get("figure3", []):
        for label, scores in (("base", r["base"]), ("+NEFT", r["neft"])):
            values = [scores[t] for t in OPENLLM_TASKS]
            rows.append(["paper (≈, read off a chart)", r["label"], label]
                        + [fmt(x, 1) for x in values] + [fmt(sum(values) / 4, 1)])
    settings = []
    for p in points:
        o = p.setting["openllm"]
        shots = ", ".join(f"{t} {n}" for t, n in o["shots"].items())
        limit = f", at most {o['limit']} questions per task" if o["limit"] else ""
        settings.append(f"{p.model}, {p.dataset}: {o['name']} ({o['task_set']} task set, "
                        f"shots {shots}{limit})")
    caption = ("Figure 3 — Open LLM Leaderboard tasks (%), lm-eval. 'ours' computed by this run "
               f"with {'; '.join(settings)}. The leaderboard uses ARC 25-shot, HellaSwag 10-shot, "
               "MMLU 5-shot, TruthfulQA 0-shot on the full datasets; a local task set, fewer shots "
               "or a limit make our numbers a smoke test of the same code path, not comparable to "
               "the paper's. 'paper' rows: Jain et al. 2023, Figure 3.")
    return Table("figure3", caption, header, rows)


OVERFIT_METRICS = (("training loss (noise off)", "overfit_train_loss", 4),
                   ("held-out loss", "overfit_heldout_loss", 4),
                   ("ROUGE-L vs training responses", "overfit_rougeL", 4),
                   ("BLEU vs training responses", "overfit_bleu", 2))


def overfit(points: list[Point], paper: dict) -> Table:
    """Means of the overfitting measures (Figs 4-5) per arm."""
    header = (["model, data", "arm"] + [label for label, _, _ in OVERFIT_METRICS]
              + ["rows (train / held-out / generated)", "held-out set"])
    rows = []
    for p in points:
        for name in ["base"] + p.treated:
            arms = [a for a in (p.baseline if name == "base" else p.arms_named(name))
                    if "overfit" in a.stages]
            if arms:
                m = arms[0].stages["overfit"].metrics
                rows.append([f"{p.model}, {p.dataset}", name]
                            + [metric(arms, "overfit", k, d) for _, k, d in OVERFIT_METRICS]
                            + [f"{m['overfit_n_train']} / {m['overfit_n_heldout']} / "
                               f"{m['overfit_n_generated']}", m["overfit_heldout"]])
    caption = ("Figures 4-5 — overfitting, measured with noise off after training: mean loss per "
               "response token on the training data and on held-out data; ROUGE-L (F, 0-1) and "
               "sentence BLEU (0-100) of greedy answers to training instructions against their "
               "training responses. Paper (LLaMA-2-7B, Alpaca, held-out Evol-Instruct; histograms "
               "only): with NEFT the training loss is higher, the held-out loss slightly lower, "
               "ROUGE-L and BLEU lower.")
    return Table("overfit", caption, header, rows)


def arm_metrics(stage: str, names: tuple[str, ...], caption: str):
    """A builder of a table of any per-arm stage: one row per point and arm, one column per
    metric in `names`, each cell linked to the `stage` results it came from (several seeds:
    mean ± sd). For a new stage's table, one TableSpec in registry.py with this builder."""

    def build(points: list[Point], paper: dict) -> Table:
        header = ["model, data", "arm", *names]
        rows = []
        for p in points:
            for name in dict.fromkeys(a.name for a in p.arms):
                arms = [a for a in p.arms_named(name) if stage in a.stages]
                if arms:
                    rows.append([f"{p.model}, {p.dataset}", name,
                                 *(metric(arms, stage, m) for m in names)])
        return Table(stage, caption, header, rows)

    return build


def has_stage(stage: str):
    """TableSpec.covers for the points where some arm ran `stage`."""
    return lambda p: any(stage in a.stages for a in p.arms)
