"""alpaca_eval's length_controlled_minimal GLM (length term + intercept, no instruction
difficulty) on design rows built once: the fits behind the minimal LC win rate, its standard error
and the paired LC interval. numpy, pandas and alpaca_eval only.

alpaca_eval fixes its AlpacaEval version when first imported, so it is imported inside the
functions, through alpaca_eval_metrics.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import numpy as np

LC_MINIMAL = "length_controlled_minimal"
REQUIRED = ("preference", "output_1", "output_2")
MIN_PAIRS = 5  # alpaca_eval cross-validates its GLM with 5 folds
# What a process that pinned no AlpacaEval version imports alpaca_eval as: the paper's, the
# default of judge.alpaca_eval_version (pipeline.config.schema).
UNPINNED_IS_ALPACA_EVAL_2 = "False"


def alpaca_eval_metrics():
    """alpaca_eval.metrics (get_winrate, glm_winrate), for results that do not depend on the
    AlpacaEval version, imported without deciding it against the judges.

    alpaca_eval reads IS_ALPACA_EVAL_2 once, at its first import, for the whole process. A run
    pins the configured version in its judge's check before any stage or table
    (pipeline.judging.alpaca_import), so this imports that one. Only a process that pinned none
    (a report rebuilt from point files, the human study) gets the paper's version here, rather
    than alpaca_eval's default 2: imported first by the aggregation of a rerun, that default
    made every later judge of version 1 in the process fail."""
    os.environ.setdefault("IS_ALPACA_EVAL_2", UNPINNED_IS_ALPACA_EVAL_2)
    import alpaca_eval.metrics

    return alpaca_eval.metrics


def annotation_frame(annotations):
    """A DataFrame of `annotations`, with a clear error when a field the GLM needs is missing."""
    import pandas as pd

    df = pd.DataFrame(annotations).reset_index(drop=True)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing or df.empty:
        raise ValueError(
            f"length-controlled win rate needs annotations with fields {REQUIRED}; "
            f"missing: {missing or 'all rows (no annotations)'}"
        )
    for col in ("output_1", "output_2"):
        bad = df.index[~df[col].map(lambda x: isinstance(x, str))]
        if len(bad):
            raise ValueError(f"annotation {bad[0]}: '{col}' is not a string")
    return df


@contextmanager
def quiet_sklearn():
    """sklearn config and warnings stay as they were: alpaca_eval's fit sets a global config."""
    import sklearn

    with sklearn.config_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.8 deprecations in alpaca_eval
        yield


def minimal_glm_design(preferences, len_1, len_2):
    """alpaca_eval's design matrices of its length_controlled_minimal GLM: (training rows, the
    zero-length row). Features as alpaca_eval builds them (length difference len_1 - len_2 over
    its standard deviation, preferences shifted to [0, 1], ties 0.5); fit_minimal_design fits
    them with alpaca_eval's CV logistic regression and predicts at zero length difference."""
    import numpy as np
    import pandas as pd

    glm = alpaca_eval_metrics().glm_winrate

    pref = pd.Series(preferences, dtype=float).replace({0.0: 1.5}) - 1.0
    delta = pd.Series(np.asarray(len_1, dtype=float) - np.asarray(len_2, dtype=float))
    sd = delta.std()
    # No spread in lengths: nothing to control for (alpaca_eval would divide by zero).
    std_delta = delta / sd if sd > 0 else delta * 0.0
    train = pd.DataFrame(
        {
            "preference": pref.to_numpy(),
            "std_delta_len": std_delta.to_numpy(),
            "not_gamed_baseline": True,
        }
    )
    test = pd.DataFrame({"not_gamed_baseline": [True], "std_delta_len": [0.0]})
    # Rows of missing verdicts stay (fit_minimal_design drops them): row i is pair i, so that
    # the same resampled rows of two arms are the same prompts.
    return glm.make_dmatrix_for_model(train, test, formula=glm.GLM_INFO[LC_MINIMAL]["formula"])


def fit_minimal_design(x_train, x_test, C: float | None = None) -> tuple[float, float]:
    """Fit the minimal GLM on its design rows (CV over C, or `C` given); (LC, C)."""
    glm = alpaca_eval_metrics().glm_winrate
    x_train = x_train[x_train["preference"].notna()]
    if len(x_train) < MIN_PAIRS:
        raise ValueError(
            f"length-controlled win rate needs at least {MIN_PAIRS} judged pairs, "
            f"got {len(x_train)}"
        )
    if x_train["preference"].nunique() == 1:
        # Unanimous verdicts leave nothing for length to explain, and alpaca_eval's duplicated-
        # row fit degenerates there (liblinear drops the zero-weight class, prints to stdout,
        # and returns 50 when every verdict went to the reference): LC = the raw win rate.
        return float(x_train["preference"].iloc[0] * 100), float("nan")
    kwargs = dict(glm.GLM_INFO[LC_MINIMAL]["kwargs"]) if C is None else {"n_splits": 0, "C": C}
    with quiet_sklearn():
        model = glm.fit_LogisticRegressionCV(x_train, "preference", is_ytrue_proba=True, **kwargs)
    # Every test row is the same (zero length difference), so one prediction is the mean.
    chosen = float(model.C_[0]) if C is None else float(C)
    return float(model.predict_proba(x_test)[0, 1] * 100), chosen


def lc_bootstrap_se(x_train, x_test, chosen: float, n_resamples: int = 100, seed: int = 0) -> float:
    """Standard error (points) of the minimal-GLM LC win rate: the SD of its refits on bootstrap
    resamples of the design rows (winrate.minimal_glm_design), each at the C cross-validation
    chose on all pairs (milliseconds a fit, not a CV each). alpaca_eval's own formula (sem of the
    per-instruction predictions) is 0 for this GLM, whose prediction is one constant."""
    if not np.isfinite(chosen):
        return 0.0  # unanimous verdicts: every resample is unanimous too
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(n_resamples):  # rows of alpaca_eval's design, built once on all pairs
        rows = x_train.iloc[rng.integers(0, len(x_train), len(x_train))]
        fits.append(fit_minimal_design(rows, x_test, C=chosen)[0])
    return float(np.std(fits, ddof=1))
