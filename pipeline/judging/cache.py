"""alpaca_eval's verdict cache (annotations.json), kept trustworthy across failures.

- Only valid verdicts are cached: a preference is a finite number in [1, 2]. alpaca_eval itself
  caches an answer its parser cannot read (garbage, no logprobs) as -1 and never asks again; here
  it is left out, so a rerun asks the judge again for exactly those pairs.
- Entries that are not valid verdicts (written by older versions) are dropped when it is read.
- It is written atomically: a kill or a full disk mid-write leaves the previous file.
- A file that cannot be read (0 bytes, truncated) is renamed aside to
  annotations.json.corrupt-<time>, said so, and rebuilt by asking the judge again.
"""

from __future__ import annotations

import functools
import math
import os
from datetime import datetime
from pathlib import Path

from pipeline.store.store import write_text_atomic


def is_valid_preference(value) -> bool:
    """Whether `value` is a verdict: a finite number in [1, 2] (1 = output_1, 2 = output_2)."""
    if isinstance(value, bool):
        return False
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and 1.0 <= number <= 2.0


def quarantine(path: Path, why: str) -> Path:
    """Rename an unreadable cache file aside (never deleted) and say where it went."""
    aside = path.with_name(f"{path.name}.corrupt-{datetime.now():%Y%m%d-%H%M%S-%f}")
    os.replace(path, aside)
    print(
        f"[judge] verdict cache {path} is unreadable ({why}); moved aside to {aside}; "
        "its verdicts will be asked again",
        flush=True,
    )
    return aside


def invalid_verdicts_message(annotator, scored: list[dict], fields: list[str]) -> str | None:
    """Why `scored` cannot be used (pairs whose `fields` are not all valid verdicts), or None."""
    bad = [s for s in scored if not all(is_valid_preference(s.get(f)) for f in fields)]
    rejected = annotator.take_rejected() if hasattr(annotator, "take_rejected") else []
    if not bad:
        return None
    example = repr(rejected[0])[:300] if rejected else "(no answer recorded)"
    return (
        f"judge={getattr(annotator, 'judge_name', '?')}: {len(bad)} of {len(scored)} pairs got "
        f"an invalid verdict ({len(rejected)} answers were not a preference in [1, 2]), e.g. the "
        f"judge answered {example}. Valid verdicts are cached in "
        f"{getattr(annotator, 'caching_path', None)}, invalid ones are not: fix the judge (its "
        f"server, model or prompt) and rerun, which asks it again for exactly those pairs"
    )


class _ValidatingParse:
    """Mixin of alpaca_eval's SinglePairwiseAnnotator: every invalid parsed verdict becomes a
    missing one, its raw answer kept in `rejected`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rejected: list = []

    def _parse_completions(self, completions):
        verdicts, raw = super()._parse_completions(completions)
        checked = []
        for verdict, completion in zip(verdicts, raw):
            if not is_valid_preference(verdict):
                self.rejected.append(completion)
                verdict = None  # dropped by alpaca_eval's postprocessing, never stored
            checked.append(verdict)
        return checked, raw


class _ValidCache:
    """Mixin of alpaca_eval's PairwiseAnnotator: its JSON cache holds valid verdicts only."""

    def __init__(self, *args, **kwargs):
        # alpaca_eval's default (True) stores a missing verdict as -1 and reuses it forever.
        super().__init__(*args, is_store_missing_annotations=False, **kwargs)

    def take_rejected(self) -> list:
        """Raw answers whose verdict was invalid since the last call."""
        rejected = []
        for single in self.annotators.values():
            rejected += single.rejected
            single.rejected = []
        return rejected

    def load_(self, path=None):
        path = path or self.caching_path
        try:
            super().load_(path)
        except ValueError as exc:  # pandas: "Expected object or value", "Unexpected ..."
            quarantine(Path(path), f"{type(exc).__name__}: {exc}")
            self.df_annotations = None
            return
        df, key = self.df_annotations, self.annotation_key
        if df is None or df.empty:
            return
        missing = [c for c in self.all_keys + [key] if c not in df.columns]
        if missing:
            quarantine(Path(path), f"no field(s) {missing}")
            self.df_annotations = None
            return
        valid = df[key].map(is_valid_preference).astype(bool)
        if not valid.all():
            print(
                f"[judge] {path}: dropped {int((~valid).sum())} cached entries that are not "
                "a verdict in [1, 2]; those pairs will be asked again",
                flush=True,
            )
        df = df[valid].copy()
        # pandas 3 reads an all-integer column back as int64; the annotator expects floats.
        df[key] = df[key].astype(float)
        self.df_annotations = df

    def save(self, path=None):
        path = path or self.caching_path
        if path is None:
            return
        self._refresh_annotations_()  # alpaca_eval's merge with what is on disk now
        df = self.df_annotations
        self.df_annotations = df[df[self.annotation_key].map(is_valid_preference).astype(bool)]
        write_text_atomic(Path(path), self.df_annotations.to_json(orient="records", indent=2))

    def _apply_cached_annotations(self, df_to_annotate):
        # alpaca_eval's filter of missing verdicts needs a non-empty cache.
        if self.df_annotations is None or self.df_annotations.empty:
            return df_to_annotate
        return super()._apply_cached_annotations(df_to_annotate)


@functools.cache
def annotator_class():
    """alpaca_eval's PairwiseAnnotator with the cache rules above (imported late: see judging)."""
    from alpaca_eval.annotators import PairwiseAnnotator
    from alpaca_eval.annotators.pairwise_evaluator import SinglePairwiseAnnotator

    single = type("ValidatingSingleAnnotator", (_ValidatingParse, SinglePairwiseAnnotator), {})
    # alpaca_eval builds each single annotator from this property.
    return type(
        "CachedPairwiseAnnotator",
        (_ValidCache, PairwiseAnnotator),
        {"SingleAnnotator": property(lambda self: single)},
    )
