"""The tiny end-to-end run every e2e test starts from: `python -m pipeline.run` on the shrunken
config (SMOKE, conf/stack/smoke.yaml: the random tiny Llama, its seconds-long finetune, a few
short generations, the offline tiny judge) in a fresh interpreter, on a store of its own.

One place builds the command line, the environment and the paths (as lightning-hydra-template's
shrunken `cfg_train` fixture does): a test says only what its run changes. `TinyRun(store)`, or
the `tiny_run` fixture of tests/conftest.py (a store under the test's tmp_path), runs it (`run`),
starts it (`start`, for runs side by side or killed from outside), composes the config it gets
(`config`) and lists the stage instances its plan runs (`planned_stages`), so that a count a
test expects comes from pipeline/plan.py, not from a number written into the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from tests.support.composed import SMOKE, composed

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TinyRun:
    """`python -m pipeline.run` on the tiny stack, its stages in `store`, its tables in `results`
    (default `<store>/results`), started from `root` (the repository, or a copy of it)."""

    store: Path
    results: Path | None = None
    root: Path = ROOT
    base: tuple[str, ...] = tuple(SMOKE)  # the shrunken config; () for a test that gives its own

    def argv(self, *overrides: str) -> list[str]:
        """The run's overrides: the tiny stack, the test's own, then where it writes."""
        results = self.results or self.store / "results"
        return [*self.base, *overrides, f"paths.store={self.store}", f"paths.results={results}"]

    def results_dir(self, experiment: str = "default") -> Path:
        return (self.results or self.store / "results") / experiment

    def code(self, *overrides: str, prelude: str = "") -> str:
        """The program the run's interpreter executes (prelude: Python run first, e.g. a kill
        switch patched into a library)."""
        return (
            f"{prelude}\nimport sys\nfrom pipeline.run import main\n"
            f"sys.argv = ['pipeline.run', *{self.argv(*overrides)!r}]\nmain()\n"
        )

    def env(self, extra: dict | None = None) -> dict:
        return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(extra or {}))

    def start(
        self, *overrides: str, prelude: str = "", env: dict | None = None, **popen
    ) -> subprocess.Popen:
        """The run started, not waited for (stdout and stderr piped unless `popen` says)."""
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(
            [sys.executable, "-c", self.code(*overrides, prelude=prelude)],
            cwd=self.root,
            env=self.env(env),
            text=True,
            **popen,
        )

    def run(
        self, *overrides: str, prelude: str = "", env: dict | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """The run, waited for: its exit code, stdout and stderr."""
        return subprocess.run(
            [sys.executable, "-c", self.code(*overrides, prelude=prelude)],
            cwd=self.root,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def config(self, *overrides: str):
        """The config this run gets (composed here, without running anything)."""
        return composed(*self.argv(*overrides))

    def planned_stages(self, *overrides: str) -> list[str]:
        return planned_stages(self.config(*overrides))

    def stage_dirs(self, stage: str) -> list[Path]:
        return stage_dirs(self.store, stage)


def tiny_config(*overrides: str):
    """The shrunken config with `overrides`, composed in this process: what a check sees of a
    tiny run that is never started (no store, no paths of its own)."""
    return composed(*SMOKE, *overrides)


def planned_stages(cfg) -> list[str]:
    """The stage name of every stage instance pipeline/plan.py's walker runs for `cfg`, in order:
    the real plan (its STEPS, scopes, `enabled` rules and units) walked with each step's module
    replaced by a recorder that computes nothing."""
    from pipeline import plan
    from pipeline.stages.contract import Context
    from pipeline.store.store import StageResult

    ran: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        # What the walker reads between steps: the baseline's answers, the head-to-head's
        # reference (an empty list is enough to build it).
        (Path(tmp) / "outputs.json").write_text(json.dumps([]))

        @dataclass(frozen=True)
        class Recorder:
            stage: str

            def check(self, cfg) -> None:
                pass

            def run(self, cfg, ctx, call) -> StageResult:
                ran.append(self.stage)
                key = f"{self.stage}-{len(ran)}"
                return StageResult(key=key, path=Path(tmp), metrics={}, reused=False)

        steps = tuple(dataclasses.replace(s, module=Recorder(s.stage)) for s in plan.STEPS)
        with mock.patch.object(plan, "STEPS", steps):
            plan.run_plan(cfg, Context(store=None, cache=None))
    return ran


def run_pipeline(store: Path, *overrides: str, prelude: str = "") -> subprocess.CompletedProcess:
    """TinyRun(store) with the caller's overrides only (they name the stack themselves)."""
    return TinyRun(store, base=()).run(*overrides, prelude=prelude)


def stage_dirs(store: Path, stage: str) -> list[Path]:
    """The finished (not .partial) directories of `stage` in store, sorted by name."""
    return sorted(
        p for p in store.glob(f"{stage}-*") if p.is_dir() and not p.name.endswith(".partial")
    )
