"""Importing alpaca_eval at the configured AlpacaEval version, wherever it is imported first.

alpaca_eval reads IS_ALPACA_EVAL_2 once, at its first import, for the whole process, and defaults
to 2 (the paper used 1). The version is pinned (IS_ALPACA_EVAL_2 set) by every judge's check,
which every job of a run passes before any stage or table (pipeline.judging.kinds: JudgeKind
wraps each kind's validate), and again by whoever imports alpaca_eval for a judge. Code whose
results do not depend on the version (win rates and GLM fits, pipeline.metrics.glm) imports it
under the pinned version, or the paper's where nothing pinned one; so in a sweep rerun whose
stages are all reused, the aggregation after point #0 imports the version point #1's judges need.
"""

from __future__ import annotations

import ast
import os
import sys

ENV = "IS_ALPACA_EVAL_2"


class JudgeError(ValueError):
    """A judge that cannot run (unknown kind, missing API key, wrong AlpacaEval version)."""


def _conflict(imported: int, version: int, want: str) -> JudgeError:
    return JudgeError(
        f"alpaca_eval is set to AlpacaEval {imported} in this process ({ENV}="
        f"{os.environ.get(ENV)!r}), but the judge needs version {version} "
        f"(judge.alpaca_eval_version); unset or set {ENV}={want} and rerun, and run judges of "
        "different versions in separate runs"
    )


def pin_alpaca_eval_version(version: int) -> None:
    """Fix the AlpacaEval version this process imports alpaca_eval as (it reads it once, at
    import, and defaults to 2; the paper used 1). Raises JudgeError when alpaca_eval was already
    imported as the other version, or IS_ALPACA_EVAL_2 already says the other one (the user's
    environment, or a judge of the other version earlier in this process)."""
    want = "True" if version == 2 else "False"
    os.environ.setdefault(ENV, want)
    constants = sys.modules.get("alpaca_eval.constants")
    if constants is not None:
        if constants.IS_ALPACA_EVAL_2 != (version == 2):
            raise _conflict(2 if constants.IS_ALPACA_EVAL_2 else 1, version, want)
        return
    try:  # as alpaca_eval will read it
        says_2 = bool(ast.literal_eval(os.environ[ENV]))
    except (ValueError, SyntaxError):
        raise JudgeError(
            f"{ENV}={os.environ[ENV]!r} is not True or False; unset it (judge.alpaca_eval_version "
            "selects the version)"
        ) from None
    if says_2 != (version == 2):
        raise _conflict(2 if says_2 else 1, version, want)


def import_alpaca_eval(version: int):
    """The alpaca_eval package, imported (first, or already) as AlpacaEval `version`."""
    pin_alpaca_eval_version(version)
    from alpaca_eval import constants

    if constants.IS_ALPACA_EVAL_2 != (version == 2):
        pin_alpaca_eval_version(version)  # raises, naming the environment that decided it
    import alpaca_eval

    return alpaca_eval
