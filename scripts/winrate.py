"""Win rate of alpaca_eval annotations made anywhere (e.g. AlpacaEval's published annotations).

Run: python scripts/winrate.py ANNOTATIONS.json
ANNOTATIONS.json: a JSON list of records with a `preference` field (1 = output_1/reference wins,
2 = output_2/model wins, 1.5 = draw; floats for weighted judges). Prints one JSON object with the
keys of the alpaca_eval stage's metrics.json, computed by alpaca_eval's own get_winrate.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("IS_ALPACA_EVAL_2", "False")

from pipeline.stages.alpaca_eval_stage import winrate_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotations", type=Path, help="JSON list of alpaca_eval annotations with a 'preference' field")
    args = parser.parse_args()
    records = json.loads(args.annotations.read_text(encoding="utf-8"))
    if not isinstance(records, list) or not all(isinstance(r, dict) and "preference" in r for r in records):
        parser.error(f"{args.annotations}: expected a JSON list of records that each have a 'preference' field")
    metrics = winrate_metrics(records)
    outputs = [r["output_2"] for r in records if isinstance(r.get("output_2"), str)]
    if outputs:
        metrics["avg_length"] = sum(map(len, outputs)) / len(outputs)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
