"""The points of an experiment, as Hydra would run them, composed without running anything.

An experiment file (conf/experiment/*.yaml) sets `hydra.mode: MULTIRUN` and either Hydra's
`hydra.sweeper.params` (one cartesian product, e.g. `+point: a,b,c`) or, with
`override /hydra/sweeper: grid`, `hydra.sweeper.grids`: named products whose union is the study
(paper Table 3 is llama2-7b/13b x alpaca/evol-instruct x alpha 5/10/15, plus llama1-30b on alpaca
only). A grid's `point_name` is a template over its axes' values as written (`{model}` is the
option name, `{noise.alpha}` the `5` of `noise.alpha: 5,10,15`), so each point gets a unique,
readable name without a file of its own. Command-line overrides may sweep too (`noise.alpha=5,10`).
`experiment_point_configs` expands all of it exactly as the run's sweeper does (the same
`expand_grids`) and composes one config per point, so that tools which must see every point
before a run (prefetch, a SLURM launcher) read the configs the run's jobs will get.

    from pipeline.cluster.points import experiment_point_configs
    for overrides, cfg in experiment_point_configs(["experiment=paper_all"]):
        print(cfg.point_name, cfg.model.id)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035  (OmegaConf reads typing's Dict)

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

import pipeline.config.schema  # noqa: F401  (registers the config schema with Hydra)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Hydra instantiates sweepers only from classes under hydra_plugins.* (see that package).
TARGET = "hydra_plugins.neftune_sweeps.PointGridSweeper"
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass
class GridSweeperConf:
    """hydra/sweeper=grid (conf/experiment/paper_*.yaml): BasicSweeper's options plus grids."""

    _target_: str = TARGET
    max_batch_size: Optional[int] = None  # points per launch; null = all in one (SLURM arrays)
    # typing's Dict (noqa UP006), as in pipeline/config/schema.py: OmegaConf's structured types.
    params: Optional[Dict[str, str]] = None  # noqa: UP006  axes of every grid (BasicSweeper's)
    grids: Optional[Dict[str, Any]] = None  # noqa: UP006  name -> {axis: "v1,v2", point_name:
    # template}; the points are the union of the grids' products, in order


def register() -> None:
    """hydra/sweeper=grid in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(
        group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="neftune-repro"
    )


def _text(value: Any) -> str:
    """A YAML value as an override's value: YAML's true/false/null, not Python's True/None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _named(point: list[str], template: Optional[str], grid: str) -> list[str]:
    """The point with `point_name=<template filled from its own values>` added (a point_name
    the point already has, e.g. from the command line, wins)."""
    values = {}
    for line in point:
        key, _, value = line.partition("=")
        values[key.lstrip("+~")] = value
    if template is None or "point_name" in values:
        return point

    def value(match: re.Match) -> str:
        if match.group(1) not in values:
            raise ValueError(
                f"hydra.sweeper.grids.{grid}.point_name={template!r}: no axis "
                f"{match.group(1)!r} in this grid; name one of {sorted(values)} in braces"
            )
        return values[match.group(1)]

    return [*point, f"point_name={PLACEHOLDER.sub(value, template)}"]


def expand_grids(
    params: Optional[Mapping], grids: Optional[Mapping], overrides: Sequence[str]
) -> list[list[str]]:
    """One override list per point: for each grid in order, the cartesian product of `params`,
    the grid's axes and `overrides` (the same key later wins, as in BasicSweeper), each named by
    the grid's point_name template. Without grids: BasicSweeper's product of params and
    overrides. `[list(overrides)]` when nothing sweeps."""
    parser = OverridesParser.create()
    shared = [f"{key}={_text(value)}" for key, value in (params or {}).items()]
    points = []
    for name, grid in (grids or {"": {}}).items():
        axes = [f"{k}={_text(v)}" for k, v in grid.items() if k != "point_name"]
        lines = shared + axes + list(overrides)
        for batch in BasicSweeper.split_arguments(parser.parse_overrides(lines), None):
            points += [_named(list(p), grid.get("point_name"), name) for p in batch]
    return [p for p in points if p] or [list(overrides)]


class GridSweeper(BasicSweeper):
    """BasicSweeper whose points are expand_grids' (hydra_plugins.neftune_sweeps names it)."""

    def __init__(
        self,
        max_batch_size: Optional[int] = None,
        params: Optional[dict[str, str]] = None,
        grids: Optional[Mapping] = None,
    ) -> None:
        # BasicSweeper.__init__ is not called: its super(BasicSweeper, self) fails once Hydra's
        # plugin scan has re-imported basic_sweeper (a new class, not this one's base).
        Sweeper.__init__(self)
        self.overrides, self.batch_index = None, 0
        self.max_batch_size, self.params, self.grids = max_batch_size, params or {}, grids
        self.hydra_context, self.config, self.launcher = None, None, None

    def split_arguments(  # type: ignore[override]  (BasicSweeper.sweep calls it on self)
        self, overrides: list[Override], max_batch_size: Optional[int]
    ) -> list[list[list[str]]]:
        """BasicSweeper.sweep parsed its params, then the command line: expand those with the
        grids instead of as one product."""
        arguments = [o.input_line for o in overrides[len(self.params) :]]
        points = expand_grids(self.params, self.grids, arguments)
        return list(BasicSweeper.split_overrides_to_chunks(points, max_batch_size))


def sweep_overrides(overrides: list[str], conf_dir: Path = CONF_DIR) -> list[list[str]]:
    """One override list per point: the sweeper params and grids of the composed config with
    the sweeps in `overrides`, expanded as the run's sweeper does; `[overrides]` for a single
    run (no sweep anywhere)."""
    from hydra import compose, initialize_config_dir

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    # A sweep value cannot be composed; the experiment's own params are read without it.
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        root = compose("config", overrides=plain, return_hydra_config=True)
    params = OmegaConf.select(root, "hydra.sweeper.params") or {}
    grids = OmegaConf.select(root, "hydra.sweeper.grids", default=None)
    return expand_grids(params, grids, overrides)


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


register()
