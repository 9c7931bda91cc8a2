"""Memory plan before launch: bytes per parameter, sharding, the fit rule, the advice, the table."""

import math

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.cluster.table import memory_table
from pipeline.train.memory_plan import (
    activation_gb,
    check_plan,
    finetune_plan,
    min_sharded_gpus,
    plan_memory,
)
from pipeline.train.model_size import KNOWN_PARAMS, count_params, model_params
from tests.support.composed import composed


def test_full_finetune_state_bytes_match_the_issue():
    # bf16 weights, grads and both AdamW states: 8 B/param. 13B -> 104 GB, 70B -> about 550 GB.
    assert plan_memory(13.0e9).states_gb == pytest.approx(104.0)
    assert plan_memory(69.0e9).states_gb == pytest.approx(552.0)
    # fp32 master weights, grads and Adam states: 16 B/param.
    assert plan_memory(13.0e9, precision="mixed").states_gb == pytest.approx(208.0)


def test_the_adamw_temporary_is_one_parameter_sized_tensor():
    # torch's foreach AdamW allocates sqrt(exp_avg_sq) for all parameters at the step.
    bf16 = plan_memory(6.74e9)
    assert bf16.term("AdamW temporary") == pytest.approx(13.48)
    assert bf16.per_gpu_gb == pytest.approx(6.74 * 10)  # 8 B of states + 2 B temporary
    assert plan_memory(6.74e9, precision="mixed").term("AdamW temporary") == pytest.approx(26.96)
    # Sharded with the optimiser state: a tensor of the shard.
    assert plan_memory(6.74e9, "fsdp", 4).term("AdamW temporary") == pytest.approx(13.48 / 4)


def test_ddp_keeps_a_bucket_copy_of_the_gradients():
    ddp = plan_memory(6.74e9, "ddp", 8, gpu_gb=80)
    assert ddp.term("DDP buckets") == pytest.approx(13.48)
    assert ddp.per_gpu_gb == pytest.approx(80.88) and not ddp.fits  # about 81 GB, not 54
    assert plan_memory(6.74e9, "ddp", 1).term("DDP buckets") == 0  # one process: no DDP
    assert plan_memory(6.74e9, "none", 1).term("DDP buckets") == 0
    for strategy in ("fsdp", "deepspeed_zero3"):
        sharded = plan_memory(6.74e9, strategy, 8, gpu_gb=80)
        assert sharded.states_gb == pytest.approx(6.74) and sharded.term("DDP buckets") == 0
        assert sharded.per_gpu_gb == pytest.approx(6.74 * 10 / 8)


@pytest.mark.parametrize("master, per_param", [(False, 8.0), (True, 16.0)])
def test_fsdp_fp32_master_weights_count_16_bytes_and_bf16_8(master, per_param):
    cfg = composed(
        "experiment=paper_table2",
        "+point=table2_llama2_13b",
        f"finetune.distributed.fsdp.fp32_master_weights={str(master).lower()}",
    )
    plan, kw = finetune_plan(cfg)
    assert kw["precision"] == ("mixed" if master else "bf16")
    assert plan.bytes_per_param == per_param
    assert plan.states_gb == pytest.approx(13.0 * per_param / 4)
    # fp32 master: fp32 parameters (the masters FSDP shards), grads and both states.
    assert plan.term("weights") == pytest.approx(13.0 * per_param / 4 / 4)
    assert plan.term("AdamW temporary") == pytest.approx(plan.term("weights"))
    # One process never has FSDP's masters: model states stay in the model's dtype.
    one, kw = finetune_plan(
        composed(
            "model=llama2_7b",
            "finetune=paper",
            "finetune.distributed.strategy=fsdp",
            f"finetune.distributed.fsdp.fp32_master_weights={str(master).lower()}",
        )
    )
    assert kw["precision"] == "bf16" and one.bytes_per_param == 8.0


def test_activations_are_counted_from_the_model_shape_and_batch():
    with_ckpt = activation_gb((4096, 32, 32, 32000), 4, 512, True)
    without = activation_gb((4096, 32, 32, 32000), 4, 512, False)
    assert 1 < with_ckpt < 2 < 10 < without  # checkpointing keeps only each layer's input
    assert activation_gb((4096, 32, 32, 32000), 8, 512) > with_ckpt
    plan, kw = finetune_plan(composed("model=llama2_7b", "finetune=paper"))
    assert plan.term("activations") == pytest.approx(with_ckpt) == kw["activations_gb"]


def test_refuses_a_13b_single_gpu_full_finetune_and_names_the_fix():
    plan = plan_memory(13.0e9, "none", 1, gpu_gb=80)
    assert plan.fits is False and plan.usable_gb == pytest.approx(72.0)
    with pytest.raises(ValueError) as err:
        check_plan(plan)
    assert str(err.value) == (
        "13B full fine-tune needs about 130 GB on one GPU (weights 26.0, gradients 26.0, AdamW "
        "states 52.0, AdamW temporary 26.0), more than 72 GB (90% of 80 GB, the rest kept for "
        "the CUDA context and fragmentation); set finetune.distributed.strategy=fsdp with at "
        "least 2 GPUs"
    )
    # Under fp32 master weights the same model needs twice the GPUs.
    with pytest.raises(ValueError, match="260 GB .* with at least 4 GPUs$"):
        check_plan(plan_memory(13.0e9, gpu_gb=80, precision="mixed"), precision="mixed")
    # ddp does not help: every replica holds all of it, and its buckets.
    with pytest.raises(ValueError, match="156 GB on each of 8 GPUs .*DDP buckets 26.0"):
        check_plan(plan_memory(13.0e9, "ddp", 8, gpu_gb=80))


@pytest.mark.parametrize("gpus,per_gpu", [(2, 65.0), (4, 32.5), (8, 16.25)])
def test_accepts_13b_on_fsdp(gpus, per_gpu):
    plan = check_plan(plan_memory(13.0e9, "fsdp", gpus, gpu_gb=80))
    assert plan.fits and plan.per_gpu_gb == pytest.approx(per_gpu)


def test_70b_fits_fsdp_on_two_nodes_of_eight_but_not_one():
    two_nodes = check_plan(plan_memory(69.0e9, "fsdp", 16, gpu_gb=80))
    assert two_nodes.per_gpu_gb == pytest.approx(43.125)
    with pytest.raises(ValueError) as err:
        check_plan(plan_memory(69.0e9, "fsdp", 8, gpu_gb=80), label="llama2-70b")
    assert str(err.value).startswith(
        "llama2-70b full fine-tune needs about 86 GB on each of 8 GPUs"
    )
    assert str(err.value).endswith("with at least 16 GPUs (2 nodes of 8)")


def test_smallest_fsdp_world_sizes_on_80gb():
    assert [
        min_sharded_gpus(KNOWN_PARAMS[m])
        for m in ("llama2-7b", "llama2-13b", "llama1-30b", "llama2-70b")
    ] == [1, 2, 8, 16]
    assert [
        min_sharded_gpus(KNOWN_PARAMS[m], precision="mixed")
        for m in ("llama2-7b", "llama2-13b", "llama1-30b", "llama2-70b")
    ] == [2, 4, 16, 24]
    assert min_sharded_gpus(13.0e9, gpu_gb=40) == 4  # 130 / 36 usable -> 3.6 -> 4


def test_lora_and_4bit_base():
    # QLoRA on LLaMA-1-30B (Table 3): NF4 base about 0.52 B/param + 2.4% fp32 adapters.
    plan = plan_memory(32.5e9, trainable_fraction=0.024, load_in_4bit=True, gpu_gb=80)
    assert plan.bytes_per_param == pytest.approx(0.52 + 16 * 0.024)
    assert plan.per_gpu_gb == pytest.approx(29.38 + 3.12, abs=0.01) and plan.fits  # + temporary
    bf16_base = plan_memory(32.5e9, trainable_fraction=0.024, gpu_gb=80)
    assert bf16_base.per_gpu_gb == pytest.approx(80.6, abs=0.01) and not bf16_base.fits
    with pytest.raises(ValueError, match="LoRA fine-tune needs .* at least 2 GPUs"):
        check_plan(bf16_base, trainable_fraction=0.024)
    with pytest.raises(ValueError, match="4-bit base needs LoRA"):
        plan_memory(7e9, load_in_4bit=True)


def test_unknown_gpu_memory_is_not_a_refusal():
    plan = plan_memory(69.0e9)
    assert plan.fits is None and plan.gpu_gb is None and check_plan(plan) is plan


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="finetune.distributed.strategy='zero2' is unknown"):
        plan_memory(7e9, "zero2")
    with pytest.raises(ValueError, match="strategy none runs on exactly one GPU"):
        plan_memory(7e9, "none", 4)
    with pytest.raises(ValueError, match="precision='fp8' is unknown"):
        plan_memory(7e9, precision="fp8")


def test_parameter_counts_of_configs():
    assert model_params(composed("model=llama2_13b", "generate=tiny").model) == 13.0e9
    assert model_params(composed("model=smollm2_135m", "generate=tiny").model) == 1.35e8
    tiny = composed("model=tiny", "generate=tiny").model
    a = tiny.arch
    built = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=a.vocab_size,
            hidden_size=a.hidden_size,
            intermediate_size=a.intermediate_size,
            num_hidden_layers=a.num_layers,
            num_attention_heads=a.num_heads,
            num_key_value_heads=a.num_heads,
            tie_word_embeddings=True,
        )
    )
    assert model_params(tiny) == sum(p.numel() for p in built.parameters())
    assert model_params(tiny, n_params=123) == 123.0
    # LLaMA-2-7B's config.json gives its published 6.74B.
    llama2_7b = {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    }
    assert count_params(llama2_7b) == 6_738_415_616
    # LLaMA-2-70B: grouped-query attention (8 KV heads).
    llama2_70b = {
        "vocab_size": 32000,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
    }
    assert math.isclose(count_params(llama2_70b), 68.98e9, rel_tol=1e-3)


def test_memory_table_lists_models_strategies_and_gpus():
    table = memory_table()
    lines = table.splitlines()
    assert lines[0] == (
        "| model | params | precision (B/param) | none x1 | ddp x8 | fsdp x4 "
        "| fsdp x8 | fsdp x16 | smallest fsdp on 80 GB |"
    )
    assert "| LLaMA-2-7B | 6.74B | bf16 (8) | 67.4 | 80.9 ✗ | 16.9 | 8.4 | 4.2 | 1 |" in lines
    assert "| LLaMA-2-13B | 13B | bf16 (8) | 130.0 ✗ | 156.0 ✗ | 32.5 | 16.2 | 8.1 | 2 |" in lines
    assert (
        "| LLaMA-2-70B | 69B | bf16 (8) | 690.0 ✗ | 828.0 ✗ | 172.5 ✗ | 86.2 ✗ | 43.1 | 16 |"
        in lines
    )
    assert (
        "| LLaMA-2-70B | 69B | mixed (16) | 1380.0 ✗ | 1656.0 ✗ | 345.0 ✗ | 172.5 ✗ | "
        "86.2 ✗ | 24 |" in lines
    )
    assert sum(line.startswith("| LLaMA") for line in lines) == 6


def test_a_configured_13b_single_gpu_full_finetune_is_refused_before_launch():
    from pipeline.train.memory_plan import check_finetune_memory

    cfg = composed("model=llama2_13b", "finetune=paper")
    with pytest.raises(
        ValueError,
        match=r"13B full fine-tune needs about 132 GB "
        r"on one GPU.*strategy=fsdp with at least 2 GPUs",
    ):
        check_finetune_memory(cfg)


@pytest.mark.parametrize(
    "point, world, per_gpu",
    [
        ("table2_llama2_13b", 4, 32.5),
        ("table2_llama2_70b", 16, 43.125),
        ("table2_llama2_7b_chat", 1, 67.4),
    ],
)
def test_the_paper_table2_points_carry_settings_that_fit(point, world, per_gpu):
    from pipeline.train.launch import accumulation_steps
    from pipeline.train.memory_plan import check_finetune_memory

    cfg = composed("experiment=paper_table2", f"+point={point}")
    plan = check_finetune_memory(cfg)
    assert (plan.world_size, plan.fits) == (world, True)
    assert plan.per_gpu_gb - plan.term("activations") == pytest.approx(per_gpu)
    assert 1 < plan.term("activations") < 6  # gradient checkpointing: a few GB
    batch = accumulation_steps(cfg.finetune, world) * cfg.finetune.per_device_batch_size * world
    assert batch == (64 if "70b" in point else 128)  # the paper's effective batch


def test_the_plan_is_skipped_where_no_gpu_memory_is_known():
    from pipeline.train.memory_plan import check_finetune_memory

    plan = check_finetune_memory(composed())  # the CPU default: no GPU, none configured
    assert plan.fits is None
