"""Entry point: `python -m pipeline.run [group=option ...] [key=value ...]`.

Runs one experiment point through the stage store (paths.store) as declared in pipeline/plan.py:
for the noise-off baseline and the configured noise (per seed) finetune -> generate -> alpaca_eval
-> analysis (+ openllm, overfit), the Table-5 variants and the head-to-head; writes the point to
results/<experiment>/points/ and rebuilds that experiment's tables and REPORT.md. Every stage
already computed with the same config and inputs is reused, not recomputed.

  python -m pipeline.run                 the embedded default (SmolLM2-135M, base vs NEFT alpha 5)
  python -m pipeline.run --help          config groups
  python -m pipeline.run --cfg job       the composed config
  python -m pipeline.run model=tiny finetune=tiny generate=tiny judge=local_tiny \
      experiment.name=smoke        a seconds-long smoke run (results/smoke/, not the default's)
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import pipeline.config.schema  # noqa: F401  (registers the config schema with Hydra)
from pipeline.store.store import Store, stage_key, write_json_atomic
from pipeline.tracking.tracker import Tracker

# Absolute, so the app finds its configs however it is started (python -m, python -c, submitit).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _setting(cfg: DictConfig, done) -> dict:
    """What the tables say of how a point was trained and evaluated (`done`: its PlanResult)."""
    from pipeline.train.launch import world_size

    arms = done.arms
    base_ft = arms[0].stages["finetune"].metrics
    ft = cfg.finetune
    method = "full finetune"
    if base_ft["lora"]:
        method = "LoRA (4-bit base)" if base_ft["lora_4bit"] else "LoRA (plain base, no 4-bit)"
    setting = {
        "method": method,
        "lora": base_ft["lora"],
        "lora_4bit": base_ft["lora_4bit"],
        "epochs": ft.epochs,
        "learning_rate": ft.learning_rate,
        "effective_batch": ft.effective_batch_size,
        "world_size": world_size(ft.distributed),
        "n_train": done.point_stages["train_analysis"].metrics["n_total"],
        "n_eval": arms[0].stages["generate"].metrics["gen_n_outputs"],
        "cutoff": cfg.data.diversity_cutoff,
        "seeds": sorted({a.seed for a in arms}),
        "openllm": {
            "name": cfg.openllm.name,
            "task_set": cfg.openllm.task_set,
            "limit": cfg.openllm.limit,
            "shots": {k: t.num_fewshot for k, t in cfg.openllm.tasks.items()},
        },
    }
    return setting


def run_point(cfg: DictConfig, tracker: Tracker):
    """Check every stage, then run the plan of one point; returns the typed Point."""
    from pipeline.judging.judges import load_reference
    from pipeline.plan import arm_specs, check_all, run_plan
    from pipeline.results.points import Point
    from pipeline.stages.contract import Context

    # cheap checks first (experiment.name the very first: check_writable makes its directory):
    # a typo or a missing key must not cost a training run
    check_all(cfg)
    from pipeline.results.aggregate import check_writable

    check_writable(Path(cfg.paths.results) / cfg.experiment.name)  # before work, not after it
    paths = cfg.paths
    store = Store(
        Path(paths.store),
        paths.lock_stale_after_s,
        paths.lock_heartbeat_s,
        tracker,
        verify=paths.verify,
    )
    cache = Store(
        Path(paths.cache), paths.lock_stale_after_s, paths.lock_heartbeat_s, verify=paths.verify
    )
    report_to = ["wandb"] if tracker.enabled else []  # the Trainer logs into the stage's run
    treated = next((s.name for s in arm_specs(cfg) if not s.baseline), "base")
    # Named by what the point is, not by its stage keys: a rerun with other settings replaces it.
    readable = f"{cfg.point_name or f'{cfg.model.name}_{cfg.data.name}'}_{treated}"
    point_id = stage_key(
        "point", readable, {"judge": cfg.judge.name, "openllm": cfg.openllm.name}, [], 1
    )
    # What every W&B run of this point measured (the walker adds each arm's identity).
    with tracker.identity(
        experiment=cfg.experiment.name,
        point=point_id,
        model=cfg.model.name,
        data=cfg.data.name,
        judge=cfg.judge.name,
    ):
        done = run_plan(cfg, Context(store, cache, report_to))
    return Point(
        id=point_id,
        name=cfg.point_name,
        experiment=cfg.experiment.name,
        store=str(Path(paths.store).resolve()),
        model=cfg.model.name,
        dataset=cfg.data.name,
        judge=cfg.judge.name,
        reference=load_reference(cfg.generate.reference).label,
        setting=_setting(cfg, done),
        arms=done.arms,
        variants=done.variants,
        comparisons=done.comparisons,
        effects=done.effects,
        point_stages=done.point_stages,
    )


def print_summary(point) -> None:
    print("\n== outputs ==")
    print(
        f"{'arm':<16} {'seed':>5} {'train loss':>10} {'win rate':>9} {'mean chars':>10} "
        f"{'openllm avg':>11}  outputs.json"
    )
    for arm in point.arms:
        st = {k: v.metrics for k, v in arm.stages.items()}
        avg = f"{st['openllm']['openllm_average']:>11.3f}" if "openllm" in st else f"{'–':>11}"
        outputs = point.stage_path(arm.stages["generate"].key) / "outputs.json"
        print(
            f"{arm.name:<16} {arm.seed:>5} {st['finetune']['train_loss']:>10.4f} "
            f"{st['alpaca_eval']['win_rate']:>9.2f} "
            f"{st['generate']['gen_mean_output_chars']:>10.1f} {avg}  {outputs}"
        )
    for c in point.comparisons:
        m = c.stages["head_to_head"].metrics
        print(
            f"{c.arm} vs {c.baseline}, head to head: {m['win_rate']:.2f}% "
            f"± {m['standard_error']:.2f}"
        )


def exit_on_sigterm() -> None:
    """SIGTERM (scancel, a SLURM preemption, `kill`) ends the run as SystemExit, so that every
    `finally` runs: the store releases the lock of the stage being computed. Python's default
    dies on the spot, and a lock held for a stage just marked COMPLETE stayed in the store for
    good (every later run reuses the stage and never looks at its lock again)."""

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from pipeline.logs import quiet_libraries
    from pipeline.plan import check_experiment_name

    quiet_libraries()  # first: before a library prints what tells a user nothing
    exit_on_sigterm()

    # Before anything is named after it (a dry run's report, the W&B group, results/<name>/).
    check_experiment_name(cfg.experiment.name)
    if cfg.dry_run:  # this point's job and memory plan, nothing run (launcher=slurm: all points)
        from pipeline.cluster.jobs import dry_run_point

        return dry_run_point(cfg)
    started = time.time()
    from pipeline.results.aggregate import write_results

    tracker = Tracker.from_config(cfg.logger, cfg.experiment.name)
    point = run_point(cfg, tracker)
    print_summary(point)
    hydra_cfg = HydraConfig.get()  # what the report shows: how to rerun this point, its config
    point.overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # rerun just this point, not the whole sweep
        point.overrides.append("hydra.mode=RUN")
    point.choices = dict(hydra_cfg.runtime.choices)
    point.config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    out = Path(cfg.paths.results) / cfg.experiment.name
    (out / "points").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "points" / f"{point.id}.json", point.to_json())
    write_results(out, cfg.paths.paper_numbers)
    from pipeline.results.headline import report_lines
    from pipeline.results.wandb_rows import report_tables

    tracker.log_tables(out, report_tables(out) if tracker.enabled else None)
    print(f"tables and figures: {out.resolve()}")
    print(
        f"\ndone in {time.time() - started:.1f} s; stage store: {Path(cfg.paths.store).resolve()}"
    )
    for line in tracker.closing_lines() + report_lines(out):
        print(line)


if __name__ == "__main__":
    sys.exit(main())
