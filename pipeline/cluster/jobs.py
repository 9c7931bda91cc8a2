"""What one point needs from a cluster, whether it can run there, and the dry run's text.

A point's job is sized from its own config: nodes = finetune.distributed.nnodes, GPUs per node =
its processes per node (or the vllm engine's generate.settings.tensor_parallel_size when
larger), one task per node
(the pipeline runs in the first node's, launcher.pipeline_step; its finetune's `srun --overlap`
starts a torchrun in every node's), CPUs per GPU x GPUs, and host memory from an estimate (the
weights loaded on the CPU, a few GB per process) or the launcher's mem_gb, whichever is larger.
`auto` dtypes are resolved as the job's node will resolve them (CUDA bf16 for a GPU job), and
hf generation is checked to fit the first node's GPUs with its KV cache. Problems are collected,
not raised, so a dry run names every point that cannot run before anything is submitted.

Run: python -m pipeline.run experiment=paper_all launcher=slurm dry_run=true
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.generation.engines import engine
from pipeline.models.devices import job_precision
from pipeline.train.memory_plan import check_plan, finetune_plan, model_params

SHAREGPT_KEY = "${paths.sharegpt_train}"


@dataclass(frozen=True)
class ClusterOptions:
    """The launcher's sizing options (conf/launcher/slurm.yaml, hydra.launcher.*)."""

    gpus_per_node: int = 1  # GPUs of a one-process point; 0: a CPU-only cluster (no GPU asked)
    cpus_per_task: int = 8  # CPUs of a point at least
    cpus_per_gpu: int = 8  # CPUs asked per GPU of a point
    mem_gb: int = 64  # host memory of a point at least, GB
    timeout_min: int = 1440  # wall time of every point
    node_gpus: int | None = 8  # GPUs a node of the partition has (null: not checked)
    node_cpus: int | None = None  # CPUs a node has (null: not checked)
    node_mem_gb: int | None = None  # host memory of a node, GB (null: not checked)
    gpu_memory_gb: float | None = None  # GB per GPU of the partition (null: the point's own)
    process_mem_gb: float = 6.0  # host memory of one process (torch, CUDA context, loader)

    @classmethod
    def from_params(cls, params: dict) -> ClusterOptions:
        """The options found in a launcher's parameters (None values keep the defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names and v is not None})


@dataclass(frozen=True)
class Resources:
    """One SLURM job: one task per node (the pipeline in the first node's; a torchrun in every
    node's during a multi-node finetune)."""

    nodes: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: int
    timeout_min: int

    def sbatch(self) -> str:
        """The same request as sbatch options."""
        gpus = f" --gpus-per-node={self.gpus_per_node}" if self.gpus_per_node else ""
        return (
            f"--nodes={self.nodes} --ntasks-per-node=1{gpus} "
            f"--cpus-per-task={self.cpus_per_task} --mem={self.mem_gb}G "
            f"--time={self.timeout_min}"
        )


@dataclass
class PointJob:
    """A point of the multirun, its job and everything that stops it from running."""

    index: int  # Hydra's job number
    name: str
    overrides: list[str]
    resources: Resources | None = None
    plan_lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stages: str = "not computed"
    array: int | None = None  # which array of the launch it belongs to

    @property
    def ok(self) -> bool:
        """Whether nothing stops the point."""
        return not self.problems


def sharegpt_unset(cfg) -> bool:
    """data.train comes from paths.sharegpt_train, which is not set."""
    raw = OmegaConf.to_container(cfg.data, resolve=False).get("train")
    return SHAREGPT_KEY in str(raw) and cfg.paths.sharegpt_train is None


def _processes(dist, opts: ClusterOptions) -> int:
    value = str(dist.nproc_per_node).strip().lower()
    if value == "auto":  # one per GPU of the job: the launcher's GPUs per node
        return max(1, opts.gpus_per_node)
    return int(value) if value.isdigit() else 0


def _host_gb(cfg, nproc: int, plan, process_gb: float) -> tuple[float, str]:
    """Host memory per node (GB) and how it was estimated."""
    dist = cfg.finetune.distributed
    procs = nproc + 1 if nproc > 1 else 1  # torchrun's workers and the pipeline process
    try:
        n = model_params(cfg.model, dist.n_params)
    except ValueError:
        return procs * process_gb, "parameter count unknown: processes only"
    fsdp = dist.strategy == "fsdp" and nproc * dist.nnodes > 1
    # FSDP with fp32 masters: accelerate's prepare upcasts the loaded weights to fp32 on the
    # host before it shards them (fsdp2_prepare_model), 4 bytes per parameter.
    fp32 = cfg.model.dtype == "float32" or (fsdp and dist.fsdp.fp32_master_weights)
    weights = n * (4 if fp32 else 2) / 1e9
    # Rank-0 loading: only rank 0 reads the weights, the other ranks build meta parameters
    # (training._load); otherwise every process of the node holds a copy.
    copies = 1 if nproc == 1 or (fsdp and dist.fsdp.rank0_load) else nproc
    gb, how = copies * weights, f"{copies} x {weights:.0f} GB of weights loaded on the CPU"
    if fsdp and dist.fsdp.cpu_offload and plan is not None:
        gb += plan.states_gb * nproc
        how += f", {plan.states_gb * nproc:.0f} GB of offloaded states"
    return gb + procs * process_gb, how + f", {process_gb:g} GB x {procs} processes"


def _memory(job: PointJob, cfg, opts: ClusterOptions):
    """The memory plan of the point's GPUs, its lines and its refusal, if any."""
    try:
        plan, kw = finetune_plan(cfg, gpu_gb=opts.gpu_memory_gb)
    except ValueError as err:
        job.problems.append(str(err))
        return None
    job.plan_lines = plan_lines(plan)
    try:
        check_plan(plan, label=cfg.model.name, **kw)
    except ValueError as err:
        job.problems.append(str(err))
    return plan


def plan_lines(plan) -> list[str]:
    """One line per term of a memory plan, then the sum against the GPU."""
    out = [f"{name:<16} {gb:7.1f} GB" for name, gb in plan.terms]
    if plan.gpu_gb is None:
        return out + [f"{'sum':<16} {plan.per_gpu_gb:7.1f} GB (GPU memory unknown: not checked)"]
    verdict = "fits" if plan.fits else "does NOT fit"
    return out + [
        f"{'sum':<16} {plan.per_gpu_gb:7.1f} GB of {plan.usable_gb:.0f} GB usable "
        f"(90% of a {plan.gpu_gb:.0f} GB GPU): {verdict}"
    ]


def point_job(index: int, overrides: list[str], cfg, opts: ClusterOptions) -> PointJob:
    """Size `cfg`'s job, check that it can run, and say which of its stages are stored."""
    from pipeline.stages.kind_settings import check_kind_settings
    from pipeline.train.launch import accumulation_steps, world_size

    job = PointJob(index, cfg.point_name or f"{cfg.model.name}_{cfg.data.name}", overrides)
    dist = cfg.finetune.distributed
    nproc = _processes(dist, opts)
    cfg = cfg.copy()  # the point as its job will run it: nproc_per_node resolved
    # Typed as the job's check_all types them (precision reads the judge model's dtype, which
    # the composed settings leave to the model schema's default); a bad setting raises here,
    # naming its key, before anything is submitted.
    check_kind_settings(cfg)
    cfg.finetune.distributed.nproc_per_node = str(nproc or dist.nproc_per_node)
    dist = cfg.finetune.distributed
    try:
        accumulation_steps(cfg.finetune, world_size(dist))
    except ValueError as err:
        job.problems.append(str(err))
    generation = engine(cfg.generate.engine).gpus_needed(cfg.generate)
    gpus = 0 if opts.gpus_per_node == 0 else max(opts.gpus_per_node, nproc, generation)
    # `auto` as the job's node resolves it (plan.check_all), not as this login node would: the
    # stored/to-compute column, the memory plan and the host estimate then see the job's dtype.
    asked = cfg.model.dtype
    try:
        job_precision(cfg, gpus)
    except ValueError as err:  # an unknown dtype: named, as the job's check would
        job.problems.append(f"model.dtype: {err}")
    # hf generation runs in the pipeline's process on the first node: as many GPUs as its
    # weights and KV cache need (a 30B model's do not fit one 80 GB GPU).
    hf_gpus, hf_line, hf_problem = (
        _hf_generation(cfg, gpus, opts.gpu_memory_gb or dist.gpu_memory_gb, opts.node_gpus)
        if gpus
        else (0, "", "")
    )
    gpus = max(gpus, hf_gpus)
    if dist.strategy == "fsdp" and gpus == 0:
        job.problems.append(
            "finetune.distributed.strategy=fsdp needs CUDA GPUs and this "
            "launcher asks for none (hydra.launcher.gpus_per_node=0)"
        )
    plan = _memory(job, cfg, opts) if gpus else None
    host, how = _host_gb(cfg, max(nproc, 1), plan, opts.process_mem_gb)
    job.resources = Resources(
        dist.nnodes,
        gpus,
        max(opts.cpus_per_task, opts.cpus_per_gpu * gpus),
        max(opts.mem_gb, math.ceil(host)),
        opts.timeout_min,
    )
    job.plan_lines.append(f"host memory per node: about {host:.0f} GB ({how})")
    job.plan_lines += [hf_line] if hf_line else []
    job.problems += [hf_problem] if hf_problem else []
    if asked != cfg.model.dtype:
        where = "its CUDA GPUs" if gpus else "its CPU (this machine's flags)"
        job.plan_lines.append(f"model.dtype: {asked} -> {cfg.model.dtype} on {where}")
    _check_node(job, opts)
    if sharegpt_unset(cfg):
        job.problems.append(
            "paths.sharegpt_train is not set: data=sharegpt trains on it (an "
            "Alpaca-format JSON/JSONL of ShareGPT's 512-token chunks); give "
            "paths.sharegpt_train=<file>"
        )
    else:
        _check_data(job, cfg)
    return job


def _hf_generation(cfg, gpus: int, gpu_gb: float | None, limit: int | None) -> tuple[int, str, str]:
    """(GPUs, dry-run line, problem or "") of generate.engine=hf on the job's first node, which
    has `gpus`: at least the fewest GPUs (up to `limit`, a node's) over which the weights,
    balanced, leave every GPU the KV cache of its own layers for batch x max_total_length, as
    models.devices.gpu_placement places them there; estimated from the model's size and shape
    (a hub model's config.json is not on the login node). (0, "", "") where nothing is known."""
    from pipeline.models.devices import INFERENCE_HEADROOM
    from pipeline.train.model_size import KNOWN_KV_HEADS, model_shape

    shape = model_shape(cfg.model)
    if cfg.generate.engine != "hf" or gpu_gb is None or shape is None:
        return 0, "", ""
    try:
        n = model_params(cfg.model, cfg.finetune.distributed.n_params)
    except ValueError:
        return 0, "", ""
    hidden, layers, heads, _ = shape
    per_value = 4 if cfg.model.dtype == "float32" else 2
    kv_heads = KNOWN_KV_HEADS.get(cfg.model.name, heads)
    gen = cfg.generate
    kv = 2 * layers * kv_heads * (hidden // heads) * per_value * gen.batch_size
    kv = kv * gen.max_total_length / 1e9
    weights = n * per_value / 1e9
    usable = gpu_gb * (1 - INFERENCE_HEADROOM)

    def per_gpu(gpus: int) -> float:  # a layer is never split: one layer of slack per GPU
        return (weights + kv) / gpus + (weights + kv) / layers

    most = max(limit or 8, gpus)
    gpus = max(gpus, next((g for g in range(1, most + 1) if per_gpu(g) <= usable), most))
    line = (
        f"generation (hf): {weights:.0f} GB of weights + {kv:.1f} GB of KV cache (batch "
        f"{gen.batch_size} x {gen.max_total_length} tokens) over {gpus} GPU(s): about "
        f"{per_gpu(gpus):.1f} GB per GPU of {usable:.0f} GB usable"
    )
    if per_gpu(gpus) <= usable:
        return gpus, line, ""
    return (
        gpus,
        line,
        f"generation with generate.engine=hf needs about {per_gpu(gpus):.0f} GB on each of "
        f"{gpus} GPU(s) ({weights:.0f} GB of weights, {kv:.1f} GB of KV cache), more than "
        f"{usable:.0f} GB ({1 - INFERENCE_HEADROOM:.0%} of {gpu_gb:g} GB): use "
        "generate.engine=vllm with generate.settings.tensor_parallel_size=<GPUs>, or lower "
        "generate.batch_size",
    )


def _check_data(job: PointJob, cfg) -> None:
    """A local training file must exist and parse (as the job's check will ask); then the
    point's stored stages can be looked up."""
    from pipeline.data.loading import check_source

    if not str(cfg.data.train).startswith("hf:"):
        try:
            check_source(cfg.data.train, "data.train")
        except Exception as err:  # noqa: BLE001  (DataError or an unreadable file)
            job.problems.append(str(err))
            return
    job.stages = stored_stages(cfg)


def _check_node(job: PointJob, opts: ClusterOptions) -> None:
    r = job.resources
    for asked, has, what, key in (
        (r.gpus_per_node, opts.node_gpus, "GPUs", "node_gpus"),
        (r.cpus_per_task, opts.node_cpus, "CPUs", "node_cpus"),
        (r.mem_gb, opts.node_mem_gb, "GB of memory", "node_mem_gb"),
    ):
        if has is not None and asked > has:
            job.problems.append(
                f"asks for {asked} {what} per node and a node has {has} "
                f"(hydra.launcher.{key}); lower finetune.distributed."
                "nproc_per_node and raise finetune.distributed.nnodes"
            )


def stored_stages(cfg) -> str:
    """The point's finetune keys and whether each is in the stage store; 'not computed' where
    the key needs hub data (it hashes the training records)."""
    if str(cfg.data.train).startswith("hf:"):
        return "not computed (hub training data: a finetune key hashes the records)"
    try:
        from pipeline.plan import arm_specs
        from pipeline.stages import finetune
        from pipeline.store.store import is_complete

        keys = [finetune.key_of(cfg, arm) for arm in arm_specs(cfg)]
    except Exception as err:  # noqa: BLE001  (a dry run reports, it does not stop here)
        return f"not computed ({type(err).__name__}: {err})"
    store = Path(cfg.paths.store)
    return "; ".join(f"{k} {'stored' if is_complete(store / k) else 'to compute'}" for k in keys)


def group_arrays(jobs: list[PointJob]) -> list[list[PointJob]]:
    """The jobs grouped by resource shape, one SLURM array each, in order of first appearance
    (each keeps its Hydra job number, so results line up with the multirun's order)."""
    arrays: dict[Resources, list[PointJob]] = {}
    for job in jobs:
        arrays.setdefault(job.resources, []).append(job)
    for i, members in enumerate(arrays.values()):
        for job in members:
            job.array = i
    return list(arrays.values())


def format_jobs(jobs: list[PointJob], arrays: list[list[PointJob]]) -> str:
    """The dry run: every array, then every point with its job, memory plan and stages."""
    lines = [f"== {len(jobs)} point(s) in {len(arrays)} SLURM array(s) =="]
    for i, members in enumerate(arrays):
        points = ", ".join(f"#{j.index}" for j in members)
        lines.append(
            f"array {i}: {members[0].resources.sbatch()}  ({len(members)} points: {points})"
        )
    for job in jobs:
        r = job.resources
        gpus = f"{r.gpus_per_node} GPU(s)" if r.gpus_per_node else "no GPU"
        lines += [
            "",
            f"#{job.index} {job.name} (array {job.array}): {r.nodes} node(s) x {gpus}, "
            f"1 task/node, {r.cpus_per_task} CPUs, {r.mem_gb} GB, {r.timeout_min} min",
            f"  overrides: {' '.join(job.overrides)}",
        ]
        lines += [f"  {line}" for line in job.plan_lines]
        lines.append(f"  stages: {job.stages}")
        lines += [f"  CANNOT RUN: {p}" for p in job.problems] or ["  can run: yes"]
    bad = [j for j in jobs if not j.ok]
    lines += [
        "",
        f"{len(jobs) - len(bad)} of {len(jobs)} point(s) can run"
        + (f"; cannot: {', '.join(f'#{j.index} {j.name}' for j in bad)}" if bad else ""),
    ]
    return "\n".join(lines)


def refusal(jobs: list[PointJob], what: str = "submitted") -> str | None:
    """One message naming every point that cannot run and why (None when all can)."""
    bad = [j for j in jobs if not j.ok]
    if not bad:
        return None
    return f"nothing was {what}; these points cannot run:\n" + "\n".join(
        f"  #{j.index} {j.name}: {' | '.join(j.problems)}" for j in bad
    )


def dry_run_point(cfg) -> None:
    """dry_run=true without a SLURM launcher (a run, a local multirun): print this point's job
    as launcher=slurm's defaults would size it, run nothing; ValueError when it cannot run."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    overrides = list(hydra.overrides.task) if hydra else []
    num = hydra.job.get("num") if hydra else None
    job = point_job(num or 0, overrides, cfg, ClusterOptions())
    group_arrays([job])
    print(format_jobs([job], [[job]]), flush=True)
    message = refusal([job], "run")
    if message:
        raise ValueError(message)
