"""Calibrate every judge config runnable here on the shipped GPT-4 verdicts; write
results/bench/judges.md (agreement, the length rule, position consistency, each with its CI).

Run: python scripts/bench_judges.py [--pairs 200] [--judges local local_tiny] [--store runs]
Each calibration is the pipeline's own judge_calibration stage (reused from the store when the
same judge and pairs were calibrated before).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _report(n_pairs: int, rows: list[str], informative: list[str]) -> str:
    """results/bench/judges.md: how the judges were measured, their rows, what passes."""
    text = "\n".join(
        [
            "# Judge calibration, measured here (2 CPU cores, no GPU)",
            "",
            f"`python scripts/bench_judges.py --pairs {n_pairs}`: each judge config runnable "
            "offline judges a seeded sample of the shipped GPT-4 AlpacaEval 1 verdicts "
            "(../shared/data/alpaca_eval_gpt4_annotations: 4 models x 805 instructions), half of "
            "the pairs with their outputs swapped so that chance is 50%, asked in both orders, "
            "through the pipeline's judge_calibration stage. Agreement per pair is alpaca_eval's "
            "Analyzer convention (1 - |judge - reference|: a tie against a decided verdict counts "
            "half). The length rule ('the longer answer wins') is scored on the same pairs. "
            "Brackets: 95% bootstrap CIs (2000 resamples).",
            "",
            "| judge | pairs | agreement with GPT-4 (%) | length rule (%) | same answer in both "
            "orders (%) | informative | time | stage key |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Informative = agreement above chance and above the length rule (CI lower bound). "
            + (
                f"Informative here: {', '.join(informative)}."
                if informative
                else "No judge runnable offline here passes: the default's win rates exercise the "
                "judging path and are reported as uninformative; use `judge=alpaca_eval_gpt4` "
                "(OPENAI_API_KEY) or `judge=openai_compatible` with a strong served model."
            ),
            "",
        ]
    )
    return text


def main() -> None:
    from hydra import compose, initialize_config_dir

    import pipeline.config.schema  # noqa: F401  (registers the schema)
    from pipeline.stages.judge_calibration import judge_calibration
    from pipeline.store.store import Store, write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="calibration pairs per judge")
    parser.add_argument("--judges", nargs="+", default=["local", "local_tiny"])
    parser.add_argument("--store", default="runs", help="the stage store")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "judges.md")
    args = parser.parse_args()
    rows, informative = [], []
    for name in args.judges:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[
                    f"judge={name}",
                    f"paths.store={args.store}",
                    f"calibration.n_pairs={args.pairs}",
                ],
            )
        started = time.time()
        store, cache = Store(Path(cfg.paths.store)), Store(Path(cfg.paths.cache))
        result = judge_calibration(cfg.judge, cfg.calibration, store, cache)
        took = "reused" if result.reused else f"{time.time() - started:.0f} s"
        m = result.metrics
        if m["verdicts"]["informative"]:
            informative.append(name)
        a, length, pc = m["accuracy"], m["length_baseline"], m["position_consistency"]
        rows.append(
            f"| `judge={name}` ({cfg.judge.name}) | {m['n']} | {a['mean']:.1f} "
            f"[{a['ci_low']:.1f}, {a['ci_high']:.1f}] | {length['mean']:.1f} "
            f"[{length['ci_low']:.1f}, {length['ci_high']:.1f}] | {pc['mean']:.1f} "
            f"[{pc['ci_low']:.1f}, {pc['ci_high']:.1f}] | "
            f"{'yes' if m['verdicts']['informative'] else 'no'} | {took} | "
            f"`{result.key}` |"
        )
        print(rows[-1], flush=True)
    text = _report(args.pairs, rows, informative)
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
