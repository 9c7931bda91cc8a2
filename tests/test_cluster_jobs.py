"""Jobs sized per point (pipeline/cluster): the dry run, the refusal in the job, the srun line,
ShareGPT per point, and the launcher's one array per resource shape (no SLURM needed here; the
real slurmctld checks the submitted resources in tests/test_slurm.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.cluster.jobs import group_arrays, point_job
from pipeline.cluster.sweep_points import experiment_point_configs
from pipeline.train import launch
from tests.support.composed import SMOKE, composed

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*overrides: str, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", "launcher=slurm", "dry_run=true", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def sharegpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sharegpt") / "sharegpt_alpaca.json"
    path.write_text(json.dumps([{"instruction": "Hi", "input": "", "output": "Hello."}]))
    return path


@pytest.mark.e2e  # a whole command in fresh interpreters: tens of seconds
def test_the_paper_dry_run_lists_every_point_with_resources_that_fit(sharegpt, tmp_path):
    done = dry_run(
        "experiment=paper_all", f"paths.sharegpt_train={sharegpt}", f"paths.store={tmp_path}/store"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "48 of 48 point(s) can run" in out and "CANNOT RUN" not in out
    assert "#16 table2_llama2_13b (array 1): 1 node(s) x 4 GPU(s), 1 task/node, 32 CPUs" in out
    assert "#17 table2_llama2_70b (array 2): 2 node(s) x 8 GPU(s), 1 task/node, 64 CPUs" in out
    assert (
        "array 1: --nodes=1 --ntasks-per-node=1 --gpus-per-node=4 --cpus-per-task=32 "
        "--mem=64G --time=1440  (1 points: #16)"
    ) in out
    assert "array 2: --nodes=2 --ntasks-per-node=1 --gpus-per-node=8" in out
    point_70b = out[out.index("#17 table2_llama2_70b") : out.index("#18 ")]
    for term in (
        "weights",
        "gradients",
        "AdamW states",
        "master copies",
        "AdamW temporary",
        "DDP buckets",
        "activations",
    ):
        assert f"  {term} " in point_70b
    assert "of 72 GB usable (90% of a 80 GB GPU): fits" in point_70b
    assert "host memory per node: about 192 GB" in point_70b  # rank 0 loads 138 GB of bf16
    assert "stages: not computed (hub training data" in point_70b
    assert not (tmp_path / "store" / "submitit").exists()  # nothing was submitted


def test_a_point_that_cannot_fit_fails_the_dry_run_naming_it(tmp_path):
    done = dry_run(
        "experiment=paper_table2",
        "finetune.distributed.nproc_per_node=1",
        f"paths.store={tmp_path}",
    )
    assert done.returncode != 0
    assert "1 of 3 point(s) can run; cannot: #0 table2_llama2_13b, #1 table2_llama2_70b" in (
        done.stdout
    )
    # One process per node: FSDP over 2 nodes x 1 GPU.
    assert (
        "#1 table2_llama2_70b: llama2-70b full fine-tune needs about 350 GB on each of 2 "
        "GPUs" in done.stderr
    )
    assert "with at least 16 GPUs (2 nodes of 8)" in done.stderr
    assert "nothing was submitted" in done.stderr


def test_more_gpus_than_a_node_has_and_bad_batch_arithmetic_are_refused(tmp_path):
    done = dry_run(
        "+point=table2_llama2_70b",
        "experiment=paper_table2",
        "hydra.mode=RUN",
        "finetune.distributed.nproc_per_node=16",
        "finetune.distributed.nnodes=1",
        f"paths.store={tmp_path}",
    )
    # A RUN-mode dry run sizes the point the way launcher=slurm would and runs nothing.
    assert done.returncode != 0 and "nothing was run" in done.stderr
    assert "asks for 16 GPUs per node and a node has 8 (hydra.launcher.node_gpus)" in done.stderr
    bad = dry_run(
        "+point=table2_llama2_13b",
        "experiment=paper_table2",
        "hydra.mode=RUN",
        "finetune.distributed.nproc_per_node=3",
        f"paths.store={tmp_path}",
    )
    assert bad.returncode != 0
    assert "finetune.effective_batch_size=128 is not a multiple" in bad.stderr


def test_sharegpt_unset_is_named_and_set_reaches_only_the_sharegpt_point():
    done = dry_run("experiment=paper_table1")
    assert done.returncode != 0
    assert "#3 table1_sharegpt: paths.sharegpt_train is not set" in done.stderr
    assert "table1_alpaca:" not in done.stderr
    points = experiment_point_configs(
        ["experiment=paper_table1", "paths.sharegpt_train=/data/X.json"]
    )
    trains = {cfg.point_name: cfg.data.train for _, cfg in points}
    assert len(trains) == 4
    assert trains["table1_sharegpt"] == "/data/X.json"
    assert all(t.startswith("hf:") for p, t in trains.items() if p != "table1_sharegpt")


def dist(**kw):
    base = {
        "nproc_per_node": "1",
        "nnodes": 1,
        "strategy": "fsdp",
        "rdzv_port": 29400,
        "rdzv_endpoint": "node01:29500",
        "fsdp": {"fp32_master_weights": False},
    }
    return OmegaConf.create({**base, **kw})


def test_the_job_refuses_more_processes_than_its_gpus(monkeypatch):
    monkeypatch.setattr(launch, "visible_cuda_gpus", lambda: 1)
    with pytest.raises(
        ValueError,
        match=r"finetune.distributed.nproc_per_node=4 x finetune."
        r"distributed.nnodes=1: 4 processes per node, one per "
        r"GPU, but this node has 1 GPU\(s\)",
    ):
        launch.check_allocation(dist(nproc_per_node="4"), env={"SLURM_GPUS_ON_NODE": "1"})
    with pytest.raises(ValueError, match="SLURM_GPUS_ON_NODE=2, CUDA visible: 1"):
        launch.check_allocation(dist(nproc_per_node="2"), env={"SLURM_GPUS_ON_NODE": "2"})
    monkeypatch.setattr(launch, "visible_cuda_gpus", lambda: 4)
    launch.check_allocation(dist(nproc_per_node="4"), env={"SLURM_GPUS_ON_NODE": "4"})
    with pytest.raises(ValueError, match="this node has 2 GPU"):  # SLURM gave fewer than seen
        launch.check_allocation(dist(nproc_per_node="4"), env={"SLURM_GPUS_ON_NODE": "2"})
    monkeypatch.setattr(launch, "visible_cuda_gpus", lambda: 0)  # CPU processes (gloo)
    launch.check_allocation(dist(nproc_per_node="4", strategy="ddp"), env={})


def test_the_job_refuses_more_nodes_than_its_allocation(monkeypatch):
    monkeypatch.setattr(launch, "visible_cuda_gpus", lambda: 8)
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "8"}
    with pytest.raises(
        ValueError,
        match=r"nnodes=2: this SLURM job has 1 node\(s\) "
        r"\(SLURM_JOB_NUM_NODES=1\); submit it on 2 nodes",
    ):
        launch.check_allocation(dist(nproc_per_node="8", nnodes=2), env=env)
    with pytest.raises(ValueError, match="this SLURM job has 1 node"):
        launch.command(dist(nproc_per_node="8", nnodes=2), Path("r.json"), env=env)


def test_the_finetune_check_refuses_before_any_work(monkeypatch):
    from pipeline.stages import finetune

    monkeypatch.setattr(launch, "visible_cuda_gpus", lambda: 1)
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "1")
    cfg = composed("experiment=paper_table2", "+point=table2_llama2_13b")
    with pytest.raises(ValueError, match="nproc_per_node=4 x finetune.distributed.nnodes=1"):
        finetune.check(cfg)


def test_srun_asks_one_task_per_node_with_its_cpus_and_gpus(monkeypatch):
    monkeypatch.setattr(launch, "visible_cuda_gpus", lambda: 8)
    env = {
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_CPUS_PER_TASK": "64",
        "SLURM_GPUS_ON_NODE": "8",
    }
    cmd = launch.command(dist(nproc_per_node="8", nnodes=2), Path("r.json"), env=env)
    assert cmd[:8] == [
        "srun",
        "--overlap",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=64",
        "--gpus-per-node=8",
        "--kill-on-bad-exit=1",
    ]
    assert cmd[9:13] == ["-m", "torch.distributed.run", "--nproc-per-node=8", "--nnodes=2"]
    # A CPU-only allocation asks for no GPU (the local test cluster).
    monkeypatch.setattr(launch, "visible_cuda_gpus", lambda: 0)
    cpu = launch.command(
        dist(nproc_per_node="1", nnodes=2, strategy="ddp"),
        Path("r.json"),
        env={"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "1"},
    )
    assert cpu[:7] == [
        "srun",
        "--overlap",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=1",
        "--kill-on-bad-exit=1",
    ]


class FakeExecutor:
    """submitit.AutoExecutor's calls, recorded; each 'job' returns its own Hydra job number."""

    calls: list = []

    def __init__(self, **kw):
        FakeExecutor.calls = [("init", kw)]

    def update_parameters(self, **kw):
        self.params = kw
        FakeExecutor.calls.append(("update", kw))

    def map_array(self, fn, *columns):
        FakeExecutor.calls.append(("array", list(columns[2])))
        return [FakeJob(n) for n in columns[2]]


class FakeJob:
    """A submitted job of FakeExecutor: task 0's result is its Hydra job number; its other
    tasks (one per further node) never run the pipeline (launcher.pipeline_step)."""

    def __init__(self, n: int):
        self.n = n

    def task(self, i: int):
        assert i == 0, "only task 0 runs the pipeline"
        return self

    def result(self):
        return self.n

    def results(self):
        raise AssertionError("results() waits for every task, and only task 0 runs")


def test_the_launcher_submits_one_array_per_shape_and_keeps_the_order(monkeypatch):
    import submitit

    from hydra_plugins.neftune_cluster import PointSlurmLauncher

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    launcher = PointSlurmLauncher(
        submitit_folder="x/%j",
        timeout_min=60,
        gpus_per_node=1,
        cpus_per_task=2,
        cpus_per_gpu=3,
        mem_gb=1,
        nodes=1,
        tasks_per_node=1,
        max_num_timeout=3,
        partition="gpu",
        array_parallelism=4,
        node_gpus=8,
        gpu_memory_gb=80,
        process_mem_gb=0.5,
    )
    sizes = ["1", "4", "1", "4", "2"]
    cfgs = [
        composed(
            *SMOKE,
            "finetune.distributed.strategy=ddp",
            "finetune.effective_batch_size=8",
            "finetune.per_device_batch_size=1",
            f"finetune.distributed.nproc_per_node={n}",
        )
        for n in sizes
    ]
    jobs = [
        point_job(10 + i, [f"n={n}"], c, launcher.options())
        for i, (n, c) in enumerate(zip(sizes, cfgs))
    ]
    arrays = group_arrays(jobs)
    results = launcher._submit([[f"n={n}"] for n in sizes], 10, arrays)
    assert results == [10, 11, 12, 13, 14]  # Hydra's order, whatever the arrays
    assert [c[1] for c in FakeExecutor.calls if c[0] == "array"] == [[10, 12], [11, 13], [14]]
    updates = [c[1] for c in FakeExecutor.calls if c[0] == "update"]
    assert [
        (u["gpus_per_node"], u["cpus_per_task"], u["nodes"], u["tasks_per_node"]) for u in updates
    ] == [(1, 3, 1, 1), (4, 12, 1, 1), (2, 6, 1, 1)]
    # the pipeline runs as one task on the first node, with the job's CPUs
    assert [u["slurm_srun_args"] for u in updates] == [
        ["--nodes=1", "--ntasks=1", f"--cpus-per-task={c}"] for c in (3, 12, 6)
    ]
    assert all(
        u["slurm_partition"] == "gpu"
        and u["slurm_array_parallelism"] == 4
        and "slurm_cpus_per_gpu" not in u
        and "slurm_node_gpus" not in u
        for u in updates
    )
    assert FakeExecutor.calls[0] == (
        "init",
        {"cluster": "slurm", "folder": "x/%j", "slurm_max_num_timeout": 3},
    )


@pytest.mark.parametrize("gpus, job_has", [(1, "cuda"), (0, "cpu")])
def test_the_dry_run_keys_are_the_keys_its_job_computes(monkeypatch, tmp_path, gpus, job_has):
    """model.dtype=auto: the dry run's stored/to-compute column names the finetune keys the
    job will compute, resolved as on the job's node (check_all's resolve_precision): bf16 on a
    GPU job's CUDA, whatever this login node's CPU does; this CPU's answer for a CPU job."""
    import torch

    from pipeline.cluster.jobs import ClusterOptions
    from pipeline.models import devices
    from pipeline.plan import arm_specs
    from pipeline.stages import finetune

    monkeypatch.setattr(devices, "cpu_flags", lambda: set())  # a login node without bf16
    cfg = composed(*SMOKE, "model.dtype=auto", f"paths.store={tmp_path}")
    job_cfg = cfg.copy()  # what the job does first, on its node
    with monkeypatch.context() as node:
        if job_has == "cuda":
            node.setattr(torch.cuda, "is_available", lambda: True)
            node.setattr(torch.cuda, "is_bf16_supported", lambda: True)
        devices.resolve_precision(job_cfg)
    assert job_cfg.model.dtype == ("bfloat16" if job_has == "cuda" else "float32")
    keys = [finetune.key_of(job_cfg, arm) for arm in arm_specs(job_cfg)]
    (tmp_path / keys[0]).mkdir()
    (tmp_path / keys[0] / "COMPLETE").write_text("")  # the baseline, computed by such a job
    job = point_job(0, [], cfg, ClusterOptions(gpus_per_node=gpus, mem_gb=1))
    assert job.stages == f"{keys[0]} stored; {keys[1]} to compute"
    assert cfg.model.dtype == "auto"  # the point's own config is left as it was


@pytest.mark.parametrize(
    "fp32_master, rank0_load, host_gb",
    [(False, True, 192), (True, True, 330), (False, False, 1158)],
)
def test_the_70b_job_asks_for_the_host_memory_its_ranks_load(fp32_master, rank0_load, host_gb):
    """Host memory per node of the 70B point (8 ranks + the pipeline, 6 GB each): rank-0 loading
    holds one copy of the weights (ranks 1-7 build meta parameters: tests/test_fsdp_rank0.py),
    in fp32 once accelerate upcasts them to masters; without it every rank holds one."""
    from pipeline.cluster.jobs import ClusterOptions

    cfg = composed(
        "experiment=paper_table2",
        "+point=table2_llama2_70b",
        f"finetune.distributed.fsdp.fp32_master_weights={fp32_master}",
        f"finetune.distributed.fsdp.rank0_load={rank0_load}",
    )
    job = point_job(0, [], cfg, ClusterOptions(gpus_per_node=8, gpu_memory_gb=80))
    assert any(f"host memory per node: about {host_gb} GB" in line for line in job.plan_lines)
    assert job.resources.mem_gb == host_gb


def test_hf_generation_gets_the_gpus_its_kv_cache_needs_or_is_refused_before_submitting():
    """hf generation runs on the job's first node: the 70B point's 8 GPUs hold its weights and
    KV cache; a 70B QLoRA point (1 GPU to train) gets the 3 GPUs its generation needs; with
    nodes of 2 GPUs it is refused, naming vllm and the batch size."""
    from pipeline.cluster.jobs import ClusterOptions

    opts = ClusterOptions(gpus_per_node=1, gpu_memory_gb=80)
    paper = point_job(0, [], composed("experiment=paper_table2", "+point=table2_llama2_70b"), opts)
    line = next(x for x in paper.plan_lines if x.startswith("generation (hf)"))
    assert "138 GB of weights + 10.7 GB of KV cache (batch 16 x 2048 tokens) over 8 GPU(s)" in line
    assert paper.resources.gpus_per_node == 8 and paper.ok
    qlora = composed("model=llama2_70b", "finetune=qlora")
    assert point_job(1, [], qlora, opts).resources.gpus_per_node == 3
    small = point_job(2, [], qlora, ClusterOptions(gpus_per_node=1, gpu_memory_gb=80, node_gpus=2))
    assert any(
        "generate.engine=vllm" in p and "generate.batch_size" in p for p in small.problems
    ), small.problems
