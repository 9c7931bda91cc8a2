"""Judge agreement with reference verdicts (GPT-4's or humans') and position consistency.

Agreement follows alpaca_eval's Analyzer (alpaca_eval.analyze.Analyzer, default
scoring_rule="absolute" = alpaca_eval.metrics.helpers.AbsoluteScoringRule): per pair, agreement
= 1 - |judge - reference| on the 1..2 preference scale, so a tie against a decided verdict counts
one half, a tie against a tie one, and the legacy 0 means a tie (1.5).
"""

from __future__ import annotations

import numpy as np

from pipeline.metrics.stats import bootstrap_mean_ci, paired_bootstrap_diff, win_scores

CHANCE = 50.0  # a coin-flip judge's expected agreement under the absolute rule, whatever the mix


def _prefs(values) -> np.ndarray:
    return win_scores(values) / 100.0 + 1.0  # 0 (alpaca_eval's legacy tie code) -> 1.5


def _agreement(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    # alpaca_eval's AbsoluteScoringRule per pair, in percent
    return 100.0 * (1.0 - np.abs(prediction - target))


def length_rule(lengths_1, lengths_2) -> np.ndarray:
    """Verdicts of a judge that only reads lengths: the longer output wins, a tie when equal
    (alpaca_eval's `_get_longest_predictor` gives equal lengths to output_2; a tie is fairer)."""
    l1, l2 = np.asarray(lengths_1, dtype=float), np.asarray(lengths_2, dtype=float)
    return np.where(l2 > l1, 2.0, np.where(l1 > l2, 1.0, 1.5))


def judge_agreement(
    judge_prefs,
    reference_prefs,
    lengths_1,
    lengths_2,
    seed: int = 0,
    n_resamples: int = 2000,
    level: float = 0.95,
) -> dict:
    """How well a judge's verdicts match reference verdicts (e.g. GPT-4's or humans') on the same
    pairs, beside a length-only judge and chance, in percent.

    Agreement per pair is alpaca_eval's Analyzer convention (AbsoluteScoringRule, see module doc).
    Pairs where either verdict is missing are dropped. chance_level is the best a judge that
    ignores the outputs can expect: 50 (a coin flip) or a constant verdict on this reference mix,
    whichever is higher. Returns n, n_dropped, accuracy and length_baseline (bootstrap_mean_ci
    dicts), chance_level, judge_minus_length (paired_bootstrap_diff dict), verdicts
    (is_informative) and tie_convention."""
    j, r = _prefs(judge_prefs), _prefs(reference_prefs)
    rule = length_rule(lengths_1, lengths_2)
    if not len(j) == len(r) == len(rule):
        raise ValueError(
            f"judge, reference and lengths differ in length: {len(j)}, {len(r)}, {len(rule)}"
        )
    keep = ~np.isnan(j) & ~np.isnan(r)
    j, r, rule = j[keep], r[keep], rule[keep]
    agree, length_agree = _agreement(j, r), _agreement(rule, r)
    constant = max(float(_agreement(np.full_like(r, c), r).mean()) for c in (1.0, 1.5, 2.0))
    accuracy = bootstrap_mean_ci(agree, n_resamples, seed, level)
    length = bootstrap_mean_ci(length_agree, n_resamples, seed, level)
    chance = max(CHANCE, constant)
    return {
        "n": int(keep.sum()),
        "n_dropped": int((~keep).sum()),
        "accuracy": accuracy,
        "length_baseline": length,
        "chance_level": chance,
        "judge_minus_length": paired_bootstrap_diff(length_agree, agree, n_resamples, seed, level),
        "verdicts": is_informative(accuracy, length, chance),
        "tie_convention": "alpaca_eval Analyzer, scoring_rule='absolute' "
        "(metrics.helpers.AbsoluteScoringRule): 1 - |judge - reference|",
    }


def position_consistency(
    forward_prefs, backward_prefs, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """Share (percent, bootstrap CI) of pairs where the judge picks the same OUTPUT in both orders.

    backward_prefs judge the swapped pair (output_1 and output_2 exchanged). A pick is output_1,
    output_2 or a tie (preference below, above or at 1.5); pairs with a missing verdict are
    dropped. Returns bootstrap_mean_ci's keys plus n_dropped."""
    f, b = _prefs(forward_prefs), _prefs(backward_prefs)
    if len(f) != len(b):
        raise ValueError(f"forward and backward verdicts differ in length: {len(f)} vs {len(b)}")
    keep = ~np.isnan(f) & ~np.isnan(b)
    # the backward verdict, flipped back to the forward order, is 3 - b
    same = np.sign(f[keep] - 1.5) == np.sign((3.0 - b[keep]) - 1.5)
    return {
        **bootstrap_mean_ci(100.0 * same, n_resamples, seed, level),
        "n_dropped": int((~keep).sum()),
    }


def is_informative(accuracy: dict, length_baseline: dict, chance_level: float = CHANCE) -> dict:
    """Plain-words verdicts on a judge from its agreement CI (bootstrap_mean_ci dicts, percent).

    Not distinguishable from chance: the CI reaches chance_level. Not better than the length rule:
    the CI reaches the length rule's point estimate. Returns better_than_chance,
    better_than_length, informative (both) and the sentences chance_verdict, length_verdict."""
    low, high = accuracy["ci_low"], accuracy["ci_high"]
    ci = f"agreement {accuracy['mean']:.1f}% (CI {low:.1f} to {high:.1f}, n={accuracy['n']})"
    beats_chance, beats_length = low > chance_level, low > length_baseline["mean"]
    level = f"the chance level {chance_level:.1f}%"
    if beats_chance:
        chance = f"distinguishable from chance: {ci} lies above {level}"
    elif high < chance_level:
        chance = f"worse than chance: {ci} lies below {level}"
    else:
        chance = f"not distinguishable from chance: {ci} includes {level}"
    rule = f"the length rule ('the longer answer wins', {length_baseline['mean']:.1f}%)"
    if beats_length:
        length = f"better than {rule}: {ci} lies above it"
    else:
        length = f"not better than {rule}: {ci} reaches down to it or lower"
    return {
        "better_than_chance": bool(beats_chance),
        "better_than_length": bool(beats_length),
        "informative": bool(beats_chance and beats_length),
        "chance_verdict": chance,
        "length_verdict": length,
    }
