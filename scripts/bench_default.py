"""Benchmark the embedded default, cold (empty stage store) and warm (every stage reused), on
this machine: the working tree alone, or against a baseline revision in the same run.

With `--baseline REV`, the baseline (a `git worktree` of REV, run with the same interpreter and
packages) and the working tree each run cold and then warm, one after the other, on stores of
their own; the result gives both, per stage (each stage's own wall time from its COMPLETE
record, grouped by stage name), the ratios baseline / this, and the processor's model and flags
(native bf16 or not decides the default's precision). Ratios in one run on one machine are what
a claim may rest on: the processor changes between this project's machines. Writes
results/bench/<name>.json; the runs also rewrite their results/<experiment>/ tables (the
working tree's under --results, the baseline's inside its worktree).

Run: python scripts/bench_default.py                           (this tree: cold and warm)
     python scripts/bench_default.py --baseline f9130ed        (that commit, then this tree)
     python scripts/bench_default.py --name default_all --cold-target-min 40 experiment=default_all
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM_TARGET_S = 30
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu() -> dict:
    """The processor: its model name, whether it runs bf16 natively, a few telling flags."""
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    model = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln), "?"
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return {
        "model": model,
        "cores": os.cpu_count(),
        "native_bf16": any(f in flags for f in BF16_FLAGS),
        "flags": shown,
    }


def timed_run(tree: Path, store: Path, results: Path, overrides: list[str]) -> tuple[float, str]:
    """`python -m pipeline.run` from `tree` (its own `pipeline` package first on the path)."""
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.run", f"paths.store={store}",
         f"paths.results={results}", *overrides],
        cwd=tree,
        env=dict(os.environ, PYTHONPATH=str(tree)),
        capture_output=True,
        text=True,
    )  # fmt: skip
    elapsed = time.time() - started
    if proc.returncode != 0:
        sys.exit(f"{tree}: pipeline failed after {elapsed:.0f} s:\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout + proc.stderr


def stage_walls(store: Path) -> dict:
    """Seconds per stage name (finetune, generate, ...): the sum of its stages' own wall times
    (COMPLETE records), and each stage's key with its time."""
    by_name, each = defaultdict(float), {}
    for marker in sorted(store.glob("*/COMPLETE")):
        record = json.loads(marker.read_text(encoding="utf-8"))
        wall = float(record.get("wall_s") or 0.0)
        each[marker.parent.name] = wall
        by_name[marker.parent.name.split("-", 1)[0]] += wall
    return {"by_stage": {k: round(v, 1) for k, v in sorted(by_name.items())}, "each": each}


def bench(tree: Path, work: Path, overrides: list[str]) -> dict:
    """Cold then warm on a fresh store under `work`."""
    store, results = work / "store", work / "results"
    shutil.rmtree(work, ignore_errors=True)
    cold, cold_out = timed_run(tree, store, results, overrides)
    warm, warm_out = timed_run(tree, store, results, overrides)
    return {
        "tree": str(tree),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True
        ).stdout.strip(),
        "cold_s": round(cold, 1),
        "warm_s": round(warm, 1),
        "warm_reused_every_stage": "computed" not in warm_out.replace("not computed", ""),
        "stages_s": stage_walls(store),
        "summary": [
            ln for ln in cold_out.splitlines() if ln.startswith(("base ", "neft", "+NEFT"))
        ],
    }


def worktree(rev: str) -> Path:
    path = Path(f"/tmp/neftune-bench-baseline-{rev}")
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/neftune-bench"), help="scratch")
    parser.add_argument("--baseline", help="a git revision to run first, in the same run")
    parser.add_argument("--name", default="default", help="results/bench/<name>.json")
    parser.add_argument("--cold-target-min", type=float, default=15, help="cold target, minutes")
    args, overrides = parser.parse_known_args()
    runs = {}
    if args.baseline:
        runs["baseline"] = bench(worktree(args.baseline), args.work / "baseline", overrides)
    runs["this"] = bench(ROOT, args.work / "this", overrides)
    result = {
        "cpu": cpu(),
        "python": platform.python_version(),
        "overrides": overrides,
        "cold_target_s": args.cold_target_min * 60,
        "warm_target_s": WARM_TARGET_S,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **runs,
    }
    if "baseline" in runs:
        base, this = runs["baseline"], runs["this"]
        result["speedup"] = {
            "cold": round(base["cold_s"] / this["cold_s"], 2),
            **{
                stage: round(s / this["stages_s"]["by_stage"][stage], 2)
                for stage, s in base["stages_s"]["by_stage"].items()
                if this["stages_s"]["by_stage"].get(stage)
            },
        }
    out = ROOT / "results" / "bench" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k not in ("baseline", "this")}, indent=1))
    for name, run in runs.items():
        print(
            name,
            run["commit"],
            "cold",
            run["cold_s"],
            "warm",
            run["warm_s"],
            run["stages_s"]["by_stage"],
        )


if __name__ == "__main__":
    main()
