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

    from pipeline.cluster.sweep_points import experiment_point_configs
    for overrides, cfg in experiment_point_configs(["experiment=paper_all"]):
        print(cfg.point_name, cfg.model.id)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035  (OmegaConf reads typing's Dict)

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

import pipeline.config.schema  # noqa: F401  (registers the config schema with Hydra)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Hydra instantiates sweepers only from classes under hydra_plugins.* (see that package).
TARGET = "hydra_plugins.neftune_sweeps.PointGridSweeper"
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass
class GridSweeperConf:
    """hydra/sweeper=grid (conf/experiment/paper_*.yaml): hydra/sweeper=basic's options plus
    grids."""

    _target_: str = TARGET
    max_batch_size: Optional[int] = None  # points per launch; null = all in one (SLURM arrays)
    # typing's Dict (noqa UP006), as in pipeline/config/schema.py: OmegaConf's structured types.
    params: Optional[Dict[str, str]] = None  # noqa: UP006  axes of every grid (as basic's)
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


def product(overrides: list[Override]) -> list[list[str]]:
    """Hydra's basic sweep (hydra/sweeper=basic, its default) of `overrides`: one axis per key,
    a later override of a key replacing the earlier one's values in its place, and the cartesian
    product of the axes, the first axis slowest; a fixed value is written back as Hydra prints it
    (`false` -> `False`, which Hydra reads back as false). Written here from the public Override
    API because the basic sweeper's own (BasicSweeper.split_arguments) is in hydra._internal;
    tests/test_sweeps.py checks the two agree, so that an experiment without grids, run by the
    basic sweeper, gets the points prefetch and the SLURM launcher listed."""
    axes: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ValueError(
                f"{override.input_line}: an interval sweep has no points to list; sweep "
                f"{key} over values (a,b,c or range(start,stop,step))"
            )
    return [list(point) for point in itertools.product(*axes.values())]


def expand_grids(
    params: Optional[Mapping], grids: Optional[Mapping], overrides: Sequence[str]
) -> list[list[str]]:
    """One override list per point: for each grid in order, the cartesian product of `params`,
    the grid's axes and `overrides` (the same key later wins, as in Hydra's basic sweeper), each
    named by the grid's point_name template. Without grids: the basic sweeper's product of
    params and overrides. `[list(overrides)]` when nothing sweeps."""
    parser = OverridesParser.create()
    shared = [f"{key}={_text(value)}" for key, value in (params or {}).items()]
    points = []
    for name, grid in (grids or {"": {}}).items():
        axes = [f"{k}={_text(v)}" for k, v in grid.items() if k != "point_name"]
        lines = shared + axes + list(overrides)
        for point in product(parser.parse_overrides(lines)):
            points.append(_named(point, grid.get("point_name"), name))
    return [p for p in points if p] or [list(overrides)]


class GridSweeper(Sweeper):
    """hydra/sweeper=grid: expand_grids' points, launched in batches of max_batch_size through
    the configured launcher, on Hydra's public Sweeper interface (the loop is what the basic
    sweeper's sweep does: multirun.yaml, each batch composed before it is launched, a failed
    job stopping the sweep). hydra_plugins.neftune_sweeps names it."""

    def __init__(
        self,
        max_batch_size: Optional[int] = None,
        params: Optional[dict[str, str]] = None,
        grids: Optional[Mapping] = None,
    ) -> None:
        if max_batch_size is not None and max_batch_size != -1 and max_batch_size < 1:
            raise ValueError(
                f"hydra.sweeper.max_batch_size={max_batch_size}: give a number of points per "
                "launch (1 or more), or null for all points in one launch"
            )
        self.max_batch_size, self.params, self.grids = max_batch_size, params or {}, grids
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def batches(self, arguments: Sequence[str]) -> list[list[list[str]]]:
        """The points of a run with command line `arguments`, in launches of max_batch_size
        (null or -1: one launch, as a SLURM array wants them)."""
        points = expand_grids(self.params, self.grids, arguments)
        size = len(points) if self.max_batch_size in (None, -1) else self.max_batch_size
        return [points[i : i + size] for i in range(0, len(points), size)]

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None, "setup() first"
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, first = [], 0
        for batch in self.batches(arguments):
            self.validate_batch_is_legal(batch)  # a point that cannot compose fails here
            results = self.launcher.launch(batch, initial_job_idx=first)
            for result in results:
                _ = result.return_value  # raises the job's error when it failed
            first += len(batch)
            returns.append(results)
        return returns


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
