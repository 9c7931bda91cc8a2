"""A hydra-submitit-launcher SlurmLauncher that sizes every job from its own point.

The plugin gives every job of a multirun one parameter set; this launcher composes each job's
config first, derives its resources (pipeline.cluster.jobs.point_job), refuses the whole launch
before anything is submitted when a point cannot run, and submits one array per resource shape.
`dry_run=true` prints all of it and submits nothing (no SLURM needed). Hydra instantiates only
launchers under hydra_plugins.*: hydra_plugins/neftune_cluster holds the class it names.

Run: python -m pipeline.run experiment=paper_all launcher=slurm dry_run=true
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from pipeline.cluster.jobs import ClusterOptions, format_jobs, group_arrays, point_job, refusal

log = logging.getLogger(__name__)
TARGET = "hydra_plugins.neftune_cluster.PointSlurmLauncher"
# Options this launcher consumes: they size the jobs and never reach sbatch as such.
OWN = ("cpus_per_gpu", "node_gpus", "node_cpus", "node_mem_gb", "gpu_memory_gb", "process_mem_gb")


@dataclass
class PointSlurmConf(SlurmQueueConf):
    """hydra.launcher of launcher=slurm: the plugin's options, plus how points are sized.
    gpus_per_node, cpus_per_task and mem_gb are each point's minimum; a point gets more when
    its finetune.distributed (or its memory estimate) asks for more."""

    _target_: str = TARGET
    cpus_per_gpu: Optional[int] = 8  # CPUs asked per GPU of a point (not sbatch's option)
    node_gpus: Optional[int] = 8  # GPUs a node of the partition has; null: not checked
    node_cpus: Optional[int] = None  # CPUs a node has; null: not checked
    node_mem_gb: Optional[int] = None  # host memory of a node, GB; null: not checked
    gpu_memory_gb: Optional[float] = None  # GB per GPU of the partition; null: the point's
    process_mem_gb: float = 6.0  # host memory per process of a point (torch, CUDA, loader)


def register() -> None:
    """hydra/launcher=neftune_slurm in Hydra's ConfigStore (conf/launcher/slurm.yaml uses it)."""
    ConfigStore.instance().store(
        group="hydra/launcher", name="neftune_slurm", node=PointSlurmConf, provider="neftune-repro"
    )


class PointSizedSlurmLauncher(SlurmLauncher):
    """SlurmLauncher with per-point resources, a refusal before submitting, and a dry run."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.own = {k: self.params.pop(k, None) for k in OWN}

    def options(self) -> ClusterOptions:
        """The sizing options: the plugin's minima and this launcher's own."""
        return ClusterOptions.from_params({**self.params, **self.own})

    def plan(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        """Every job's PointJob (composed from its overrides) and the arrays they form."""
        loader, opts = self.hydra_context.config_loader, self.options()
        jobs = []
        for i, overrides in enumerate(job_overrides):
            cfg = loader.load_sweep_config(self.config, list(overrides))
            jobs.append(
                point_job(initial_job_idx + i, list(filter_overrides(overrides)), cfg, opts)
            )
        return jobs, group_arrays(jobs)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Plan every job; dry run: print and stop; else refuse or submit one array per shape."""
        jobs, arrays = self.plan(job_overrides, initial_job_idx)
        message = refusal(jobs)
        if self.config.get("dry_run"):
            print(format_jobs(jobs, arrays), flush=True)
            if message:
                raise SystemExit(f"dry run: {message}")
            return [_not_run(list(o)) for o in job_overrides]
        if message:
            raise ValueError(message)
        return self._submit(job_overrides, initial_job_idx, arrays)

    def _submit(self, job_overrides, initial_job_idx: int, arrays) -> list[JobReturn]:
        import submitit  # lazy, as the plugin does: plugin discovery stays fast

        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init["slurm_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster="slurm", **init)
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        base = {
            k if k in generic else f"slurm_{k}": v
            for k, v in self.params.items()
            if k not in ("submitit_folder", "max_num_timeout")
        }
        submitted: dict[int, Any] = {}
        for members in arrays:
            r = members[0].resources
            executor.update_parameters(
                **{
                    **base,
                    **dict(
                        nodes=r.nodes,
                        tasks_per_node=1,
                        gpus_per_node=r.gpus_per_node,
                        cpus_per_task=r.cpus_per_task,
                        mem_gb=r.mem_gb,
                        timeout_min=r.timeout_min,
                        slurm_srun_args=pipeline_step(r),
                    ),
                }
            )
            params = [
                (
                    list(job_overrides[j.index - initial_job_idx]),
                    "hydra.sweep.dir",
                    j.index,
                    f"job_id_for_{j.index}",
                    Singleton.get_state(),
                )
                for j in members
            ]
            log.info(
                f"array {members[0].array}: {r.sbatch()}: jobs "
                f"{', '.join(f'#{j.index}' for j in members)}"
            )
            for job, handle in zip(members, executor.map_array(self, *zip(*params))):
                submitted[job.index] = handle
        # Task 0 ran the pipeline; a multi-node job's other tasks never start (pipeline_step).
        return [submitted[i].task(0).result() for i in sorted(submitted)]


def pipeline_step(r) -> list[str]:
    """srun options of the step submitit starts the pipeline in: one task on the job's first
    node, whatever the job's node count. submitit would otherwise start one task per node and
    each would run the whole point (two pipelines for a 2-node point). The finetune's own
    `srun ... torchrun` step over every node then shares this step's resources (--overlap,
    pipeline/train/launch.py): since SLURM 20.11 a step gets none of what another step holds."""
    return ["--nodes=1", "--ntasks=1", f"--cpus-per-task={r.cpus_per_task}"]


def _not_run(overrides: list[str]) -> JobReturn:
    """What a dry run returns for a job: done, nothing ran."""
    ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
    ret.return_value = None
    return ret
