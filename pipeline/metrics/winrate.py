"""Raw and length-controlled (LC) win rates, both through alpaca_eval's own code.

Annotations follow alpaca_eval: preference 1 = output_1 (the reference) wins, 2 = output_2 (the
model) wins, 1.5 (or the legacy 0) a tie, floats for weighted judges, None when unparsed.

LC: alpaca_eval's `get_length_controlled_winrate` with its `length_controlled_v1` GLM when the
instruction-difficulty data (alpaca_eval's df_gamed.csv) is at hand: a local file given as
`lc_data`, the Hugging Face cache, or the hub when online. Otherwise the `length_controlled_minimal`
GLM of alpaca_eval's glm_winrate module (length term + intercept, no instruction difficulty), fitted
with alpaca_eval's `make_dmatrix_for_model` and `fit_LogisticRegressionCV`, labelled as such.
Nothing here touches the network when lc_data is None and HF_HUB_OFFLINE is set.

alpaca_eval fixes its AlpacaEval version (IS_ALPACA_EVAL_2) when first imported, so it is imported
inside the functions, through glm.alpaca_eval_metrics: importing this module does not fix it, and
using it fixes the version the process pinned for its judges.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from pipeline.logs import get_logger
from pipeline.metrics.glm import (
    LC_MINIMAL,
    alpaca_eval_metrics,
    annotation_frame,
    fit_minimal_design,
    lc_bootstrap_se,
    minimal_glm_design,
    quiet_sklearn,
)

LOG = get_logger("winrate")

LC_V1 = "length_controlled_v1"
LC_LABELS = {LC_V1: "LC", LC_MINIMAL: "LC (minimal GLM)"}
HUB_REPO, GAMED_FILE = "tatsu-lab/alpaca_eval", "df_gamed.csv"
GAMED_COLUMNS = (
    "index",
    "preference",
    "std_delta_len",
    "instruction_difficulty",
    "not_gamed_baseline",
    "model",
)


LC_SE_RESAMPLES = 100  # bootstrap refits behind the minimal GLM's standard error


def winrate_metrics(annotations) -> dict:
    """alpaca_eval's get_winrate as plain floats: win_rate, standard_error, n_wins, n_wins_base,
    n_draws, n_total, discrete_win_rate."""
    get_winrate = alpaca_eval_metrics().get_winrate
    return {k: float(v) for k, v in get_winrate(annotations).items()}


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (HF_HUB_OFFLINE, read now, not at import)."""
    import huggingface_hub.constants as hf

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in {"1", "ON", "YES", "TRUE"} or bool(hf.HF_HUB_OFFLINE)


def find_lc_data(lc_data: str | None = None) -> str | None:
    """Path of alpaca_eval's df_gamed.csv: the file `lc_data` names, else the HF cache; with
    lc_data="hub" also the Hugging Face Hub. None: not available (the minimal GLM is used).

    The hub is asked only when asked for: offline, its retries cost ~25 s a judged comparison."""
    from huggingface_hub import try_to_load_from_cache

    alpaca_eval_metrics()  # alpaca_eval imported under the pinned version before its constants
    from alpaca_eval import constants

    if lc_data not in (None, "hub"):
        path = Path(lc_data)
        if not path.is_file():
            raise ValueError(
                f"judge.lc_data={lc_data!r}: no such file; give alpaca_eval's "
                f"{GAMED_FILE}, hub (download it) or null (minimal GLM)"
            )
        return str(path)
    cached = try_to_load_from_cache(
        HUB_REPO, GAMED_FILE, cache_dir=constants.DEFAULT_CACHE_DIR, repo_type="dataset"
    )
    if isinstance(cached, str):
        return cached
    if lc_data is None or hub_offline():  # checked before anything that could download
        return None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(
            HUB_REPO,
            GAMED_FILE,
            repo_type="dataset",
            cache_dir=constants.DEFAULT_CACHE_DIR,
            token=constants.DATASETS_TOKEN,
        )
    except Exception as err:  # unreachable hub, proxy, auth: fall back to the minimal GLM
        LOG.warning("%s unavailable (%s); minimal GLM", GAMED_FILE, type(err).__name__)
        return None


def _check_gamed(path: str, n_annotations: int) -> str | None:
    """Why `path` cannot serve length_controlled_v1 for these annotations, or None if it can."""
    import pandas as pd

    gamed = pd.read_csv(path)
    missing = [c for c in GAMED_COLUMNS if c not in gamed.columns]
    if missing:
        return f"{path} lacks columns {missing} of alpaca_eval's {GAMED_FILE}"
    n_instructions = gamed["index"].nunique()
    # alpaca_eval looks instruction difficulty up by row position: the annotations must be the
    # whole evaluation set, in its order.
    if n_annotations != n_instructions:
        return (
            f"length_controlled_v1 needs one annotation per instruction of the evaluation set "
            f"in its order ({n_instructions}), got {n_annotations}"
        )
    return None


def _lc_v1(df, path: str) -> tuple[float, float]:
    """alpaca_eval's get_length_controlled_winrate (LC, its SE), df_gamed.csv read from `path`."""
    from unittest import mock

    glm_winrate = alpaca_eval_metrics().glm_winrate

    def local_file(*args, **kwargs):
        filename = kwargs.get("filename", args[1] if len(args) > 1 else None)
        if filename != GAMED_FILE:
            raise RuntimeError(f"alpaca_eval asked for {filename!r}; only {GAMED_FILE} is local")
        return path

    if "generator_2" in df.columns and df["generator_2"].nunique() > 1:
        raise ValueError(
            "length_controlled_v1 scores one model at a time; annotations name "
            f"{df['generator_2'].nunique()} generators in generator_2"
        )
    frame = df.copy()
    for col, default in (("generator_1", "reference"), ("generator_2", "model")):
        if col not in frame.columns:
            frame[col] = default
    # alpaca_eval downloads df_gamed.csv inside the function; hand it the local file instead.
    with mock.patch.object(glm_winrate, "hf_hub_download", local_file), quiet_sklearn():
        got = glm_winrate.get_length_controlled_winrate(
            frame, glm_name=LC_V1, save_weights_dir=None
        )
    return got["length_controlled_winrate"], got["lc_standard_error"]


def length_controlled(annotations, lc_data: str | None = None) -> dict:
    """LC win rate of `annotations`: lc_win_rate, lc_standard_error, lc_method, lc_label.

    lc_method is length_controlled_v1 when df_gamed.csv is found (see find_lc_data) and fits the
    annotations, length_controlled_minimal otherwise. lc_standard_error is alpaca_eval's (sem of
    the per-instruction GLM predictions) for v1; for the minimal GLM, whose predictions are one
    constant (alpaca_eval's formula gives 0), the SD of 100 seeded bootstrap refits
    (lc_se_method says which). Deterministic (alpaca_eval's fit has random_state=123)."""
    df = annotation_frame(annotations)
    path = find_lc_data(lc_data)
    if path is not None:
        why_not = _check_gamed(path, len(df))
        if why_not and lc_data not in (None, "hub"):
            raise ValueError(why_not)
        if why_not:
            LOG.warning("%s; minimal GLM", why_not)
            path = None
    if path is not None:
        lc, se = _lc_v1(df, path)
        method, se, se_method = LC_V1, float(se), "alpaca_eval (sem of the GLM predictions)"
    else:
        (lc, se), method = _minimal_lc_and_se(df), LC_MINIMAL
        se_method = f"bootstrap ({LC_SE_RESAMPLES} refits over the pairs)"
    if not math.isfinite(lc):
        raise ValueError(f"{method} gave a non-finite LC win rate ({lc})")
    return {
        "lc_win_rate": float(lc),
        "lc_standard_error": se,
        "lc_method": method,
        "lc_label": LC_LABELS[method],
        "lc_se_method": se_method,
    }


def _same_generators(df) -> bool:
    gens = [
        df[c].unique().tolist() if c in df.columns else [] for c in ("generator_1", "generator_2")
    ]
    return len(gens[0]) == 1 and gens[0] == gens[1]


def _minimal_lc_and_se(df) -> tuple[float, float]:
    """The minimal GLM's LC and its bootstrap SE from one design and one cross-validation."""

    # alpaca_eval scores a model against itself 50 by construction, without a fit; so do we.
    if _same_generators(df):
        return 50.0, 0.0
    design = minimal_glm_design(
        df["preference"], df["output_1"].str.len(), df["output_2"].str.len()
    )
    lc, chosen = fit_minimal_design(*design)
    return lc, lc_bootstrap_se(*design, chosen, n_resamples=LC_SE_RESAMPLES)
