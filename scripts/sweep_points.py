"""Print the points of a sweep or multirun experiment, one line of overrides per point.

Run: python scripts/sweep_points.py sweep=alpha_grid [more overrides]
Each printed line runs one point on its own: `python -m pipeline.run $(sed -n 3p points.txt)`.
slurm/sweep_array.sbatch runs line $SLURM_ARRAY_TASK_ID + 1 of this output.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Override lists, one per point: the given overrides, hydra.mode=RUN and the point's own values."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pipeline.run import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    points = [combo for batch in BasicSweeper.split_arguments(parsed, None) for combo in batch]
    return [[*overrides, "hydra.mode=RUN", *combo] for combo in points] or [[*overrides, "hydra.mode=RUN"]]


if __name__ == "__main__":
    for point in sweep_points(sys.argv[1:]):
        print(" ".join(point))
