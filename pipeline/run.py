"""Entry point: `python -m pipeline.run [group=option ...] [key=value ...]`.

Runs, for the configured noise setting and for its noise-off baseline, the chain
finetune -> generate through the stage store (paths.store): every stage already computed with
the same config and inputs is reused, not recomputed.

  python -m pipeline.run                 the embedded default (SmolLM2-135M, base vs NEFT alpha 5)
  python -m pipeline.run --help          config groups
  python -m pipeline.run --cfg job       the composed config
  python -m pipeline.run model=tiny finetune=tiny generate=tiny     a seconds-long smoke run
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.store import Store

# Absolute, so the app finds its configs however it is started (python -m, python -c, submitit).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def arms(noise_cfg) -> list:
    """The noise settings to train: the baseline (noise off) and, unless it is the baseline, `noise_cfg`."""
    off = OmegaConf.create({"kind": "none", "alpha": 0.0, "length": noise_cfg.length})
    return [off] if noise_cfg.kind == "none" else [off, noise_cfg]


def run_experiment(cfg: DictConfig) -> dict:
    """Run every stage of one experiment point; returns {arm label: {stage: StageResult}}."""
    from pipeline.finetune import finetune, noise_label, noise_params
    from pipeline.generate import generate
    from pipeline.models import validate_model

    # Cheap checks first: a typo must not cost a training run.
    validate_model(cfg.model)
    plan = [(noise_label(noise_params(n)), n) for n in arms(cfg.noise)]
    store = Store(Path(cfg.paths.store), cfg.paths.lock_stale_after_s, cfg.paths.lock_heartbeat_s)
    cache = Store(Path(cfg.paths.cache), cfg.paths.lock_stale_after_s, cfg.paths.lock_heartbeat_s)
    report_to = [] if cfg.logger.mode == "disabled" else ["wandb"]
    if report_to:
        os.environ.update(
            WANDB_MODE=cfg.logger.mode,
            WANDB_PROJECT=cfg.logger.project,
            WANDB_RUN_GROUP=cfg.experiment.name,
            WANDB_DIR=str(Path(cfg.logger.dir).resolve()),
        )
        Path(cfg.logger.dir).mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    for label, noise in plan:
        ft = finetune(cfg.model, cfg.data, noise, cfg.finetune, store, cache, report_to)
        _say("finetune", label, ft)
        gen = generate(ft, cfg.generate, cfg.model.dtype, store)
        _say("generate", label, gen)
        results[label] = {"finetune": ft, "generate": gen}
    return results


def _say(stage: str, label: str, result) -> None:
    how = "reused" if result.reused else "computed"
    print(f"[{stage}] {label}: {how} -> {result.path}", flush=True)


def print_summary(results: dict) -> None:
    print("\n== outputs ==")
    print(f"{'arm':<24} {'train loss':>10} {'mean chars':>10}  outputs.json")
    for label, stages in results.items():
        ft, gen = stages["finetune"].metrics, stages["generate"].metrics
        print(f"{label:<24} {ft['train_loss']:>10.4f} {gen['gen_mean_output_chars']:>10.1f}  {stages['generate'].path / 'outputs.json'}")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    started = time.time()
    results = run_experiment(cfg)
    print_summary(results)
    print(f"\ndone in {time.time() - started:.1f} s; stage store: {Path(cfg.paths.store).resolve()}")


if __name__ == "__main__":
    sys.exit(main())
