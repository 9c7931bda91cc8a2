"""The tiny-run helper (tests/support/pipeline_run.py): the stage instances it counts for a config
are what pipeline/plan.py's walker runs, so a test's expected count follows the plan."""

from pipeline import plan
from tests.support.pipeline_run import TinyRun, planned_stages, tiny_config


def test_the_count_follows_seeds_noise_and_the_steps_enabled():
    one = planned_stages(tiny_config("calibration.enabled=false"))
    arm_steps = [s.stage for s in plan.steps_of(plan.ARM) if s.enabled(tiny_config())]
    assert one.count("finetune") == 2 and one[: len(arm_steps)] == arm_steps  # base first
    two = planned_stages(tiny_config("calibration.enabled=false", "seeds=[1,2]"))
    for stage in arm_steps + ["head_to_head"]:
        assert two.count(stage) == 2 * one.count(stage), stage  # per seed
    assert two.count("compare") == one.count("compare") == 1  # the seeds paired in one
    off = planned_stages(tiny_config("calibration.enabled=false", "noise=off"))
    assert off == arm_steps + ["train_analysis"]  # one arm: nothing to compare


def test_a_step_added_to_the_plan_is_counted(monkeypatch):
    """The count is read from plan.STEPS, not kept beside it."""
    cfg = tiny_config("calibration.enabled=false", "noise=off")
    before = planned_stages(cfg)
    extra = plan.Step("endings", plan.STEPS[0].module, (plan.ARM,))
    monkeypatch.setattr(plan, "STEPS", (*plan.STEPS, extra))
    after = planned_stages(cfg)
    assert after.count("endings") == 1 and len(after) == len(before) + 1


def test_the_run_and_its_config_name_its_own_store(tmp_path):
    run = TinyRun(tmp_path / "s", results=tmp_path / "r")
    cfg = run.config("noise=off")
    assert (cfg.paths.store, cfg.paths.results) == (str(tmp_path / "s"), str(tmp_path / "r"))
    assert cfg.model.name == "tiny-llama" and cfg.noise.kind == "none"
    assert "paths.store=" + str(tmp_path / "s") in run.code("noise=off")
