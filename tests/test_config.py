"""Config composition through the schema: every option composes, unknown keys and wrong types
fail, --help and --cfg job work, every experiment and sweep expands to points that compose."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import pipeline.config.schema  # noqa: F401  (registers the config schema)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = [
    "model",
    "data",
    "noise",
    "finetune",
    "generate",
    "judge",
    "openllm",
    "overfit",
    "length_control",
    "experiment",
    "sweep",
    "launcher",
    "paths",
    "logger",
    "point",
    "stack",
]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in options(group):
            # points and stacks are added, not chosen by default
            prefix = "+" if group in ("point", "stack") else ""
            cfg = compose("config", overrides=[f"{prefix}{group}={option}"])
            # Resolve everything except values a user must supply (???).
            OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def test_paper_finetune_config_has_the_paper_settings():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["finetune=paper", "generate=paper"])
    ft = cfg.finetune
    assert (
        ft.learning_rate,
        ft.lr_scheduler,
        ft.warmup_ratio,
        ft.weight_decay,
        ft.max_grad_norm,
        ft.epochs,
    ) == (5e-5, "cosine", 0.03, 0.0, 1.0, 3)
    assert ft.effective_batch_size == 128 and ft.max_length == 512 and ft.bf16
    assert (cfg.generate.repetition_penalty, cfg.generate.max_total_length) == (1.2, 2048)


@pytest.mark.parametrize(
    "bad, words",
    [
        (["noise.alhpa=5"], ["alhpa"]),  # unknown key
        (["finetune.epochs=three"], ["epochs", "three"]),  # wrong type
        (["generate.batch_size=1.5"], ["batch_size"]),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types_at_composition(bad, words):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises(ConfigCompositionException) as err:
            compose("config", overrides=bad)
    text = f"{err.value} {err.value.__cause__}"
    assert all(w in text for w in words), text


@pytest.mark.parametrize(
    "text, words",
    [
        ("name: bad\ntemperature: 0     # not a judge key\n", ["temperature"]),
        ("name: bad\nboth_orders: maybe # not a bool\n", ["both_orders", "maybe"]),
    ],
)
def test_a_yaml_option_with_an_unknown_key_or_a_wrong_type_fails(tmp_path, text, words):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "judge" / "bad.yaml").write_text(text)
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises(ConfigCompositionException) as err:
            compose("config", overrides=["judge=bad"])
    message = f"{err.value} {err.value.__cause__}"
    assert all(w in message for w in words), message


def test_yaml_options_hold_only_differences_from_the_schema():
    """No group option repeats a schema default (the schema declares every key once)."""
    import yaml

    from pipeline.config import schema

    types = {
        "data": schema.DataConfig,
        "noise": schema.NoiseConfig,
        "finetune": schema.FinetuneConfig,
        "generate": schema.GenerateConfig,
        "judge": schema.JudgeConfig,
        "openllm": schema.OpenLLMConfig,
        "overfit": schema.OverfitConfig,
        "length_control": schema.LengthControlConfig,
        "paths": schema.PathsConfig,
        "logger": schema.LoggerConfig,
        "model": schema.ModelConfig,
    }
    for group, kind in types.items():
        defaults = OmegaConf.to_container(OmegaConf.structured(kind))
        for path in (CONF / group).glob("*.yaml"):
            data = yaml.safe_load(path.read_text()) or {}
            same = [
                k
                for k, v in data.items()
                if k != "defaults" and defaults.get(k, object()) == v and v != "???"
            ]
            assert not same, f"{path}: repeats schema defaults {same}"


def test_every_config_key_has_a_comment():
    key_with_value = re.compile(r"^\s*[A-Za-z_][\w.]*:\s*\S")
    for path in CONF.rglob("*.yaml"):
        lines = path.read_text().splitlines()
        assert any("python -m pipeline.run" in line for line in lines[:6]), (
            f"{path}: header shows no run command"
        )
        for line in lines:
            if key_with_value.match(line):
                assert "#" in line, f"{path}: key without a comment: {line!r}"


def test_unknown_keys_fail():
    bad = cli("noise.alhpa=5", "--cfg", "job")
    assert bad.returncode != 0 and "alhpa" in bad.stderr
    bad_group = cli("model=gpt5", "--cfg", "job")
    assert bad_group.returncode != 0 and "gpt5" in bad_group.stderr


def test_help_lists_groups_and_cfg_job_prints_config():
    help_text = cli("--help").stdout
    for group in GROUPS:
        assert f"{group}:" in help_text
    job = cli("--cfg", "job", "noise.alpha=10")
    assert job.returncode == 0
    assert OmegaConf.create(job.stdout).noise.alpha == 10


def test_negative_alpha_fails_before_any_work(tmp_path):
    result = cli("noise.alpha=-1", f"paths.store={tmp_path}")
    assert result.returncode != 0 and "noise.alpha=-1" in result.stderr
    assert not any(tmp_path.glob("finetune-*")) and not (tmp_path / "cache").exists()


def sweep_and_experiment_overrides() -> list[list[str]]:
    """Every experiment and sweep config, expanded to its points (as a SLURM array runs them)."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from sweep_points import sweep_points

    configs = [[f"experiment={e}"] for e in options("experiment")] + [
        [f"sweep={s}"] for s in options("sweep")
    ]
    return [point for overrides in configs for point in sweep_points(overrides)]


def test_every_experiment_and_sweep_point_composes():
    points = sweep_and_experiment_overrides()
    assert (
        len(points) >= 1 + 4 + 3 + 12 + 12 + 4 + 4
    )  # default, table1, table2, fig2, table6, alpha_grid, noise_variants
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overrides in points:
            cfg = compose("config", overrides=[o for o in overrides if not o.startswith("hydra.")])
            OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            assert cfg.noise.alpha >= 0 and cfg.model.name


def test_paper_table1_points_have_the_papers_alpha_per_dataset():
    from pipeline.cluster.sweep_points import experiment_point_configs

    got = {}
    for _, cfg in experiment_point_configs(["experiment=paper_table1"]):
        assert (cfg.model.id, cfg.judge.name, cfg.judge.alpaca_eval_version) == (
            "meta-llama/Llama-2-7b-hf",
            "alpaca_eval_gpt4",
            1,
        )
        assert cfg.finetune.learning_rate == 5e-5 and cfg.openllm.name == "leaderboard_v1"
        got[cfg.data.name] = cfg.noise.alpha
    assert got == {"alpaca": 5, "evol-instruct": 5, "sharegpt": 10, "open-platypus": 15}


def test_alpha_grid_has_the_baseline_and_three_alphas():
    lines = [" ".join(p) for p in sweep_and_experiment_overrides() if "sweep=alpha_grid" in p]
    assert [line.split()[-2:] for line in lines] == [["noise.kind=none", "noise.alpha=0"]] + [
        ["noise.kind=uniform", f"noise.alpha={a}"] for a in (5, 10, 15)
    ]


def test_slurm_launcher_selects_submitit_with_arrays():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config", overrides=["launcher=slurm", "sweep=alpha_grid"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.array_parallelism >= 1
    assert launcher.additional_parameters.requeue is True
