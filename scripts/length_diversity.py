"""Length and diversity (paper Table 4) of an AlpacaEval-format outputs.json made anywhere.

Run: python scripts/length_diversity.py OUTPUTS.json [--cutoff K]
Prints one JSON object with the keys of the analysis stage's metrics.json.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.stages.analysis import length_diversity, read_outputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", type=Path, help="AlpacaEval-format JSON list with an 'output' field per record")
    parser.add_argument("--cutoff", type=int, default=50, help="K: whitespace tokens for repetition/diversity (paper: 50/100/150/150)")
    args = parser.parse_args()
    if args.cutoff < 1:
        parser.error("--cutoff must be a positive number of whitespace tokens")
    print(json.dumps(length_diversity(read_outputs(args.outputs), args.cutoff), indent=1))


if __name__ == "__main__":
    main()
