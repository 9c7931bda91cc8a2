"""openllm stage: Open LLM Leaderboard (v1) tasks through lm-eval, in-process (paper Figure 3).

ARC-challenge (acc_norm), HellaSwag (acc_norm), MMLU (acc), TruthfulQA-mc2 (mc2), each with its
own few-shot count, on an HFLM over the fine-tuned weights. `task_set: hub` runs lm-eval's built-in
tasks (they download their datasets); `task_set: local` runs the same task definitions (lm-eval
`include` of the built-in YAML: same prompt, processing and metric) on small files shipped in
pipeline/assets/openllm/, written for this project, for offline runs and tests.

Writes lm_eval_results.json (lm-eval's results, our fixed filename), per_question.json (each
question's score per task, in lm-eval's document order) and metrics.json
(openllm_<task> per task and openllm_average).

Run: python -m pipeline.run            (openllm=local_cpu: local tasks, fewer shots, a limit)
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from pipeline.data.loading import ASSETS
from pipeline.models.devices import (
    DTYPES,
    compute_device,
    cuda_gpu_count,
    release_accelerator_memory,
)
from pipeline.stages.contract import Call, Context
from pipeline.store.key_rules import device_params
from pipeline.store.store import StageResult, Store, readable_of, stage_key, write_json_atomic

VERSION = 2  # 2: per_question.json (each question's score, for paired tests)


def check(cfg) -> None:
    """Cheap: task set and few-shot counts are valid."""
    validate_openllm(cfg.openllm)


def run(cfg, ctx: Context, call: Call) -> StageResult:
    """Plan entry: lm-eval scores of the chain's fine-tuned model."""
    return openllm(call.upstream["finetune"], cfg.openllm, cfg.model.dtype, ctx.store)


LOCAL_DATA = ASSETS / "openllm"
# Built-in lm-eval task -> (its YAML inside lm_eval/tasks, the splits our local files provide).
LOCAL_TASKS = {
    "arc_challenge": ("arc/arc_challenge.yaml", ("train", "validation", "test")),
    "hellaswag": ("hellaswag/hellaswag.yaml", ("train", "validation")),
    # One subject locally (the leaderboard averages 57); its YAML has the leaderboard's header.
    "mmlu": ("mmlu/default/mmlu_high_school_geography.yaml", ("dev", "test")),
    "truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml", ("validation",)),
}


def validate_openllm(openllm_cfg) -> None:
    limit = openllm_cfg.limit
    if limit is not None and limit < 1:
        raise ValueError(
            f"openllm.limit={limit}: questions per task, give a number >= 1, or null for all "
            "of them"
        )
    if openllm_cfg.batch_size < 1:
        raise ValueError(f"openllm.batch_size={openllm_cfg.batch_size}: must be >= 1")
    if openllm_cfg.task_set not in ("hub", "local"):
        raise ValueError(
            f"openllm.task_set={openllm_cfg.task_set!r}: use hub (lm-eval's datasets) or local "
            "(shipped files)"
        )
    for short, task in openllm_cfg.tasks.items():
        if openllm_cfg.task_set == "local" and task.task not in LOCAL_TASKS:
            raise ValueError(
                f"openllm.tasks.{short}.task={task.task!r} has no local data; local tasks: "
                f"{sorted(LOCAL_TASKS)}"
            )
        if task.num_fewshot < 0:
            raise ValueError(f"openllm.tasks.{short}.num_fewshot must be >= 0")


def write_local_tasks(out: Path) -> None:
    """Task YAMLs named <task>_local that include lm-eval's own task config and read the
    shipped files."""
    import lm_eval

    builtin = Path(lm_eval.__file__).parent / "tasks"
    out.mkdir(parents=True, exist_ok=True)
    for task, (yaml_path, splits) in LOCAL_TASKS.items():
        files = {split: str(LOCAL_DATA / f"{task}.{split}.jsonl") for split in splits}
        config = {
            "include": str(builtin / yaml_path),
            "task": f"{task}_local",
            "task_alias": f"{task}_local",
            # inherited tags would shadow the built-in groups (ai2_arc, mmlu_*) here
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": files},
        }
        (out / f"{task}_local.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def openllm(finetuned: StageResult, openllm_cfg, dtype: str, store: Store) -> StageResult:
    """lm-eval scores of the `finetuned` stage's model on the configured leaderboard tasks."""
    validate_openllm(openllm_cfg)
    params = (
        OmegaConf.to_container(openllm_cfg, resolve=True, enum_to_str=True)
        | {"dtype": str(dtype)}
        | device_params(compute_device())
    )
    label = f"{readable_of(finetuned.key)}_{openllm_cfg.name}"
    key = stage_key("openllm", label, params, [finetuned.key], VERSION)
    return store.materialize(
        key,
        lambda work: _evaluate(finetuned.path / "model", openllm_cfg, dtype, work),
        config=params,
    )


def hflm_placement(device: str, gpus: int, work: Path) -> dict:
    """HFLM's placement arguments: the CPU, one GPU, or (several GPUs visible) the model split
    over them with accelerate's device map, since a 70B model is 138 GB in bf16."""
    if device != "cuda":
        return {"device": "cpu"}
    if gpus > 1:
        return {"parallelize": True, "offload_folder": str(work / "offload")}
    return {"device": "cuda"}


def _evaluate(model_dir: Path, cfg, dtype: str, work: Path) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = None
    if cfg.task_set == "local":
        write_local_tasks(work / "tasks")
        # Only the tasks written here are indexed: indexing every lm-eval YAML took 4 s per
        # stage (their configs are still read, by path, through each task's `include`).
        manager = TaskManager(include_path=str(work / "tasks"), include_defaults=False)
    placement = hflm_placement(compute_device(), cuda_gpu_count(), work)
    lm = HFLM(
        pretrained=str(model_dir), dtype=DTYPES[dtype], batch_size=cfg.batch_size, **placement
    )
    merged: dict = {"results": {}, "n-shot": {}, "configs": {}, "versions": {}, "n-samples": {}}
    metrics: dict = {}
    per_question: dict[str, list[float]] = {}
    for short, task in cfg.tasks.items():
        name = f"{task.task}_local" if cfg.task_set == "local" else task.task
        # One call per task: the leaderboard uses a different few-shot count for each.
        out = simple_evaluate(
            model=lm,
            tasks=[name],
            num_fewshot=task.num_fewshot,
            limit=cfg.limit,
            task_manager=manager,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
            log_samples=True,  # each question's score: the compare stage's paired test
            bootstrap_iters=0,
        )
        samples = out.get("samples", {})
        per_question[short] = [
            float(q[task.metric])
            for sub in sorted(samples)
            for q in sorted(samples[sub], key=lambda q: q["doc_id"])
        ]
        for part in merged:
            merged[part].update(out.get(part, {}))
        metrics[f"openllm_{short}"] = float(out["results"][name][f"{task.metric},none"])
        metrics[f"openllm_{short}_n_shot"] = int(out["n-shot"][name])
    del lm
    release_accelerator_memory()  # the next stage may need the whole GPU
    metrics["openllm_average"] = sum(metrics[f"openllm_{s}"] for s in cfg.tasks) / len(cfg.tasks)
    write_json_atomic(work / "lm_eval_results.json", json.loads(json.dumps(merged, default=str)))
    write_json_atomic(work / "per_question.json", per_question)
    return metrics
