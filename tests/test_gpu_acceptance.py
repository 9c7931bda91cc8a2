"""scripts/gpu_acceptance.py can fail: each check is broken here in the property it claims (a
full-state checkpoint, noise on padding, a length rounded in bf16, an empty answer, a CPU run
where CUDA was asked, a plan term removed, a version below its floor, no score) and must report
FAIL; a check that raises, hangs or lacks a package is a row, not the end of the run.

Checks that need CUDA are broken through their judge, with the record a GPU run would give;
the code they run on a GPU is run here on a CPU for its plumbing (the same Trainer, torchrun
and pipeline calls, small models).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.gpu_rows import Row, Status

ROOT = Path(__file__).resolve().parents[1]


# -- the runner: isolation, timeouts, missing packages, the exit status ---------------------------
# Targets the runner's child processes call (module:function), kept light: no torch import.


def fake_pass(expect, work):
    return Row("passes", Status.PASS, "fine", "fine")


def fake_raise(expect, work):
    raise RuntimeError("the check broke")


def fake_hang(expect, work):
    time.sleep(120)


def fake_missing(expect, work):
    import lm_eval_not_installed_here  # noqa: F401


def fake_needs_cuda(expect, work):
    return Row("needs cuda", Status.NEEDS_CUDA, "not run", "a GPU")


def test_every_check_runs_isolated_and_any_failure_is_a_row(tmp_path):
    from scripts.gpu_acceptance import Spec, passed, run_checks

    here = "tests.test_gpu_acceptance"
    specs = [
        Spec(name, f"{here}:fake_{name}", 30 if name != "hang" else 4)
        for name in ("raise", "hang", "missing", "pass", "needs_cuda")
    ]
    rows = run_checks(specs, "cpu", tmp_path, budget_s=200)
    statuses = [r.status for r in rows]
    assert statuses == [
        Status.FAIL,
        Status.FAIL,
        Status.MISSING,
        Status.PASS,
        Status.NEEDS_CUDA,
    ]  # the run went on after each failure
    assert "RuntimeError: the check broke" in rows[0].why
    assert "killed after 4 s" in rows[1].why
    assert "lm_eval_not_installed_here" in rows[2].why
    assert not passed(rows, "cpu")
    assert passed(rows[3:], "cpu")  # on a CPU a check that needs CUDA does not count ...
    assert not passed(rows[3:], "cuda")  # ... on a GPU nothing but a pass does
    assert not passed([rows[3], rows[2]], "cpu")  # a missing package is no pass


def test_a_check_not_started_within_the_budget_is_a_row(tmp_path):
    from scripts.gpu_acceptance import Spec, run_checks

    rows = run_checks([Spec("late", "tests.test_gpu_acceptance:fake_pass", 30)], "cpu", tmp_path, 5)
    assert rows[0].status is Status.FAIL and "budget ran out" in rows[0].why


def test_cuda_asked_on_a_cpu_fails_and_the_table_says_why(tmp_path):
    """--expect cuda where torch sees no GPU: the stack row fails, the exit status is 1."""
    out = tmp_path / "gpu.md"
    done = subprocess.run(
        [sys.executable, "scripts/gpu_acceptance.py", "--expect", "cuda", "--only", "stack"]
        + ["--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    table = out.read_text()
    assert "| stack vs declared floors | FAIL |" in table
    assert "CUDA was asked for and torch sees no GPU" in table and "NOT all passed" in table


def test_the_table_replaces_only_its_device_kinds_section(tmp_path):
    from scripts.gpu_acceptance import section_markers, write_table

    cpu, cuda = section_markers("cpu"), section_markers("cuda")
    gpu_md = tmp_path / "gpu.md"
    gpu_md.write_text(
        f"# history\n{cpu[0]}\nold cpu\n{cpu[1]}\n{cuda[0]}\nold gpu\n{cuda[1]}\nend\n"
    )
    write_table(gpu_md, "new gpu\n", "cuda")
    assert gpu_md.read_text() == (
        f"# history\n{cpu[0]}\nold cpu\n{cpu[1]}\n{cuda[0]}\nnew gpu\n{cuda[1]}\nend\n"
    )


# -- the stack against pyproject.toml's floors ----------------------------------------------------


def test_a_version_below_its_declared_floor_fails():
    from scripts.gpu_checks import judge_stack
    from scripts.gpu_rows import declared_floors

    floors = declared_floors()
    assert set(floors) == {"torch", "transformers", "accelerate", "peft"}
    at_floor = {name: f"{floor}+cu130" for name, floor in floors.items()}
    assert judge_stack(at_floor, floors, "cuda", "NVIDIA H100").status is Status.PASS
    old = at_floor | {"transformers": "4.57.6"}
    row = judge_stack(old, floors, "cuda", "NVIDIA H100")
    assert row.status is Status.FAIL and "transformers 4.57.6 is below" in row.why


# -- NEFT: the pipeline's hook broken in the ways the old check could not see ---------------------


def _lengths_noising_padding(mask, position_ids):
    return mask.sum(dim=1, keepdim=True).expand_as(mask).to(mask.dtype)


def _lengths_of_the_padded_batch(mask, position_ids):
    return mask.new_full(mask.shape, mask.shape[1])


def _lengths_rounded_in_bf16(original):
    import torch

    return lambda mask, pos: original(mask, pos).to(torch.bfloat16).to(torch.long)  # 333 -> 334


def test_neft_check_passes_the_pipelines_noise():
    from scripts.gpu_checks import check_neft

    row = check_neft("cpu", None)
    assert row.status is Status.PASS, row


@pytest.mark.parametrize(
    "broken, says",
    [
        ("noising_padding", "padding noised"),
        ("padded_length", "row of 120 tokens: noise norm"),
        ("bf16_length", "row of 333 tokens: scale +0.15% off"),
    ],
)
def test_neft_check_fails_on_each_known_bug(monkeypatch, broken, says):
    import pipeline.train.noise as noise
    from scripts.gpu_checks import check_neft

    lengths = {
        "noising_padding": _lengths_noising_padding,
        "padded_length": _lengths_of_the_padded_batch,
        "bf16_length": _lengths_rounded_in_bf16(noise.token_lengths),
    }[broken]
    monkeypatch.setattr(noise, "token_lengths", lengths)
    row = check_neft("cpu", None)
    assert row.status is Status.FAIL and says in row.why, row


def test_neft_check_fails_off_the_device_asked_for():
    from scripts.gpu_checks import judge_neft, measure_neft

    row = judge_neft(measure_neft("cpu"), "cuda")
    assert row.status is Status.FAIL and "ran on cpu, cuda asked" in row.why


# -- the finetune stage ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One real run of the check's measurement on the CPU (the tiny model, bf16 weights)."""
    from scripts.gpu_checks import measure_finetune

    return measure_finetune("cpu", tmp_path_factory.mktemp("finetune"))


def _on_cuda(rec, **changes):
    """`rec` as a GPU run would have recorded it, with `changes`."""
    gpu = dict(
        train_device="cuda",
        noise_devices=["cuda:bfloat16"],
        peak_allocated=3_000_000_000,
        reserved_before=0,
        reserved_after=40 * 2**20,
        allocated_after=40 * 2**20,
    )
    return dataclasses.replace(rec, **(gpu | changes))


@pytest.mark.e2e
def test_finetune_check_passes_the_stage_and_fails_each_broken_property(finetuned):
    from scripts.gpu_checks import judge_finetune

    assert judge_finetune(finetuned, "cpu").status is Status.PASS
    assert judge_finetune(_on_cuda(finetuned), "cuda").status is Status.PASS
    broken = {
        "trained on cpu, cuda asked": (finetuned, "cuda"),  # the CPU run, judged for a GPU
        "trained in float32": (_on_cuda(finetuned, train_dtype="float32"), "cuda"),
        "NEFT noised 0 forwards": (_on_cuda(finetuned, noise_calls=0), "cuda"),
        "loss did not fall": (_on_cuda(finetuned, losses=[6.2] * 12), "cuda"),
        "kept 2.10 GB reserved": (_on_cuda(finetuned, reserved_after=2_100_000_000), "cuda"),
        "no CUDA memory measured": (
            dataclasses.replace(_on_cuda(finetuned), reserved_after=None),
            "cuda",
        ),
    }
    for says, (rec, expect) in broken.items():
        row = judge_finetune(rec, expect)
        assert row.status is Status.FAIL and says in row.why, (says, row)


# -- the 7B memory probe -------------------------------------------------------------------------


def _seven_b_record(plan, **changes):
    """What the probe records on an 80 GB GPU when memory goes as planned: bf16 weights, grads,
    AdamW states and the foreach temporary (10 B/param) at the optimiser step, plus a little."""
    from scripts.gpu_checks import MemoryRecord

    n = 6.74e9
    rec = MemoryRecord(
        n_params=int(n),
        plan_terms=[list(t) for t in plan.terms],
        plan_total=plan.per_gpu_gb,
        usable=plan.usable_gb,
        weights=2 * n / 1e9,
        gradients=2 * n / 1e9,
        adam_states=4 * n / 1e9,
        peak_allocated=10 * n / 1e9 + 0.3,
        peak_reserved=10 * n / 1e9 + 2.0,
        step_s=[12.0, 8.0, 8.1],
        tokens_per_step=128 * 512,
        gpu="NVIDIA H100 80GB HBM3",
        mfu="40.0% of 989 TFLOP/s",
    )
    return dataclasses.replace(rec, **changes)


def _seven_b_plan():
    from pipeline.train.memory_plan import finetune_plan
    from scripts.gpu_checks import PROBE_CONFIG
    from scripts.gpu_rows import composed

    cfg = composed(*PROBE_CONFIG, "model.dtype=bfloat16")
    return finetune_plan(cfg, gpu_gb=80.0)[0]


def test_memory_check_fails_when_a_plan_term_is_removed(monkeypatch):
    from pipeline.train import memory_plan
    from scripts.gpu_checks import judge_memory

    plan = _seven_b_plan()
    measured = _seven_b_record(plan)
    assert judge_memory(measured).status is Status.PASS, judge_memory(measured)
    original = memory_plan.state_bytes
    monkeypatch.setattr(
        memory_plan, "state_bytes", lambda *a, **k: original(*a, **k) | {"AdamW temporary": 0.0}
    )
    without_temporary = _seven_b_plan()
    row = judge_memory(dataclasses.replace(measured, **_plan_fields(without_temporary)))
    assert row.status is Status.FAIL and "peak allocated is 12" in row.why, row


def _plan_fields(plan) -> dict:
    return dict(
        plan_terms=[list(t) for t in plan.terms], plan_total=plan.per_gpu_gb, usable=plan.usable_gb
    )


def test_memory_check_fails_on_each_broken_measurement():
    from scripts.gpu_checks import judge_memory

    plan = _seven_b_plan()
    broken = {
        "peak allocated is 7": dict(peak_allocated=50.0),  # a term counted twice in the plan
        "reserved 80.0 GB > usable": dict(peak_reserved=80.0),
        "AdamW states: measured 53.92 GB": dict(adam_states=8 * 6.74),  # fp32 states
        "2 steps timed": dict(step_s=[1.0, 1.0]),
    }
    for says, changes in broken.items():
        row = judge_memory(_seven_b_record(plan, **changes))
        assert row.status is Status.FAIL and says in row.why, (says, row)


def test_the_memory_probe_trains_with_the_pipelines_arguments_on_a_cpu(tmp_path):
    """The probe's own code (Trainer, the pipeline's arguments, NEFT, callbacks, optimiser
    states) on a tiny Llama; on a GPU only the config and the CUDA counters differ."""
    from scripts.gpu_checks import measure_training_memory

    llama = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    overrides = ("model=tiny", "finetune=tiny", "finetune.max_steps=3")
    overrides += ("finetune.effective_batch_size=8", "finetune.max_length=64")
    rec = measure_training_memory(llama, overrides, tmp_path, "cpu")
    assert len(rec.step_s) == 3 and rec.tokens_per_step == 8 * 64
    weights = rec.n_params * 2 / 1e9  # bf16
    assert rec.weights == pytest.approx(weights) and rec.gradients == pytest.approx(weights)
    assert rec.adam_states == pytest.approx(2 * weights)  # exp_avg, exp_avg_sq in bf16
    assert [t for t, _ in rec.plan_terms][:3] == ["weights", "gradients", "AdamW states"]


# -- FSDP under torchrun ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_fsdp_check_fails_a_full_state_checkpoint_from_a_real_kill_and_resume(tmp_path):
    """The check's launches on a CPU with strategy=ddp (accelerate shards on GPUs only): killed
    after checkpoint-4, resumed at 4, 6 steps, the safetensors load; but the checkpoint holds
    the full state (model.safetensors, optimizer.pt), and the check must say FAIL."""
    from scripts.gpu_fsdp_checks import FSDP_STEPS, KILL_AT, judge_fsdp, killed_and_resumed

    overrides = ("model=tiny", "finetune=tiny", "data=default", "noise=uniform")
    overrides += ("model.dtype=bfloat16", "finetune.distributed.strategy=ddp")
    overrides += (f"finetune.max_steps={FSDP_STEPS}", "finetune.save_steps=2")
    rec = killed_and_resumed(tmp_path, overrides, "cpu")
    assert rec.killed_rc != 0 and rec.first["start_step"] == 0
    assert rec.resumed["start_step"] == KILL_AT == rec.metrics["resumed_from_step"]
    assert rec.metrics["train_steps"] == FSDP_STEPS and rec.logits_finite
    assert rec.saved_dtypes == ["torch.bfloat16"]
    row = judge_fsdp(rec)
    assert row.status is Status.FAIL
    assert "full-state files ['model.safetensors', 'optimizer.pt']" in row.why
    assert "no pytorch_model_fsdp*/ .distcp shards" in row.why
    sharded = dataclasses.replace(
        rec,
        checkpoint_files=[
            "optimizer_0/.metadata",
            "optimizer_0/__0_0.distcp",
            "pytorch_model_fsdp_0/.metadata",
            "pytorch_model_fsdp_0/__0_0.distcp",
            "rng_state.pth",
            "scheduler.pt",
            "trainer_state.json",
            "training_args.bin",
        ],
        first=rec.first | {"sharded_params": 20},
        resumed=rec.resumed | {"sharded_params": 20},
        loaded_device="cuda",
    )
    assert judge_fsdp(sharded).status is Status.PASS, judge_fsdp(sharded)


def test_a_full_state_file_beside_the_shards_fails():
    from scripts.gpu_fsdp_checks import sharding_failures

    shards = ["pytorch_model_fsdp_0/__0_0.distcp", "optimizer_0/__0_0.distcp", "training_args.bin"]
    assert sharding_failures(shards) == []
    assert sharding_failures(shards + ["pytorch_model_fsdp.bin"]) == [
        "full-state files ['pytorch_model_fsdp.bin']"
    ]


# -- generation ------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_generation_check_fails_empty_answers_and_the_wrong_device(tmp_path, monkeypatch):

    from pipeline.generation import batched
    from scripts.gpu_checks import judge_generation, measure_generation

    rec = measure_generation(tmp_path / "real")
    assert judge_generation(rec, "cpu").status is Status.PASS
    row = judge_generation(rec, "cuda")
    assert row.status is Status.FAIL and "generated on cpu, cuda asked" in row.why

    def only_eos(model, tok, texts, *args):
        return [[tok.eos_token_id] for _ in texts]

    monkeypatch.setattr(batched, "_answer_batch", only_eos)
    row = judge_generation(measure_generation(tmp_path / "empty"), "cpu")
    assert row.status is Status.FAIL and "16 empty answers" in row.why


def test_generation_check_fails_when_a_batch_changes_an_answer():
    from scripts.gpu_checks import GenerationRecord, judge_generation

    rec = GenerationRecord("cuda", ["a", "b", "c"], ["a", "B", "c"], bf16_differ=3)
    row = judge_generation(rec, "cuda")
    assert row.status is Status.FAIL and "1 of 3 fp32 answers differ" in row.why
    assert judge_generation(dataclasses.replace(rec, batched=["a", "b", "c"]), "cuda").status is (
        Status.PASS
    )  # bf16 differences are counted, not judged


# -- lm-eval ---------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_lm_eval_check_scores_a_task_and_fails_without_a_score_or_off_device(tmp_path):
    from scripts.gpu_checks import judge_lm_eval, measure_lm_eval

    rec = measure_lm_eval(tmp_path)
    assert 0 <= rec.scores["openllm_arc"] <= 1 and rec.n == 8
    assert judge_lm_eval(rec, "cpu").status is Status.PASS
    row = judge_lm_eval(rec, "cuda")
    assert row.status is Status.FAIL and "lm-eval's model on cpu, cuda asked" in row.why
    row = judge_lm_eval(dataclasses.replace(rec, scores={}, n=0), "cpu")
    assert row.status is Status.FAIL and "no ARC score" in row.why


# -- the whole script on the tiny model ------------------------------------------------------------


@pytest.mark.e2e
def test_the_acceptance_script_passes_on_a_cpu_and_marks_what_needs_cuda(tmp_path):
    """CI runs it on the tiny model, so the script a GPU session runs cannot rot."""
    out = tmp_path / "gpu.md"
    done = subprocess.run(
        [sys.executable, "scripts/gpu_acceptance.py", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 7  # header + one row per check
    assert table.count("| pass |") == 5 and table.count("| needs CUDA |") == 2
    assert "FAIL" not in table and "all passed" in table
