"""What the Trainer would otherwise do silently or late (issues 18 and 19): DataParallel on a
multi-GPU node, a QLoRA run that quietly becomes LoRA, a model kept alive on the GPU after its
stage, a damaged checkpoint, and settings that fail only inside the Trainer."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pipeline.train.ranks import last_checkpoint
from tests.support.composed import SMOKE, composed

ROOT = Path(__file__).resolve().parents[1]
TINY = (*SMOKE, "openllm=none")


def test_one_process_on_a_four_gpu_node_trains_one_gpus_batch(tmp_path):
    """Without single_device the Trainer wraps the model in DataParallel: 4x the batch."""
    code = f"""
import torch, json, sys
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 4
torch.cuda.set_device = lambda *a: None
from pipeline.config.finetune import finetune_settings
from pipeline.train.trainer_args import single_device, training_arguments
from tests.support.composed import composed
cfg = finetune_settings(composed("finetune=tiny").finetune)
args = training_arguments(cfg, [], {str(tmp_path)!r}, 1)
before = args.n_gpu
single_device(args)
print(json.dumps([before, args.n_gpu, args.train_batch_size, cfg.per_device_batch_size]))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, batch, per_device = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == 4  # what the Trainer would have used
    assert after == 1 and batch == per_device


def test_qlora_refuses_before_loading_where_it_cannot_run():
    from pipeline.stages import finetune

    cfg = composed("model=tiny", "finetune=qlora", "data=default")
    with pytest.raises(ValueError, match="bitsandbytes") as err:
        finetune.check(cfg)
    assert "quantize_4bit" in str(err.value) or "optim" in str(err.value)


def test_qlora_no_longer_accepts_auto():
    """`auto` was a silent fall back from QLoRA to LoRA: now a config error."""
    with pytest.raises(Exception, match="quantize_4bit"):
        composed("model=tiny", "finetune=lora_tiny", "finetune.lora.quantize_4bit=auto")


def test_a_paged_optimiser_without_bitsandbytes_fails_in_the_check():
    from pipeline.stages import finetune

    cfg = composed(*TINY, "finetune.optim=paged_adamw_32bit")
    with pytest.raises(ValueError, match="finetune.optim=paged_adamw_32bit.*bitsandbytes"):
        finetune.check(cfg)


@pytest.mark.parametrize(
    "override, key",
    [
        ("finetune.logging_steps=0", "finetune.logging_steps"),
        ("finetune.save_steps=0", "finetune.save_steps"),
        ("generate.limit=-1", "generate.limit"),
    ],
)
def test_settings_the_trainer_rejects_late_fail_in_the_check_naming_our_key(override, key):
    from pipeline.plan import check_all

    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_all(composed(*TINY, override))


def test_hybrid_shard_is_refused_naming_what_fsdp2_offers():
    from pipeline.train.trainer_args import check_training

    cfg = composed(
        *TINY,
        "finetune.distributed.strategy=fsdp",
        "finetune.distributed.fsdp.sharding=hybrid_shard",
    ).finetune
    with pytest.raises(ValueError, match="hybrid"):
        check_training(cfg)


def test_an_empty_local_model_directory_is_named_in_the_check(tmp_path):
    from pipeline.models.loading import validate_model

    cfg = composed("model=tiny", "model.source=local", f"model.id={tmp_path}")
    with pytest.raises(ValueError, match=f"{tmp_path}.*config.json"):
        validate_model(cfg.model)


def _checkpoint(root: Path, step: int, state: str) -> None:
    (root / f"checkpoint-{step}").mkdir(parents=True)
    (root / f"checkpoint-{step}" / "trainer_state.json").write_text(state)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_naming_the_file(tmp_path, caplog):
    _checkpoint(tmp_path, 8, json.dumps({"global_step": 8}))
    _checkpoint(tmp_path, 12, "")  # what a kill inside the Trainer's in-place write leaves
    assert last_checkpoint(tmp_path).name == "checkpoint-8"
    assert str(tmp_path / "checkpoint-12" / "trainer_state.json") in caplog.text
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_')
    assert last_checkpoint(tmp_path) is None  # nothing whole: train from the start


@pytest.mark.e2e
def test_the_stage_hands_the_gpu_back_after_an_in_process_finetune(tmp_path, monkeypatch):
    """vLLM, started after an in-process fine-tune, needs the GPU memory the model held: the
    stage frees it (no reference left, the caching allocator emptied) before it returns."""
    from pipeline.models import devices
    from pipeline.models import loading as models
    from pipeline.stages import finetune
    from pipeline.stages.contract import ArmSpec, Call, Context
    from pipeline.store.store import Store

    alive, released = [], []
    real_load = models.load_model_and_tokenizer

    def load(*args, **kwargs):
        model, tok = real_load(*args, **kwargs)
        alive.append(weakref.ref(model))
        return model, tok

    def release():
        with monkeypatch.context() as m:  # CUDA only now: the Trainer ran on the CPU
            m.setattr(torch.cuda, "is_available", lambda: True)
            m.setattr(torch.cuda, "empty_cache", lambda: released.append("empty_cache"))
            devices.release_accelerator_memory()
        released.append(all(ref() is None for ref in alive))

    monkeypatch.setattr(models, "load_model_and_tokenizer", load)
    monkeypatch.setattr(finetune, "release_accelerator_memory", release)
    cfg = composed(*TINY, f"paths.store={tmp_path}")
    arm = ArmSpec(
        "base", OmegaConf.create({"kind": "none", "alpha": 0.0, "length": "per_example"}), 42, True
    )
    gc.disable()  # only the stage's own collection may free the model's reference cycles
    try:
        finetune.run(
            cfg, Context(Store(tmp_path / "runs"), Store(tmp_path / "cache")), Call(arm, {})
        )
    finally:
        gc.enable()
    assert alive and released == ["empty_cache", True]
