"""Hydra's door to pipeline.cluster.sweep_points' sweeper: Hydra instantiates a sweeper only from a
class defined under hydra_plugins.* (hydra.core.plugins.Plugins._instantiate), so the class that
hydra/sweeper=grid names lives here, and what it does lives in pipeline/cluster/sweep_points.py
(expand_grids). Found when the repository root is on sys.path, like
hydra_plugins.neftune_cluster."""

from pipeline.cluster.sweep_points import GridSweeper, register

register()


class PointGridSweeper(GridSweeper):
    """hydra/sweeper=grid: the union of hydra.sweeper.grids' products (conf/experiment/)."""
