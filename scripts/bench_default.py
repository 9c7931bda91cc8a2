"""Benchmark the embedded default: a cold run (empty stage store) and a warm rerun, against the
targets (cold < 15 min, warm < 30 s on a 2-core CPU). Writes results/bench/<name>.json.

Run: python scripts/bench_default.py [--store /tmp/neftune-bench] [extra pipeline overrides...]
     python scripts/bench_default.py --name default_all --cold-target-min 40 experiment=default_all
The run also rewrites results/<experiment>/ (its tables), as `python -m pipeline.run` does.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM_TARGET_S = 30


def timed_run(store: Path, overrides: list[str]) -> tuple[float, str]:
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", f"paths.store={store}", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    elapsed = time.time() - started
    if proc.returncode != 0:
        sys.exit(f"pipeline failed after {elapsed:.0f} s:\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def stage_runtimes(store: Path) -> dict:
    """Seconds each stage took, from the stages' own metrics (measured while computing)."""
    out = {}
    for metrics_path in sorted(store.glob("*/metrics.json")):
        m = json.loads(metrics_path.read_text())
        seconds = m.get("train_runtime_s") or m.get("gen_runtime_s")
        if seconds is not None:
            out[metrics_path.parent.name] = seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", type=Path, default=Path("/tmp/neftune-bench"), help="stage store to (re)create"
    )
    parser.add_argument(
        "--name", default="default", help="benchmark name: results/bench/<name>.json"
    )
    parser.add_argument(
        "--cold-target-min", type=float, default=15, help="target for the cold run (minutes)"
    )
    args, overrides = parser.parse_known_args()
    shutil.rmtree(args.store, ignore_errors=True)
    cold, cold_out = timed_run(args.store, overrides)
    warm, warm_out = timed_run(args.store, overrides)
    result = {
        "cold_s": round(cold, 1),
        "warm_s": round(warm, 1),
        "cold_target_s": args.cold_target_min * 60,
        "warm_target_s": WARM_TARGET_S,
        "cold_within_target": cold < args.cold_target_min * 60,
        "warm_within_target": warm < WARM_TARGET_S,
        "warm_reused_every_stage": ": computed ->" not in warm_out,
        "stage_runtimes_s": stage_runtimes(args.store),
        "overrides": overrides,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": [
            line for line in cold_out.splitlines() if line.startswith(("base", "neft", "+NEFT"))
        ],
    }
    out = ROOT / "results" / "bench" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
