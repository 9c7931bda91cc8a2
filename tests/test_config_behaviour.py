"""What the default config promises, as behaviour rather than restated values (DESIGN.md, "Users
and how they call it"): `python -m pipeline.run` is a small offline study of noise against no
noise that runs on this CPU. A default changed in conf/ or the schema passes here as long as it
keeps those promises, and fails here, naming which, when it does not.

(It replaces tests/test_config.py's test_default_is_smollm_with_noise_alpha_5_and_store_under_runs,
which restated the default's model source, dtype, noise and paths.)
"""

from pipeline.cluster.downloads import config_items
from pipeline.plan import arm_specs, check_all
from pipeline.train.noise import noise_params
from tests.support.composed import composed
from tests.support.pipeline_run import planned_stages


def default(tmp_path):
    """The default config, its store (and the cache in it) under the test's tmp_path."""
    return composed(f"paths.store={tmp_path / 'store'}")


def test_the_default_downloads_nothing_it_needs(tmp_path):
    """Offline: whatever the default reads ships with the project; the only thing it may fetch
    (the judge's calibration pairs) is optional, skipped with a message where it cannot be had."""
    needed = [item for item in config_items(default(tmp_path)) if not item.optional]
    assert needed == [], f"the default run would download {needed}"
    # what this would catch: a default that reads its model from the hub
    hub = composed(f"paths.store={tmp_path / 'store'}", "model.source=hub", "model.id=org/m")
    assert [item.kind for item in config_items(hub) if not item.optional] == ["model"]


def test_the_default_compares_a_noise_off_model_with_a_noised_one(tmp_path):
    cfg = default(tmp_path)
    specs = arm_specs(cfg)
    base, treated = [s for s in specs if s.baseline], [s for s in specs if not s.baseline]
    assert len(base) == 1 and noise_params(base[0].noise)["kind"] == "none"
    assert len(treated) == 1 and noise_params(treated[0].noise)["alpha"] > 0
    assert treated[0].seed == base[0].seed  # paired: the same training seed
    # the study's result is the paired difference, with the judge's calibration beside it
    stages = planned_stages(cfg)
    assert stages.count("finetune") == 2 and stages.count("compare") == 1
    assert {"alpaca_eval", "analysis", "head_to_head", "judge_calibration"} <= set(stages)


def test_the_default_passes_its_checks_on_this_cpu(tmp_path):
    """Every stage's cheap check passes, and the precision resolves to a dtype this machine runs
    (never `auto` in a key)."""
    cfg = default(tmp_path)
    check_all(cfg)
    assert cfg.model.dtype in ("float32", "bfloat16")
