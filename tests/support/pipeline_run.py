"""Run `python -m pipeline.run` in a fresh interpreter on a store of its own, and list the
finished stage directories it left: the helpers of the end-to-end pipeline tests."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_pipeline(store: Path, *overrides: str, prelude: str = "") -> subprocess.CompletedProcess:
    """Run the pipeline in a fresh interpreter (prelude: Python run before it, e.g. a kill
    switch)."""
    argv = [*overrides, f"paths.store={store}", f"paths.results={store}/results"]
    code = (
        f"{prelude}\nimport sys\nfrom pipeline.run import main\n"
        f"sys.argv = ['pipeline.run', *{argv!r}]\nmain()\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def stage_dirs(store: Path, stage: str) -> list[Path]:
    """The finished (not .partial) directories of `stage` in store, sorted by name."""
    return sorted(
        p for p in store.glob(f"{stage}-*") if p.is_dir() and not p.name.endswith(".partial")
    )
