"""Raw and length-controlled win rate of alpaca_eval annotations made anywhere (e.g. AlpacaEval's
published annotations).

Run: python scripts/winrate.py ANNOTATIONS.json [--lc-data df_gamed.csv]
ANNOTATIONS.json: a JSON list of records with a `preference` field (1 = output_1/reference wins,
2 = output_2/model wins, 1.5 = draw; floats for weighted judges). Prints one JSON object: the
alpaca_eval stage's metrics (alpaca_eval's get_winrate, avg_length of output_2) and the LC win rate
(lc_win_rate, lc_standard_error, lc_method, lc_label: length_controlled_v1 with --lc-data or a
cached/reachable df_gamed.csv, alpaca_eval's minimal GLM otherwise). Records without output_1 and
output_2 get the raw win rate only, with lc_win_rate null and the reason in lc_unavailable.
"""

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("IS_ALPACA_EVAL_2", "False")

from pipeline.metrics.winrate import length_controlled, winrate_metrics  # noqa: E402


@contextmanager
def c_output_to_stderr():
    """Keep stdout pure JSON: liblinear (under alpaca_eval's GLM) prints warnings from C."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "annotations",
        type=Path,
        help="JSON list of alpaca_eval annotations with a 'preference' field",
    )
    parser.add_argument(
        "--lc-data",
        default=None,
        help="local copy of alpaca_eval's df_gamed.csv (instruction difficulty) "
        "for length_controlled_v1",
    )
    args = parser.parse_args()
    records = json.loads(args.annotations.read_text(encoding="utf-8"))
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and "preference" in r for r in records
    ):
        parser.error(
            f"{args.annotations}: expected a JSON list of records that each have a "
            "'preference' field"
        )
    metrics = winrate_metrics(records)
    outputs = [r["output_2"] for r in records if isinstance(r.get("output_2"), str)]
    if outputs:
        metrics["avg_length"] = sum(map(len, outputs)) / len(outputs)
    try:
        with c_output_to_stderr():
            metrics.update(length_controlled(records, lc_data=args.lc_data))
    except ValueError as err:
        if args.lc_data:  # asked for explicitly: fail loudly
            parser.error(str(err))
        metrics.update(
            {
                "lc_win_rate": None,
                "lc_standard_error": None,
                "lc_method": None,
                "lc_label": None,
                "lc_unavailable": str(err),
            }
        )
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
