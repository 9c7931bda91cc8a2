"""Precision by capability (pipeline/models/devices.py): where bf16 is native, the default
trains under bf16 autocast over fp32 weights and infers in bf16; elsewhere fp32, with the stage
keys of before. Keys name the resolved precision, never `auto`."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.models.devices import resolve_precision
from pipeline.stages import finetune
from pipeline.store.store import Store
from tests.support.composed import SMOKE, composed


@pytest.mark.parametrize(
    "device,native,dtype,mixed,weights",
    [
        ("cpu", True, "bfloat16", True, "float32"),  # autocast over fp32 weights and AdamW
        ("cpu", False, "float32", False, "float32"),  # as before: fp32 throughout
        ("cuda", True, "bfloat16", True, "bfloat16"),  # the paper's pure bf16 on a GPU
    ],
)
def test_the_default_resolves_its_precision_by_the_hardware(device, native, dtype, mixed, weights):
    cfg = composed()
    assert cfg.model.dtype == "auto" and cfg.finetune.bf16 is True  # nothing pinned
    resolve_precision(cfg, device, bf16=native)
    assert cfg.model.dtype == dtype
    assert (cfg.finetune.bf16, str(cfg.finetune.weights_dtype)) == (mixed, weights)
    assert cfg.judge.settings.model.dtype == dtype  # the local judge infers in the same


def _finetune_key(*overrides, device="cpu", native=False):
    cfg = composed(*overrides)
    resolve_precision(cfg, device, bf16=native)
    from pipeline.plan import arm_specs

    spec = arm_specs(cfg)[0]
    return finetune.key_of(cfg, spec)


def test_fp32_machines_keep_the_finetune_keys_of_before():
    """Where bf16 is not native the default resolves to what it pinned before (fp32, bf16
    mixed precision off), and its finetune key is the one computed then."""
    before = _finetune_key("model.dtype=float32", "finetune.bf16=false")
    assert _finetune_key() == before


def test_fp32_weights_under_autocast_enter_the_finetune_key():
    """On a bf16 CPU the weights train in fp32 under autocast: another computation than the
    GPU's pure bf16 of the same config, so its key differs; where the weights train in
    model.dtype the key holds no weights_dtype (as every key before it)."""
    cpu_bf16 = _finetune_key(native=True)
    pure = _finetune_key("finetune.weights_dtype=bfloat16", native=True)
    assert cpu_bf16 != pure


def test_a_bf16_mixed_finetune_on_a_cpu_trains_fp32_weights_and_saves_bf16(tmp_path):
    """The tiny model under bf16 autocast on this CPU (emulated where bf16 is not native: slow
    but the same arithmetic): the Trainer sees fp32 parameters, the loss is finite, and the
    weights written for inference are bf16."""
    cfg = composed(*SMOKE, "model.dtype=bfloat16", "finetune.bf16=true", "finetune.max_steps=2")
    resolve_precision(cfg, "cpu", bf16=True)
    assert str(cfg.finetune.weights_dtype) == "float32"
    seen = {}
    from pipeline.train import training

    real = training.training_arguments

    def spy(ft, *args, **kwargs):
        args_ = real(ft, *args, **kwargs)
        seen["bf16"] = args_.bf16
        return args_

    training.training_arguments = spy
    try:
        store = Store(tmp_path / "store")
        train_cfg = OmegaConf.merge(cfg.finetune, {"seed": 0})
        noise = OmegaConf.create({"kind": "none", "alpha": 0.0, "length": "per_example"})
        result = finetune.finetune(cfg.model, cfg.data, noise, train_cfg, store, store, [])
    finally:
        training.training_arguments = real
    assert seen["bf16"] is True
    assert result.metrics["train_loss"] == result.metrics["train_loss"]  # not NaN
    index = json.loads((result.path / "model" / "config.json").read_text())
    assert index["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(next((result.path / "model").glob("*.safetensors"))), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def _generate_params(*overrides, device="cpu", native=False, monkeypatch=None):
    from pipeline.stages import generate

    cfg = composed(*overrides)
    resolve_precision(cfg, device, bf16=native)
    return generate.generate_params(cfg.generate, cfg.model.dtype)


def test_the_batch_size_moves_no_fp32_generate_key_but_a_bf16_one():
    """In fp32 on a CPU an answer is the same in any batch, so generate.batch_size is a speed
    setting and not in the key; in bf16 the rounding, and so a greedy token, may depend on it."""
    fp32 = [_generate_params(f"generate.batch_size={b}") for b in (10, 50)]
    assert fp32[0] == fp32[1] and "batch_size" not in fp32[0]
    bf16 = [_generate_params(f"generate.batch_size={b}", native=True) for b in (10, 50)]
    assert bf16[0] != bf16[1] and bf16[0]["dtype"] == "bfloat16"


def _as_hydra_composes(*overrides: str):
    """The config as Hydra hands it to the app: each kind's settings not yet typed (a judge
    model's dtype absent, left to the model schema's default)."""
    from hydra import compose, initialize_config_dir

    from tests.support.composed import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("gpus", [1, 0])
def test_the_dry_run_resolves_the_default_judge_models_dtype_as_the_job_will(gpus):
    """The dry run sizes a job before check_all has typed the kinds' settings: it read the local
    judge's model dtype from the untyped settings and failed (Missing key dtype)."""
    from pipeline.cluster.jobs import ClusterOptions, point_job

    cfg = _as_hydra_composes()
    assert "dtype" not in cfg.judge.settings.model  # as composed: the schema's default applies
    job = point_job(0, [], cfg, ClusterOptions(gpus_per_node=gpus))
    assert job.ok, job.problems
    assert job.resources.gpus_per_node == gpus


def test_the_dry_run_names_a_judge_setting_that_is_not_the_kinds():
    from pipeline.cluster.jobs import ClusterOptions, point_job

    cfg = _as_hydra_composes("judge.settings.batchsize=8")
    with pytest.raises(ValueError, match="batchsize"):
        point_job(0, [], cfg, ClusterOptions())
