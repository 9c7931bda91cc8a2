"""Length and diversity (paper Table 4) of an AlpacaEval-format outputs.json made anywhere.

Run: python scripts/length_diversity.py OUTPUTS.json [--cutoff K] [--definition paper|corrected]
     [--per-output]
Prints one JSON object with the keys of the analysis stage's metrics.json; the per-output lists
only with --per-output. --definition paper (default) is the arithmetic behind the paper's numbers,
corrected the clean one (see pipeline/metrics/diversity.py).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.metrics.diversity import DEFINITIONS, length_diversity  # noqa: E402
from pipeline.stages.analysis import read_outputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "outputs", type=Path, help="AlpacaEval-format JSON list with an 'output' field per record"
    )
    parser.add_argument(
        "--cutoff",
        type=int,
        default=50,
        help="K: whitespace tokens for repetition/diversity (paper: 50/100/150/150)",
    )
    parser.add_argument(
        "--definition",
        choices=DEFINITIONS,
        default="paper",
        help="paper: the reference code's arithmetic (default); corrected: clean",
    )
    parser.add_argument(
        "--per-output",
        action="store_true",
        help="also print the per-output lists (for paired bootstraps)",
    )
    args = parser.parse_args()
    if args.cutoff < 1:
        parser.error("--cutoff must be a positive number of whitespace tokens")
    got = length_diversity(read_outputs(args.outputs), args.cutoff, args.definition)
    if not args.per_output:
        got.pop("per_output")
    print(json.dumps(got, indent=1))


if __name__ == "__main__":
    main()
