"""Importing alpaca_eval at the configured AlpacaEval version, wherever it is imported first.

alpaca_eval reads IS_ALPACA_EVAL_2 once, at import, and defaults to 2 (the paper used 1); every
stage that imports it (judges, and compare through pipeline.metrics.winrate) pins the version first.
"""

from __future__ import annotations

import os
import sys


class JudgeError(ValueError):
    """A judge that cannot run (unknown kind, missing API key, wrong AlpacaEval version)."""


def pin_alpaca_eval_version(version: int) -> None:
    """Fix the AlpacaEval version this process imports alpaca_eval as (it reads it once, at
    import, and defaults to 2; the paper used 1). Call before anything imports alpaca_eval:
    every stage that does (judges, and compare through core.winrate) calls it first, so the
    first import is the configured version whichever stage runs first."""
    want = "True" if version == 2 else "False"
    os.environ.setdefault("IS_ALPACA_EVAL_2", want)
    constants = sys.modules.get("alpaca_eval.constants")
    if constants is not None and constants.IS_ALPACA_EVAL_2 != (version == 2):
        raise JudgeError(
            f"alpaca_eval was imported as AlpacaEval {2 if constants.IS_ALPACA_EVAL_2 else 1} in "
            f"this process (IS_ALPACA_EVAL_2={os.environ.get('IS_ALPACA_EVAL_2')!r}), but the "
            f"judge needs version {version} (judge.alpaca_eval_version); unset or set "
            f"IS_ALPACA_EVAL_2={want} and rerun, and run judges of different versions in "
            "separate runs"
        )


def import_alpaca_eval(version: int):
    pin_alpaca_eval_version(version)
    from alpaca_eval import constants

    if constants.IS_ALPACA_EVAL_2 != (version == 2):
        pin_alpaca_eval_version(version)  # raises, naming the environment that decided it
    import alpaca_eval

    return alpaca_eval
