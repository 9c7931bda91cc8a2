"""The points of an experiment, as Hydra would run them, composed without running anything.

An experiment file (conf/experiment/*.yaml) may set `hydra.mode: MULTIRUN` and
`hydra.sweeper.params` (e.g. `+point: a,b,c`); command-line overrides may sweep too
(`noise.alpha=5,10`). `experiment_point_configs` expands both the way Hydra's basic sweeper does
(the cartesian product of the sweeps, in its order) and composes one config per point, so that
tools which must see every point before a run (prefetch, a SLURM launcher) read exactly the
configs the run's jobs will get.

    from pipeline.cluster.points import experiment_point_configs
    for overrides, cfg in experiment_point_configs(["experiment=paper_all"]):
        print(overrides[-1], cfg.model.id)
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import pipeline.config.schema  # noqa: F401  (registers the config schema with Hydra)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def sweep_overrides(overrides: list[str], conf_dir: Path = CONF_DIR) -> list[list[str]]:
    """One override list per point: the sweeper params of the composed config plus the sweeps in
    `overrides`, expanded by Hydra's own parser and BasicSweeper; `[overrides]` for a single run
    (no sweep anywhere)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    # A sweep value cannot be composed; the experiment's own params are read without it.
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        root = compose("config", overrides=plain, return_hydra_config=True)
    params = OmegaConf.select(root, "hydra.sweeper.params") or {}
    # Sweeper params first, the command line after: BasicSweeper.sweep's order.
    lines = [f"{key}={value}" for key, value in params.items()] + list(overrides)
    batches = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
    return [list(point) for batch in batches for point in batch] or [list(overrides)]


def experiment_point_configs(
    overrides: list[str], conf_dir: Path = CONF_DIR
) -> list[tuple[list[str], DictConfig]]:
    """(overrides, composed config) of every point the run with `overrides` would execute.

    The configs are composed without the `hydra` node (as a job sees its config); nothing is
    resolved, so a point whose config has a missing value (`???`) still composes."""
    from hydra import compose, initialize_config_dir

    points = sweep_overrides(overrides, conf_dir)
    out = []
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        for point in points:
            out.append((point, compose("config", overrides=point)))
    return out
