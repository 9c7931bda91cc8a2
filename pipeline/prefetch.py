"""Prefetch: download, on a machine with internet, everything an experiment's runs would download,
into the caches their compute jobs then read offline.

    python -m pipeline.prefetch experiment=paper_all              (any overrides the run takes)
    python -m pipeline.prefetch experiment=paper_all --dry-run    (list what it would fetch)
    python -m pipeline.prefetch experiment=paper_all --source /mirror   (copy from a local mirror)

Every point of a multirun is composed as Hydra would run it (pipeline/cluster/sweep_points.py)
and what it needs is read from its config (pipeline/cluster/downloads.py): hub models
(model.source=hub, a local judge's model), hf: datasets (data.train, generate.prompts,
overfit.heldout), the datasets of lm-eval's tasks (openllm.task_set=hub; groups such as mmlu
expanded), alpaca_eval's LC data (judge.lc_data=hub); local files the run reads
(generate.reference, calibration.pairs, ...) are checked. Each item is fetched once however many
points need it, into HF_HUB_CACHE and HF_DATASETS_CACHE as this environment sets them (printed
first); a complete item is not downloaded again. At the end: the variables to export for the
compute jobs, and a table (kind, id, where, size, status: fetched | already present | failed |
missing (optional)). Exits 1 when an item failed, naming it and why (e.g. a gated model: set
HF_TOKEN).

Run it where the jobs' caches are mounted, with the same HF_HOME (or HF_HUB_CACHE /
HF_DATASETS_CACHE) the jobs will have, and without HF_HUB_OFFLINE. `--source DIR` (or
$NEFTUNE_PREFETCH_SOURCE) reads models and datasets from DIR/models/<org>/<name>/... and
DIR/datasets/<org>/<name>/... instead of the network (pipeline/cluster/mirror.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.cluster.downloads import Item, config_items
from pipeline.cluster.fetchers import explain, fetcher_for
from pipeline.cluster.sweep_points import experiment_point_configs

SOURCE_ENV = "NEFTUNE_PREFETCH_SOURCE"
KIND_ORDER = ("model", "dataset", "hub_file", "calibration", "file", "config")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class Result:
    """What became of one item."""

    item: Item
    needed_by: list[str]
    where: Path | None = None
    size: int = 0
    status: str = ""
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "will fail")


def caches() -> dict[str, str]:
    """The cache locations in effect here (huggingface_hub's and datasets' own reading of the
    environment)."""
    import datasets
    from huggingface_hub import constants

    return {
        "HF_HOME": constants.HF_HOME,
        "HF_HUB_CACHE": constants.HF_HUB_CACHE,
        "HF_DATASETS_CACHE": str(datasets.config.HF_DATASETS_CACHE),
    }


def point_label(point: list[str], overrides: list[str], name: str | None = None) -> str:
    """A point named by its point_name (hydra.sweeper.grids give every paper point one), else
    by the overrides the sweep added to the user's."""
    added = [o for o in point if o not in overrides]
    return name or " ".join(added) or "(single run)"


def needed_items(overrides: list[str]) -> tuple[int, dict[Item, list[str]]]:
    """(number of points, every item of every point of the run with `overrides` -> the points
    that need it)."""
    needed: dict[Item, list[str]] = {}
    points = experiment_point_configs(overrides)
    for point, cfg in points:
        label = point_label(point, overrides, cfg.point_name)
        for item in config_items(cfg):
            users = needed.setdefault(item, [])
            if label not in users:
                users.append(label)
    return len(points), needed


def tree_bytes(path: Path | None) -> int:
    """Bytes of the regular files under `path` (links not followed: a blob counts once)."""
    if path is None or not os.path.lexists(path):
        return 0
    if not path.is_dir():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.lstat(full).st_size
    return total


def fetch_one(item: Item, users: list[str], source: Path | None, dry_run: bool) -> Result:
    """Fetch (or, dry, look up) `item`; never raises: a failure is a result with its reason."""
    result = Result(item, users)
    try:
        fetcher = fetcher_for(item.kind, source)
        result.where = fetcher.where(item)
        was_there, before = fetcher.present(item), tree_bytes(result.where)
        if dry_run and not fetcher.checks_only:
            result.status = "present" if was_there else "to fetch"
        elif dry_run:  # a check only: run it, so that the dry run names what will fail
            fetcher.fetch(item)
            result.status = "present"
        else:
            fetcher.fetch(item)
            unchanged = tree_bytes(result.where) == before
            result.status = "already present" if was_there and unchanged else "fetched"
    except Exception as err:  # reported in the table; the other items are still fetched
        result.status = (
            "missing (optional)" if item.optional else ("will fail" if dry_run else "failed")
        )
        result.reason = explain(err)
    result.size = tree_bytes(result.where)
    return result


def human(size: int) -> str:
    """Bytes as B/KB/MB/GB/TB."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def table(results: list[Result]) -> str:
    """Markdown table of the results."""
    lines = ["| kind | id | where | size | status | needed by |", "|---|---|---|---|---|---|"]
    for r in results:
        users = r.needed_by[0] if len(r.needed_by) == 1 else f"{len(r.needed_by)} points"
        lines.append(
            f"| {r.item.kind} | {r.item.label()} | {r.where or '-'} | {human(r.size)} "
            f"| {r.status} | {users} |"
        )
    return "\n".join(lines)


def exports(env: dict[str, str]) -> str:
    """The shell lines that point a compute job at these caches, offline."""
    lines = [f"export {key}={value}" for key, value in env.items()]
    return "\n".join(lines + [f"export {key}=1" for key in OFFLINE_VARS])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.prefetch",
        description="Download every model and dataset an experiment needs into the HF caches.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for pipeline.run")
    parser.add_argument("--dry-run", action="store_true", help="list the items; fetch nothing")
    # Accepted so that a pipeline.run command line can be reused as is: sweeps always expand.
    parser.add_argument("-m", "--multirun", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--source",
        type=Path,
        default=os.environ.get(SOURCE_ENV) or None,
        help=f"a local hub mirror to copy from instead of the network (default ${SOURCE_ENV})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command; 0 when every required item is in place (dry run: when it was listed)."""
    args = parse_args(argv)
    env = caches()
    print("[prefetch] caches: " + "  ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    offline = [v for v in OFFLINE_VARS if os.environ.get(v, "").upper() in {"1", "ON", "TRUE"}]
    if offline and args.source is None and not args.dry_run:
        print(
            f"[prefetch] warning: {', '.join(offline)} set: hub downloads will fail; unset "
            "them on this login node",
            flush=True,
        )
    n_points, needed = needed_items(list(args.overrides))
    print(
        f"[prefetch] {n_points} points, {len(needed)} distinct items"
        f"{' (dry run)' if args.dry_run else ''}; from {args.source or 'the network'}",
        flush=True,
    )
    ordered = sorted(needed, key=lambda i: (KIND_ORDER.index(i.kind), i.label()))
    results = []
    for item in ordered:
        result = fetch_one(item, needed[item], args.source, args.dry_run)
        print(f"[prefetch] {item.kind} {item.label()}: {result.status}", flush=True)
        results.append(result)
    print("\n" + table(results) + "\n")
    print("Compute jobs read these caches offline with:\n" + exports(env) + "\n")
    failed = [r for r in results if r.failed]
    verdict = "WILL FAIL" if args.dry_run else "FAILED"
    for r in failed:
        users = ", ".join(r.needed_by[:3]) + (" ..." if len(r.needed_by) > 3 else "")
        print(
            f"[prefetch] {verdict} {r.item.kind} {r.item.label()} (needed by {users}): "
            f"{r.reason or 'not available'}",
            file=sys.stderr,
        )
    return 1 if failed and not args.dry_run else 0


if __name__ == "__main__":
    sys.exit(main())
