"""The config as the pipeline composes it (schema defaults + options), for tests that need a
stage's config without running the app."""

from pathlib import Path

from hydra import compose, initialize_config_dir

import pipeline.config.schema  # noqa: F401  (registers the config schema)
from pipeline.stages.kind_settings import check_kind_settings

CONF = Path(__file__).resolve().parents[2] / "conf"


# The tiny model stack (conf/stack/smoke.yaml: model, finetune, generate and judge all tiny) as one
# override; a test adds its own overrides after it.
SMOKE = ["+stack=smoke"]


def composed(*overrides: str):
    """The config `python -m pipeline.run *overrides` would run (without the hydra node), each
    kind's settings checked and typed as the first step after composition does."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    check_kind_settings(cfg)
    return cfg
