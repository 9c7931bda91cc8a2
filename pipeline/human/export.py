"""Human votes as alpaca_eval annotations, and the numbers computed from them.

Every export has output_1 = base, output_2 = +NEFT whatever order an annotator saw, so
alpaca_eval's get_winrate gives the +NEFT win rate (preference 1 = base wins, 2 = +NEFT wins,
1.5 = tie), as for the judges' head-to-head.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

from pipeline.human.study import Study

VERDICTS = (1.0, 1.5, 2.0)


def annotations(study: Study, votes: list[dict]) -> list[dict]:
    """One alpaca_eval annotation per (annotator, pair): the latest vote, ordered by pair."""
    out = []
    for v in sorted(votes, key=lambda v: (v["pair_id"], v["annotator"])):
        pair = study.pairs[v["pair_id"]]
        out.append(
            {
                "instruction": pair["instruction"],
                "output_1": pair["output_1"],
                "output_2": pair["output_2"],
                "generator_1": study.base["generator"],
                "generator_2": study.neft["generator"],
                "preference": v["preference"],
                "annotator": v["annotator"],
                "pair_id": v["pair_id"],
                "dataset": pair.get("dataset", ""),
                "longer_guess": v.get("longer"),
                "n_changes": v.get("n_changes", 0),
                "annotator_source": "legacy" if v.get("legacy_annotator") else "invite",
            }
        )
    return out


def _by_pair(anns: list[dict]) -> dict[int, dict[str, float]]:
    table: dict[int, dict[str, float]] = defaultdict(dict)
    for a in anns:
        table[a["pair_id"]][a["annotator"]] = float(a["preference"])
    return table


def majority(anns: list[dict]) -> dict[int, float]:
    """The human verdict per pair: the most frequent vote; 1.5 when two verdicts tie for it."""
    out = {}
    for pid, prefs in _by_pair(anns).items():
        counts = Counter(prefs.values()).most_common()
        top = [v for v, c in counts if c == counts[0][1]]
        out[pid] = top[0] if len(top) == 1 else 1.5
    return out


def cohen_kappa(anns: list[dict], a: str, b: str) -> dict:
    """Cohen's kappa of two annotators over the pairs both voted on (sklearn)."""
    from sklearn.metrics import cohen_kappa_score

    both = [(p[a], p[b]) for p in _by_pair(anns).values() if a in p and b in p]
    if len(both) < 2:
        return {"kappa": None, "n": len(both), "method": "Cohen"}
    x, y = ([str(v) for v in col] for col in zip(*both))
    kappa = float(cohen_kappa_score(x, y, labels=[str(v) for v in VERDICTS]))
    return {"kappa": kappa if kappa == kappa else None, "n": len(both), "method": "Cohen"}


def fleiss_kappa(anns: list[dict]) -> dict:
    """Fleiss' kappa over the pairs that every annotator voted on."""
    # Written here: none of the installed libraries (sklearn, scipy) has Fleiss' kappa.
    raters = sorted({a["annotator"] for a in anns})
    rows = [p for p in _by_pair(anns).values() if len(p) == len(raters)]
    n, m = len(rows), len(raters)
    if n < 2 or m < 2:
        return {"kappa": None, "n": n, "method": "Fleiss"}
    counts = [[sum(v == c for v in p.values()) for c in VERDICTS] for p in rows]
    p_cat = [sum(r[j] for r in counts) / (n * m) for j in range(len(VERDICTS))]
    p_item = [(sum(c * c for c in r) - m) / (m * (m - 1)) for r in counts]
    p_bar, p_e = sum(p_item) / n, sum(p * p for p in p_cat)
    kappa = None if p_e == 1 else (p_bar - p_e) / (1 - p_e)
    return {"kappa": kappa, "n": n, "method": "Fleiss"}


def inter_annotator(anns: list[dict]) -> dict:
    """Agreement between annotators: Cohen's kappa for two, Fleiss' kappa for more."""
    raters = sorted({a["annotator"] for a in anns})
    if len(raters) < 2:
        return {"kappa": None, "n": 0, "method": "one annotator"}
    if len(raters) == 2:
        return cohen_kappa(anns, *raters)
    return fleiss_kappa(anns)


def human_winrate(anns: list[dict], seed: int = 0) -> dict:
    """alpaca_eval win rate of +NEFT over all votes, its LC beside it, and a 95% CI from a
    bootstrap over pairs (each pair's votes stay together, so annotators are not counted as
    independent prompts)."""
    from pipeline.metrics.stats import bootstrap_mean_ci, win_scores
    from pipeline.metrics.winrate import length_controlled, winrate_metrics

    out = winrate_metrics(anns)
    per_pair = [sum(win_scores(list(p.values()))) / len(p) for p in _by_pair(anns).values()]
    out["ci"] = bootstrap_mean_ci(per_pair, seed=seed) if len(per_pair) >= 2 else None
    decided = out["n_total"] - out["n_draws"]
    # The paper's 74.6% is 88 / (140 - 22): wins over decided votes.
    out["win_rate_excl_draws"] = 100 * out["n_wins"] / decided if decided else None
    try:
        out.update(length_controlled(anns))
    except ValueError as err:  # too few votes for alpaca_eval's GLM
        out.update(lc_win_rate=None, lc_standard_error=None, lc_method=None, lc_why=str(err))
    return out


def judge_vs_humans(study: Study, anns: list[dict]) -> list[dict]:
    """Per judge stage of the point: agreement with the human majority on the same instructions."""
    from pipeline.metrics.agreement import judge_agreement

    major = majority(anns)
    out = []
    for judge in study.judges:
        row = {"name": judge["name"], "win_rate": judge["metrics"].get("win_rate"), "n": 0}
        if judge["scored"] is None:
            out.append({**row, "why": f"{judge['key']}/scored.json is missing"})
            continue
        scored = json.loads(judge["scored"].read_text(encoding="utf-8"))
        verdict = {s["instruction"]: s.get("preference") for s in scored}
        pids = [p for p in sorted(major) if study.pairs[p]["instruction"] in verdict]
        if len(pids) < 2:
            out.append({**row, "why": "fewer than 2 voted instructions were judged"})
            continue
        pairs = [study.pairs[p] for p in pids]
        agreement = judge_agreement(
            [verdict[p["instruction"]] for p in pairs],
            [major[p] for p in pids],
            [len(p["output_1"]) for p in pairs],
            [len(p["output_2"]) for p in pairs],
        )
        same = [_side(verdict[p["instruction"]]) == _side(major[p["id"]]) for p in pairs]
        out.append(
            {
                **row,
                "n": agreement["n"],
                "agreement": agreement,
                "exact": 100 * sum(same) / len(same),
            }
        )
    return out


def _side(pref) -> str | None:
    if pref is None:
        return None
    pref = 1.5 if float(pref) == 0 else float(pref)
    return "tie" if pref == 1.5 else ("base" if pref < 1.5 else "neft")


def _utc(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def links(annotators: list[dict]) -> dict:
    """Where the votes came from (VoteDB.annotators()): per annotator its label, source
    ("invite": a link the owner made; "legacy": a name typed before invites), link state and
    time made, whether a link was used, votes; and the counts. Never a token."""
    rows = [
        {
            "id": a["id"],
            "label": a["label"],
            "source": "legacy" if a["legacy"] else "invite",
            "link": a["link"],
            "link_made": _utc(a["invited_at"]),
            "used": a["sessions"] > 0,
            "votes": a["votes"],
        }
        for a in annotators
    ]
    made = [r for r in rows if r["link_made"] is not None]
    legacy = [r for r in rows if r["source"] == "legacy"]
    return {
        "rows": rows,
        "n_annotators": sum(r["votes"] > 0 for r in rows),
        "n_links_made": len(made),
        "n_links_used": sum(r["used"] for r in made),
        "n_links_revoked": sum(r["link"] == "revoked" for r in made),
        "n_legacy": sum(r["votes"] > 0 for r in legacy),
        "n_legacy_votes": sum(r["votes"] for r in legacy),
    }


def summarize(study: Study, votes: list[dict], annotators: list[dict] | None = None) -> dict:
    """Every number of the study: counts, human win rate (+LC, CI), kappa, judges vs humans;
    with `annotators` (VoteDB.annotators()) also where the votes came from ("links")."""
    anns = annotations(study, votes)
    summary = {
        "study": study.id,
        "n_pairs": len(study.pairs),
        "n_votes": len(anns),
        "n_pairs_voted": len({a["pair_id"] for a in anns}),
        "annotators": dict(Counter(a["annotator"] for a in anns)),
        "per_annotator": {},
    }
    if annotators is not None:
        summary["links"] = links(annotators)
    for a in anns:
        verdicts = summary["per_annotator"].setdefault(a["annotator"], Counter())
        verdicts[float(a["preference"])] += 1
    if not anns:
        return summary
    summary["human"] = human_winrate(anns)
    summary["inter_annotator"] = inter_annotator(anns)
    summary["judges"] = judge_vs_humans(study, anns)
    guesses = [a for a in anns if a["longer_guess"]]
    if guesses:
        right = sum(a["longer_guess"] == _longest(a) for a in guesses)
        summary["longer_check"] = {"n": len(guesses), "correct": 100 * right / len(guesses)}
    return summary


def _longest(a: dict) -> str:
    """The longer answer; "same" within 10% of the longer one (what a glance can tell)."""
    l1, l2 = len(a["output_1"]), len(a["output_2"])
    if abs(l1 - l2) <= 0.1 * max(l1, l2):
        return "same"
    return "neft" if l2 > l1 else "base"
