"""Kind settings (issue 29): the stage keys of the default and of a config of every other shipped
kind are the ones computed before kinds had settings of their own, so every stored stage is
still found; the shared schema holds no field of one kind."""

from dataclasses import fields

import pytest

from pipeline.config.schema import GenerateConfig, JudgeConfig, NoiseConfig
from pipeline.generation import engines
from pipeline.judging import kinds as judge_kinds
from pipeline.judging.judges import judge_key_params
from pipeline.models import devices
from pipeline.plan import arm_specs
from pipeline.stages import alpaca_eval_stage, finetune, generate, judge_calibration
from pipeline.store.store import stage_key
from pipeline.train import noise_kinds
from tests.support.composed import composed

# Computed by this test against the code before issue 29 (judge.model, judge.batch_size,
# judge.base_url, generate.vllm.* flat in the schema; the overrides then named those keys):
# stores filled then must still be found.
KEYS_BEFORE_KIND_SETTINGS = {
    "default": {
        "finetune base": "finetune-smollm2-135m_default_base-27fee4388980",
        "finetune neft-uniform5": "finetune-smollm2-135m_default_neft-uniform5-77e1128fd186",
        "generate": "generate-g-37ed32852b14",
        "alpaca_eval": "alpaca_eval-a-0f6ffd6acacc",
        "judge_calibration": "judge_calibration-c-5b78211cc9bc",
    },
    "other kinds": {
        "finetune base": "finetune-smollm2-135m_default_base-27fee4388980",
        "finetune neft-gaussian5": "finetune-smollm2-135m_default_neft-gaussian5-b3051b7a96ee",
        "generate": "generate-g-7514ea4e8f90",
        "alpaca_eval": "alpaca_eval-a-56550007b301",
        "judge_calibration": "judge_calibration-c-e08412ad9b48",
    },
    "smoke": {
        "finetune base": "finetune-tiny-llama_default_base-9b45a5206426",
        "finetune neft-uniform5": "finetune-tiny-llama_default_neft-uniform5-ee0819dab874",
        "generate": "generate-g-ef6659da76a4",
        "alpaca_eval": "alpaca_eval-a-4761d3f8f092",
        "judge_calibration": "judge_calibration-c-3b3210a514d4",
    },
    "openai judge": {
        "finetune base": "finetune-smollm2-135m_default_base-27fee4388980",
        "finetune neft-uniform5": "finetune-smollm2-135m_default_neft-uniform5-77e1128fd186",
        "generate": "generate-g-37ed32852b14",
        "alpaca_eval": "alpaca_eval-a-2d40670f018e",
        "judge_calibration": "judge_calibration-c-fa4b428ef28d",
    },
}
OVERRIDES = {
    "default": (),
    "other kinds": (
        "judge=openai_compatible",
        "judge.settings.base_url=http://judge-node:8000/v1",
        "judge.settings.served_model=Llama-3-70B-Instruct",
        "noise=gaussian",
        "generate.engine=vllm",
        "generate.settings.python=/venvs/vllm/bin/python",
        "generate.settings.tensor_parallel_size=2",
    ),
    "smoke": ("+stack=smoke",),  # judge=local_tiny
    "openai judge": ("judge=weighted_alpaca_eval_gpt4_turbo",),
}
REFERENCE = "0123456789abcdef"  # the reference file's content hash (an input of alpaca_eval)
PAIRS = "fedcba9876543210"  # the calibration files' digest (judge_calibration's input)


def stage_keys(cfg) -> dict:
    """The finetune key of each arm, and the generate, alpaca_eval and judge_calibration keys
    downstream of the noised arm, as the stages compute them (inputs fixed where they are
    files)."""
    # As check_all does before any key, on a CPU without native bf16 (the machine these keys
    # were computed on; where bf16 is native the default's precision, and so its keys, differ:
    # tests/test_precision.py).
    devices.resolve_precision(cfg, "cpu", bf16=False)
    keys = {}
    for arm in arm_specs(cfg):
        keys[f"finetune {arm.name}"] = finetune.key_of(cfg, arm)
    tuned = keys[f"finetune {arm.name}"]
    params = generate.generate_params(cfg.generate, cfg.model.dtype)
    keys["generate"] = stage_key("generate", "g", params, [tuned], generate.VERSION)
    judge = judge_key_params(cfg.judge)
    keys["alpaca_eval"] = stage_key(
        "alpaca_eval", "a", judge, [keys["generate"], REFERENCE], alpaca_eval_stage.VERSION
    )
    calibration = judge | {"n_pairs": 40, "seed": 0, "resamples": 2000, "pairs": PAIRS}
    keys["judge_calibration"] = stage_key(
        "judge_calibration", "c", calibration, [PAIRS], judge_calibration.VERSION
    )
    return keys


@pytest.mark.parametrize("name", list(OVERRIDES))
def test_stage_keys_are_the_ones_computed_before_kind_settings(name, monkeypatch):
    # Later, the batch size left the fp32 generate key on a CPU (a speed setting there, which
    # moved those keys once: tests/test_precision.py); what is held here is that kinds carrying
    # their own settings moved no key, so the generate params are taken with the batch, as then.
    from pipeline.store import key_rules

    monkeypatch.setattr(key_rules, "generate_params", lambda params, dtype, device: params)
    cfg = composed(*OVERRIDES[name])
    if name != "smoke":  # generate=cpu generated 10 prompts per batch then (50 since issue 30)
        cfg.generate.batch_size = 10
    keys = stage_keys(cfg)
    assert keys == KEYS_BEFORE_KIND_SETTINGS[name]


@pytest.mark.parametrize(
    "schema, registry",
    [
        (JudgeConfig, judge_kinds.REGISTRY),
        (NoiseConfig, noise_kinds.REGISTRY),
        (GenerateConfig, engines.ENGINES),
    ],
)
def test_the_shared_schema_holds_no_field_of_one_kind(schema, registry):
    """Before issue 29, JudgeConfig held local's model, batch_size and max_prompt_tokens and
    openai_compatible's base_url, served_model and api_key_env; GenerateConfig held `vllm`."""
    shared = {f.name for f in fields(schema)}
    assert "settings" in shared
    for name in registry.names():
        own = {f.name for f in fields(registry.settings_type(name))}
        assert not own & shared, (name, own & shared)
        assert name not in shared  # no section named after a kind (generate.vllm was one)
    if schema is JudgeConfig:
        assert shared == {
            "name",
            "kind",
            "annotator",
            "alpaca_eval_version",
            "both_orders",
            "lc_data",
            "settings",
        }
