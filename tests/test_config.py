"""Config composition: every group composes, unknown keys fail, --help and --cfg job work."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = ["model", "data", "noise", "finetune", "generate", "experiment", "paths", "logger"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.run", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in options(group):
            cfg = compose("config", overrides=[f"{group}={option}"])
            # Resolve everything except values a user must supply (???).
            OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def test_default_is_smollm_with_noise_alpha_5_and_store_under_runs():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config")
    assert cfg.model.source == "gguf_package" and cfg.model.dtype == "float32"
    assert (cfg.noise.kind, cfg.noise.alpha, cfg.noise.length) == ("uniform", 5.0, "per_example")
    assert cfg.paths.store == "runs" and cfg.experiment.name == "default"


def test_paper_finetune_config_has_the_paper_settings():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["finetune=paper", "generate=paper"])
    ft = cfg.finetune
    assert (ft.learning_rate, ft.lr_scheduler, ft.warmup_ratio, ft.weight_decay, ft.max_grad_norm, ft.epochs) == (
        5e-5, "cosine", 0.03, 0.0, 1.0, 3)
    assert ft.per_device_batch_size * ft.gradient_accumulation_steps == 128 and ft.max_length == 512 and ft.bf16
    assert (cfg.generate.repetition_penalty, cfg.generate.max_total_length) == (1.2, 2048)


def test_every_config_key_has_a_comment():
    key_with_value = re.compile(r"^\s*[A-Za-z_][\w.]*:\s*\S")
    for path in CONF.rglob("*.yaml"):
        lines = path.read_text().splitlines()
        assert any("python -m pipeline.run" in line for line in lines[:6]), f"{path}: header shows no run command"
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
