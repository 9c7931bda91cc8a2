"""Every kind's own settings, checked and typed right after composition.

judge.settings, noise.settings and generate.settings are open while Hydra composes (any key, on
the command line too, without `+`); this checks each against the dataclass its selected kind
declares (pipeline/registry.py), naming the kind and the key of an unknown key or a wrong type,
and types it in place, defaults filled in. plan.check_all calls it first, before anything reads a
setting; the stages' checks (and every reader, through the kind) type them too where it has not.
"""

from __future__ import annotations

from pipeline.generation.engines import engine_settings
from pipeline.judging.kinds import judge_settings
from pipeline.train.noise_kinds import noise_settings


def check_kind_settings(cfg) -> None:
    """Fail on the first kind whose settings are not its own; type every kind's in place."""
    noise_settings(cfg.noise)
    judge_settings(cfg.judge)
    engine_settings(cfg.generate)
