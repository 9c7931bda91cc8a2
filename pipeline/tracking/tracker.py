"""W&B tracking: one run per stage execution (job_type = stage, group = experiment,
name = stage key), its config the identity of what it measured (identity.py: experiment, point,
model, data, judge, arm, noise, seed, variant, step, stage_key, the same keys in every run) and
the stage's own config under `params`, its metrics.json as summary, outputs.json as an artifact,
and the Trainer's curves (the Trainer's W&B callback logs into the run that is open while
finetune computes, beside the clean loss of pipeline.train.training). The aggregation's run
(`tables`) holds every table and figure of results/<experiment>/, the findings and the answers
side by side. Offline by default (logger=offline): runs are written under logger.dir and
uploaded by `wandb sync`; W&B prints nothing on the console (closing_lines says where they are).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.tracking.identity import current, identified


class TableRows(Protocol):
    """A table to log: its column names and rows (pipeline.results.wandb_rows builds them)."""

    columns: list[str]
    rows: list[list]


@dataclass(frozen=True)
class Tracker:
    mode: str  # disabled | offline | online
    project: str
    group: str
    dir: str

    @classmethod
    def from_config(cls, logger_cfg, group: str) -> Tracker:
        if logger_cfg.mode not in ("disabled", "offline", "online"):
            raise ValueError(f"logger.mode={logger_cfg.mode!r}: use disabled, offline or online")
        if logger_cfg.mode == "online" and not os.environ.get("WANDB_API_KEY"):
            raise ValueError(
                "logger.mode=online needs WANDB_API_KEY (or use logger=offline and `wandb sync` "
                "later)"
            )
        return cls(logger_cfg.mode, logger_cfg.project, group, str(Path(logger_cfg.dir).resolve()))

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    @staticmethod
    def identity(**given):
        """Context manager: every run opened within it records `given` (identity.Identity's
        fields) in its config; nested declarations merge, the inner one winning."""
        return identified(**given)

    @contextmanager
    def stage_run(self, key: str, config: dict | None):
        """An open W&B run for the stage `key` while it computes (None when disabled)."""
        if not self.enabled:
            yield None
            return
        import wandb

        Path(self.dir).mkdir(parents=True, exist_ok=True)
        # W&B suggests its Weave tracer on the console whenever an LLM client library is
        # imported (the API judges import openai); the pipeline traces no LLM calls with it.
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        run = wandb.init(
            mode=self.mode,
            project=self.project,
            group=self.group,
            job_type=key.split("-", 1)[0],
            name=key,
            config={**current().config(key), "params": config or {}},
            dir=self.dir,
            reinit="finish_previous",
            # No banner, no sync hint per run (closing_lines gives one for the whole run);
            # the run's output.log is still written.
            settings=wandb.Settings(silent=True),
        )
        try:
            yield run
        finally:
            run.finish()

    @staticmethod
    def record(run, metrics: dict, stage_dir: Path) -> None:
        """Metrics as the run's summary; outputs.json (if the stage wrote one) as an artifact."""
        if run is None:
            return
        import wandb

        run.summary.update(metrics)
        outputs = Path(stage_dir) / "outputs.json"
        if outputs.is_file():
            artifact = wandb.Artifact(name=f"outputs-{run.name}"[:128], type="generations")
            artifact.add_file(str(outputs))
            run.log_artifact(artifact)

    def log_tables(self, out_dir: Path, extra: Mapping[str, TableRows] | None = None) -> None:
        """The experiment's tables (results/<experiment>/*.csv) as wandb.Table, each under its
        own name, its figures as images (figure/<name>), and `extra` tables (the findings, the
        answers side by side: pipeline.results.wandb_rows) in a `tables` run."""
        if not self.enabled:
            return
        import csv

        import wandb

        with identified(experiment=self.group, step="tables"):
            config = {"results_dir": str(out_dir)}
            with self.stage_run(f"tables-{self.group}", config) as run:
                for path in _results(out_dir, "*.csv"):
                    rows = list(csv.reader(path.open(encoding="utf-8")))
                    run.log({path.stem: wandb.Table(columns=rows[0], data=rows[1:])})
                for path in _results(out_dir, "*.png"):
                    run.log({f"figure/{path.stem}": wandb.Image(str(path))})
                for name, table in (extra or {}).items():
                    run.log({name: wandb.Table(columns=list(table.columns), data=table.rows)})

    def closing_lines(self) -> list[str]:
        """What the end of a run says about W&B: where the runs are and how to upload them."""
        if self.mode == "offline":
            runs = Path(self.dir) / "wandb"
            return [f"W&B: offline runs in {runs}; upload: wandb sync {runs}/offline-run-*"]
        if self.mode == "online":
            return [f"W&B: runs in project {self.project}, group {self.group}"]
        return []


def _results(out_dir: Path, pattern: str) -> list[Path]:
    # Hidden names are writers' temp files (another run's, or one a kill left), not results.
    return sorted(
        p for p in Path(out_dir).glob(pattern) if not p.name.startswith(".") and p.is_file()
    )
