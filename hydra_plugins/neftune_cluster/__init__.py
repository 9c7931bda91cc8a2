"""Hydra's door to pipeline.cluster: Hydra instantiates a launcher only from a class defined
under hydra_plugins.* (hydra.core.plugins.Plugins._instantiate), so the class that
conf/launcher/slurm.yaml names lives here, and everything it does lives in
pipeline/cluster/launcher.py. Found when the repository root is on sys.path (python -m
pipeline.run from it, and the submitit jobs, which start in the same directory)."""

from pipeline.cluster.launcher import PointSizedSlurmLauncher, register

register()


class PointSlurmLauncher(PointSizedSlurmLauncher):
    """launcher=slurm: per-point SLURM arrays (pipeline.cluster.launcher)."""
