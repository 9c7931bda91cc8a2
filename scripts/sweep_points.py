"""Print the points of a sweep or multirun experiment, one line of overrides per point.

Run: python scripts/sweep_points.py sweep=alpha_grid [more overrides]
Each line is the point's overrides as shell words (quoted where needed: a value with a space
stays one override, `z*` is not expanded), so it runs one point on its own as
`eval python -m pipeline.run "$(sed -n 3p points.txt)"`.
slurm/sweep_array.sbatch runs line $SLURM_ARRAY_TASK_ID + 1 of this output the same way.
"""

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Override lists, one per point: the given overrides, hydra.mode=RUN and the point's own
    values."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.cluster.sweep_points import expand_grids  # the run's sweeper expands the same way
    from pipeline.run import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    points = expand_grids(
        cfg.hydra.sweeper.params, OmegaConf.select(cfg, "hydra.sweeper.grids", default=None), []
    )
    return [[*overrides, "hydra.mode=RUN", *combo] for combo in points] or [
        [*overrides, "hydra.mode=RUN"]
    ]


def point_line(point: list[str]) -> str:
    """One point's overrides as one line of shell words (shlex.quote: POSIX sh and bash)."""
    bad = [o for o in point if "\n" in o or "\r" in o]
    if bad:  # a point is one line: the sbatch script reads line i + 1
        raise SystemExit(f"override {bad[0]!r} spans lines; give it on one line")
    return shlex.join(point)


if __name__ == "__main__":
    for point in sweep_points(sys.argv[1:]):
        print(point_line(point))
