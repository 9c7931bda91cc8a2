"""The "Human study" section of REPORT.md: human win rate beside the judges' and the paper's.

The votes are read from each study's votes.sqlite, or from the database named by the
NEFTUNE_HUMAN_DB environment variable when the study was held on a shared server.
"""

from __future__ import annotations

import os
from pathlib import Path

from markdown_it import MarkdownIt

from pipeline.human.db import VoteDB
from pipeline.human.export import summarize
from pipeline.human.study import Study, existing_studies
from pipeline.markup import escape_mathtext, escape_md

# Jain et al. 2023, human study: 140 prompts, NEFT preferred 88 times, 22 draws, "74.6% win".
PAPER = {"n": 140, "neft": 88, "draws": 22}
FIGURE = "human_study.png"
DB_ENV = "NEFTUNE_HUMAN_DB"


def _pct(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(block: dict | None) -> str:
    return "" if not block else f" (95% CI {block['ci_low']:.1f} to {block['ci_high']:.1f})"


def _table(s: dict) -> list[str]:
    h, p = s["human"], PAPER
    paper_half = 100 * (p["neft"] + p["draws"] / 2) / p["n"]
    lc = (
        f"{_pct(h['lc_win_rate'])} ({h['lc_label']})"
        if h.get("lc_win_rate") is not None
        else f"– ({h.get('lc_why', 'unavailable')})"
    )
    counts = f"{h['n_wins']:.0f} / {h['n_draws']:.0f} / {h['n_wins_base']:.0f}"
    return [
        "| | ours: humans | paper: humans |",
        "|---|---|---|",
        f"| +NEFT win rate, draws count ½ (%) | {_pct(h['win_rate'])} ± "
        f"{_pct(h['standard_error'])}{_ci(h.get('ci'))} | {paper_half:.2f} (computed from the "
        f"paper's counts) |",
        f"| +NEFT win rate, draws excluded (%) | {_pct(h['win_rate_excl_draws'])} | "
        f"74.6 (= 88 / (140 − 22), the paper's figure) |",
        f"| length-controlled win rate (%) | {lc} | – |",
        f"| votes: +NEFT / draw / base | {counts} | {p['neft']} / {p['draws']} / "
        f"{p['n'] - p['neft'] - p['draws']} |",
        f"| votes (annotators, pairs voted) | {s['n_votes']} ({len(s['annotators'])}, "
        f"{s['n_pairs_voted']} of {s['n_pairs']}) | {p['n']} (–, {p['n']}) |",
    ]


def _judges(s: dict) -> list[str]:
    if not s["judges"]:
        return ["No judge stage of this point compared +NEFT with base (head_to_head)."]
    lines = [
        "| judge stage | judge: +NEFT win rate (%) | agreement with the human majority "
        "(%) | same verdict (%) | length rule (%) | pairs |",
        "|---|---|---|---|---|---|",
    ]
    for j in s["judges"]:
        if "agreement" not in j:
            lines.append(
                f"| {escape_md(j['name'])} | {_pct(j['win_rate'])} | – "
                f"({escape_md(j['why'])}) | – | – "
                f"| 0 |"
            )
            continue
        acc, length = j["agreement"]["accuracy"], j["agreement"]["length_baseline"]
        lines.append(
            f"| {escape_md(j['name'])} | {_pct(j['win_rate'])} | "
            f"{acc['mean']:.1f}{_ci(acc)} | "
            f"{j['exact']:.1f} | {length['mean']:.1f} | {j['n']} |"
        )
    lines += [
        "",
        "Agreement per pair is alpaca_eval's rule (1 − |judge − human|, a tie against a "
        "decided verdict counts ½); 'same verdict' counts exact matches; the length rule is "
        "a judge that always picks the longer answer. The human majority is the most "
        "frequent vote of a pair (a draw when two verdicts are equally frequent).",
    ]
    return lines


def _links(s: dict) -> list[str]:
    """Who voted and through which link (export.links): counts, then one row per annotator."""
    if "links" not in s:
        return []
    k = s["links"]
    legacy = (
        f"; {k['n_legacy']} legacy annotators (names typed on the start page before invites, "
        f"not verified) with {k['n_legacy_votes']} votes"
        if k["n_legacy"]
        else ""
    )
    lines = [
        f"Annotators: {k['n_annotators']} with {s['n_votes']} votes; invite links: "
        f"{k['n_links_made']} made, {k['n_links_used']} used, {k['n_links_revoked']} "
        f"revoked{legacy}."
    ]
    if not k["rows"]:
        return lines
    lines += ["", "| annotator | from | link made | link | votes |", "|---|---|---|---|---|"]
    for r in k["rows"]:
        source = f"invite #{r['id']}"
        if r["source"] == "legacy":
            source = "legacy name" + (f", then invite #{r['id']}" if r["link_made"] else "")
        # Labels are data typed by the owner (legacy: by anyone): escaped like names.
        lines.append(
            f"| {escape_md(r['label'])} | {source} | {r['link_made'] or '–'} | {r['link']} "
            f"| {r['votes']} |"
        )
    return lines


def study_markdown(study: Study, s: dict, figure: str | None) -> str:
    """The markdown of one study's summary (from export.summarize)."""
    head = (
        f"Study `{study.id}`: point `{study.point_id}`, arm `{study.neft['arm']}` (+NEFT) vs "
        f"`{study.base['arm']}` (base), seed {study.base['seed']}; blind pairwise votes "
        f"(answers in random order per annotator, model names hidden) collected with "
        f"`python -m pipeline.human serve experiment={study.experiment}`."
    )
    if not s.get("human"):
        return "\n".join([head, "", f"No votes yet ({s['n_pairs']} pairs).", "", *_links(s)])
    ia = s["inter_annotator"]
    kappa = (
        f"{ia['method']}'s kappa {ia['kappa']:.2f} over {ia['n']} pairs"
        if ia["kappa"] is not None
        else f"not computed ({ia['method']}, {ia['n']} pairs)"
    )
    # Names are data typed by annotators: escaped, never read as Markdown or HTML.
    who = ", ".join(f"{escape_md(n)}: {c}" for n, c in sorted(s["annotators"].items()))
    parts = [
        head,
        "",
        *_table(s),
        "",
        f"Agreement between annotators: {kappa}. Votes per annotator: {who}.",
        "",
        *_links(s),
        "",
        *_judges(s),
    ]
    if "longer_check" in s:
        lc = s["longer_check"]
        parts += [
            "",
            f"Blind length check: annotators named the longer answer (or 'about the "
            f"same', within 10%) correctly in {lc['correct']:.1f}% of {lc['n']} answers.",
        ]
    if figure:
        parts += ["", f"![Human study: +NEFT win rate, humans vs judges vs paper]({figure})"]
    return "\n".join(parts)


def human_report_section(
    results_dir: Path,
    store: Path | None = None,
    db_url: str | None = None,
    figures_dir: Path | None = None,
) -> str | None:
    """Markdown of REPORT.md's "Human study" section for the experiment in `results_dir`
    (writes human_study.png into `figures_dir`, default `results_dir`); None when no study
    exists for it. Votes come from `db_url`,
    else $NEFTUNE_HUMAN_DB, else each study's votes.sqlite."""
    studies = existing_studies(Path(results_dir), store)
    if not studies:
        return None
    parts = ["## Human study — blind pairwise preference, base vs +NEFT", ""]
    for i, study in enumerate(studies):
        db = VoteDB(db_url or os.environ.get(DB_ENV) or study.default_db_url, study.id)
        try:
            summary = summarize(study, db.current_votes(), db.annotators())
        finally:
            db.dispose()
        name = FIGURE if i == 0 else f"human_study_{i + 1}.png"
        figure = name if summary.get("human") else None
        if figure:
            write_figure(summary, Path(figures_dir or results_dir) / name)
        parts += [study_markdown(study, summary, figure), ""]
    parts.append(
        "Paper (Jain et al. 2023): 140 prompts, +NEFT preferred 88 times, 22 draws: "
        "74.6% win (88 / (140 − 22))."
    )
    return "\n".join(parts)


def write_figure(s: dict, path: Path) -> None:
    """Bars: +NEFT win rate by humans (CI), judges (SE) and the paper; votes per annotator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = s["human"]
    rows = [("humans (ours)", h["win_rate"], h.get("ci"))]
    if h.get("lc_win_rate") is not None:
        rows.append((f"humans, {h['lc_label']}", h["lc_win_rate"], None))
    rows += [
        (escape_mathtext(j["name"][:40]), j["win_rate"], None)
        for j in s["judges"]
        if j.get("win_rate") is not None
    ]
    rows.append(("paper humans (draws excl.)", 74.6, None))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [3, 2]})
    ys = list(range(len(rows)))
    colors = ["#4a8"] * (len(rows) - 1) + ["#999"]  # the paper's bar in grey
    ax.barh(ys, [v for _, v, _ in rows], color=colors)
    ci = h.get("ci")
    if ci:
        ax.errorbar(
            [h["win_rate"]],
            [0],
            xerr=[[h["win_rate"] - ci["ci_low"]], [ci["ci_high"] - h["win_rate"]]],
            fmt="none",
            ecolor="black",
            capsize=4,
        )
    ax.set_yticks(ys, [r[0] for r in rows])
    ax.axvline(50, color="#888", ls="--", lw=1)
    ax.set_xlim(0, 100)
    ax.set_xlabel("+NEFT win rate vs base (%), humans with 95% CI")
    ax.invert_yaxis()
    names = sorted(s["annotators"])
    counts = s["per_annotator"]
    left = [0] * len(names)
    for label, key, color in (("+NEFT", 2.0, "#4a8"), ("draw", 1.5, "#bbb"), ("base", 1.0, "#c66")):
        vals = [counts[n].get(key, 0) for n in names]
        ax2.barh(range(len(names)), vals, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, vals)]
    # Positions, not the names, as categories: names are data (a "$" would start mathtext).
    ax2.set_yticks(range(len(names)), [escape_mathtext(n) for n in names])
    ax2.set_title("votes per annotator", fontsize=10)
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_html(text: str, img_prefix: str = "") -> str:
    """HTML of the markdown this module writes (headings, tables, images, paragraphs), for the
    /report page: CommonMark with tables (markdown-it-py), raw HTML off, so that names and
    labels (data, escaped by escape_md) are shown as typed and never read as markup. Image
    paths get `img_prefix` (the page serves the figures under report/)."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for token in tokens:
        for image in token.children or ():
            if image.type == "image":
                # alt first, as this page always wrote it (tests/test_human.py looks for it).
                src = img_prefix + str(image.attrs["src"])
                image.attrs = {"alt": "", **image.attrs, "src": src}
    return md.renderer.render(tokens, md.options, {})
