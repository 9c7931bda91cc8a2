"""Entry point: `python -m pipeline.run [group=option ...] [key=value ...]`.

Runs, for the configured noise setting and for its noise-off baseline, the chain
finetune -> generate -> alpaca_eval -> analysis through the stage store (paths.store), then
writes the paper-shaped tables to results/<experiment>/. Every stage already computed with the
same config and inputs is reused, not recomputed.

  python -m pipeline.run                 the embedded default (SmolLM2-135M, base vs NEFT alpha 5)
  python -m pipeline.run --help          config groups
  python -m pipeline.run --cfg job       the composed config
  python -m pipeline.run model=tiny finetune=tiny generate=tiny judge=local_tiny   a seconds-long smoke run
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.core.store import Store, readable_of, stage_key
from pipeline.core.tracking import Tracker

# Absolute, so the app finds its configs however it is started (python -m, python -c, submitit).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def arms(noise_cfg) -> list:
    """The noise settings to train: the baseline (noise off) and, unless it is the baseline, `noise_cfg`."""
    off = OmegaConf.create({"kind": "none", "alpha": 0.0, "length": noise_cfg.length})
    return [off] if noise_cfg.kind == "none" or noise_cfg.alpha == 0 else [off, noise_cfg]


def run_experiment(cfg: DictConfig) -> dict:
    """Run every stage of one experiment point; returns {arm label: {stage: StageResult}} plus the point summary."""
    from pipeline.stages.alpaca_eval_stage import alpaca_eval_stage, load_reference, reference_from_stage, validate_judge
    from pipeline.stages.analysis import analysis, read_outputs
    from pipeline.core.data import load_train, records_digest
    from pipeline.stages.finetune import finetune, noise_label, noise_params
    from pipeline.stages.generate import generate
    from pipeline.core.models import validate_model
    from pipeline.stages.openllm import openllm, validate_openllm
    from pipeline.stages.overfit import overfit

    # Cheap checks first: a typo or a missing API key must not cost a training run.
    validate_model(cfg.model)
    validate_judge(cfg.judge)
    run_openllm = len(cfg.openllm.tasks) > 0
    if run_openllm:
        validate_openllm(cfg.openllm)
    reference = load_reference(cfg.generate.reference)
    plan = [(noise_label(noise_params(n)), n) for n in arms(cfg.noise)]
    tracker = Tracker.from_config(cfg.logger, cfg.experiment.name)
    store = Store(Path(cfg.paths.store), cfg.paths.lock_stale_after_s, cfg.paths.lock_heartbeat_s, tracker)
    cache = Store(Path(cfg.paths.cache), cfg.paths.lock_stale_after_s, cfg.paths.lock_heartbeat_s)
    report_to = ["wandb"] if tracker.enabled else []  # the Trainer logs its curves into the stage's open run

    def judge_and_analyse(gen, label: str):
        """A generate stage's win rate against the reference and its length/diversity; also its texts."""
        judged = alpaca_eval_stage(gen, reference, cfg.judge, store, cache)
        _say("alpaca_eval", label, judged)
        texts = read_outputs(gen.path / "outputs.json")
        analysed = analysis(texts, readable_of(gen.key), cfg.data.diversity_cutoff, [gen.key], store)
        _say("analysis", label, analysed)
        return judged, analysed, texts

    results: dict[str, dict] = {}
    lengths: dict[str, list[int]] = {}
    for label, noise in plan:
        ft = finetune(cfg.model, cfg.data, noise, cfg.finetune, store, cache, report_to)
        _say("finetune", label, ft)
        gen = generate(ft, cfg.generate, cfg.model.dtype, store)
        _say("generate", label, gen)
        judged, analysed, texts = judge_and_analyse(gen, label)
        scored = openllm(ft, cfg.openllm, cfg.model.dtype, store) if run_openllm else None
        if scored:
            _say("openllm", label, scored)
        fitted = overfit(ft, cfg.overfit, cfg.data, cfg.finetune.max_length, cfg.model.dtype, store) if cfg.overfit.enabled else None
        if fitted:
            _say("overfit", label, fitted)
        results[label] = {"finetune": ft, "generate": gen, "alpaca_eval": judged, "analysis": analysed, "openllm": scored,
                          "overfit": fitted}
        lengths[label] = [len(t) for t in texts]

    length_control = None
    if cfg.length_control.enabled:  # Table 5: the noise-off model pushed to answer at length
        length_control = {}
        base_ft = results[plan[0][0]]["finetune"]
        for name, v in cfg.length_control.variants.items():
            variant = {"name": name, **OmegaConf.to_container(v, resolve=True)}
            gen = generate(base_ft, cfg.generate, cfg.model.dtype, store, variant)
            _say("generate", f"base, {name}", gen)
            judged, analysed, _ = judge_and_analyse(gen, f"base, {name}")
            length_control[name] = {**variant, **{k: judged.metrics[k] for k in ("win_rate", "standard_error")},
                                    "chars_mean": analysed.metrics["chars_mean"], "words_mean": analysed.metrics["words_mean"],
                                    "mean_new_tokens": gen.metrics["gen_mean_new_tokens"]}

    base_label, neft_label = plan[0][0], (plan[1][0] if len(plan) > 1 else None)
    head_to_head = None
    if neft_label and cfg.head_to_head:
        head_to_head = alpaca_eval_stage(results[neft_label]["generate"], reference_from_stage(results[base_label]["generate"], "base"),
                                         cfg.judge, store, cache)
        _say("alpaca_eval", f"{neft_label} vs base", head_to_head)
    train = load_train(cfg.data.train, cfg.data.train_limit)
    train_analysis = analysis([r["output"] for r in train], f"{cfg.data.name}_train", cfg.data.diversity_cutoff,
                              [records_digest(train)], store)

    neft = results[neft_label] if neft_label else None
    ft_metrics = results[base_label]["finetune"].metrics
    point = {
        "dataset": cfg.data.name, "model": cfg.model.name, "judge": cfg.judge.name, "reference": reference.label,
        "alpha": float(cfg.noise.alpha) if neft_label else 0.0, "noise": neft_label or "base", "cutoff": cfg.data.diversity_cutoff,
        "base": results[base_label]["alpaca_eval"].metrics, "neft": neft["alpaca_eval"].metrics if neft else None,
        "head_to_head": head_to_head.metrics if head_to_head else None,
        "train": train_analysis.metrics,
        "base_analysis": results[base_label]["analysis"].metrics, "neft_analysis": neft["analysis"].metrics if neft else None,
        "base_lengths": lengths[base_label], "neft_lengths": lengths[neft_label] if neft else None,
        "openllm_config": cfg.openllm.name, "openllm_task_set": cfg.openllm.task_set if run_openllm else None,
        "openllm_shots": {k: t.num_fewshot for k, t in cfg.openllm.tasks.items()}, "openllm_limit": cfg.openllm.limit if run_openllm else None,
        "base_openllm": _metrics(results[base_label]["openllm"]), "neft_openllm": _metrics(neft["openllm"]) if neft else None,
        "lora": ft_metrics["lora"], "lora_4bit": ft_metrics["lora_4bit"], "n_train": len(train),
        "n_eval": results[base_label]["generate"].metrics["gen_n_outputs"],
        "base_overfit": _overfit_point(results[base_label]["overfit"]), "neft_overfit": _overfit_point(neft["overfit"]) if neft else None,
        "length_control": length_control,
    }
    # Named by what the point is, not by its stage keys: rerunning it with other settings replaces its row.
    readable = f"{cfg.point_name}_{point['noise']}" if cfg.point_name else f"{cfg.model.name}_{cfg.data.name}_{point['noise']}"
    point["id"] = stage_key("point", readable, {"judge": cfg.judge.name, "openllm": cfg.openllm.name}, [], 1)
    return {"arms": results, "point": point}


def _metrics(result):
    return result.metrics if result else None


def _overfit_point(result) -> dict | None:
    """The overfit stage's means plus its per-example values (the histograms of Figs 4-5)."""
    if result is None:
        return None
    per_example = json.loads((result.path / "per_example.json").read_text())
    return result.metrics | {k: per_example[k] for k in ("train_loss", "heldout_loss", "rougeL", "bleu")}


def _say(stage: str, label: str, result) -> None:
    how = "reused" if result.reused else "computed"
    print(f"[{stage}] {label}: {how} -> {result.path}", flush=True)


def print_summary(results: dict) -> None:
    print("\n== outputs ==")
    print(f"{'arm':<16} {'train loss':>10} {'win rate':>9} {'mean chars':>10} {'openllm avg':>11}  outputs.json")
    for label, stages in results["arms"].items():
        ft, gen, ae = stages["finetune"].metrics, stages["generate"].metrics, stages["alpaca_eval"].metrics
        avg = f"{stages['openllm'].metrics['openllm_average']:>11.3f}" if stages["openllm"] else f"{'–':>11}"
        print(f"{label:<16} {ft['train_loss']:>10.4f} {ae['win_rate']:>9.2f} {gen['gen_mean_output_chars']:>10.1f} "
              f"{avg}  {stages['generate'].path / 'outputs.json'}")
    h2h = results["point"]["head_to_head"]
    if h2h:
        print(f"+NEFT vs base, head to head: {h2h['win_rate']:.2f}% ± {h2h['standard_error']:.2f}")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    started = time.time()
    from pipeline.results.tables import tables

    results = run_experiment(cfg)
    print_summary(results)
    hydra_cfg = HydraConfig.get()  # what the report shows: how to rerun this point, and the config it ran
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode == RunMode.MULTIRUN:  # rerun just this point, not the whole sweep
        overrides.append("hydra.mode=RUN")
    results["point"] |= {"overrides": overrides, "choices": dict(hydra_cfg.runtime.choices),
                         "config": OmegaConf.to_container(cfg, resolve=True)}
    out = tables(results["point"], cfg.experiment.name, Path(cfg.paths.results), Path(cfg.paths.paper_numbers))
    Tracker.from_config(cfg.logger, cfg.experiment.name).log_tables(out)
    print(f"tables and figures: {out.resolve()}")
    print(f"\ndone in {time.time() - started:.1f} s; stage store: {Path(cfg.paths.store).resolve()}")


if __name__ == "__main__":
    sys.exit(main())
