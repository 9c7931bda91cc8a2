"""Rebuild an experiment's tables, figures and REPORT.md from its points.

Run: python -m pipeline.report results/<experiment> [--paper-numbers pkg:paper_numbers.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.results.aggregate import write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="results/<experiment> (holds points/)")
    parser.add_argument(
        "--paper-numbers",
        default="pkg:paper_numbers.yaml",
        help="the paper's numbers (pkg:<asset> or a YAML path)",
    )
    args = parser.parse_args(argv)
    from pipeline.plan import check_experiment_name

    # The folder of one experiment, named by the rule its run was named by (results/<experiment.
    # name>): never `.` (what Path("") is) or `..`, whose tables would land among the studies or
    # outside them, nor a name no run may write (a leading dot, a newline).
    try:
        check_experiment_name(args.results_dir.name)
    except ValueError as err:
        parser.error(
            f"results_dir={str(args.results_dir)!r}: give the folder of one experiment, "
            f"results/<experiment.name>, e.g. results/my_study ({err})"
        )
    out = write_results(args.results_dir, args.paper_numbers)
    print(f"tables, figures and REPORT.md: {out.resolve()}")


if __name__ == "__main__":
    main()
