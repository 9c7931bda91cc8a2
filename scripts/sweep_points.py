"""Print the points of a sweep or multirun experiment, one line of overrides per point.

Run: python scripts/sweep_points.py sweep=alpha_grid [more overrides]
Each printed line runs one point on its own: `python -m pipeline.run $(sed -n 3p points.txt)`.
slurm/sweep_array.sbatch runs line $SLURM_ARRAY_TASK_ID + 1 of this output.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Override lists, one per point: the given overrides, hydra.mode=RUN and the point's own
    values."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.cluster.points import expand_grids  # the run's sweeper expands the same way
    from pipeline.run import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    points = expand_grids(
        cfg.hydra.sweeper.params, OmegaConf.select(cfg, "hydra.sweeper.grids", default=None), []
    )
    return [[*overrides, "hydra.mode=RUN", *combo] for combo in points] or [
        [*overrides, "hydra.mode=RUN"]
    ]


if __name__ == "__main__":
    for point in sweep_points(sys.argv[1:]):
        print(" ".join(point))
