"""A finetune SIGKILLed at any phase and rerun ends exactly where an uninterrupted run does.

Phases: mid-training (step 12, resumed from checkpoint-8, NEFTune noise on: the data order and
the noise RNG must be restored), while the final model is written (after trainer.train returned;
transformers would train one step past max_steps), and after trained.json (nothing to retrain).
A constant learning rate makes any extra optimiser step change the weights.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.pipeline_run import TinyRun

FAST = (  # what these runs change of the tiny stack
    "openllm=none",
    "logger=disabled",
    "head_to_head=false",
    "calibration.enabled=false",
    "finetune.lr_scheduler=constant",
)
pytestmark = pytest.mark.e2e

# Each prelude SIGKILLs the run at one phase, only in the stage whose work dir contains KILL_IN.
KILL_MID_TRAINING = """
import os, signal, transformers
_step = transformers.Trainer.training_step
def _killing_step(self, *args, **kwargs):
    if self.state.global_step >= 12 and os.environ["KILL_IN"] in self.args.output_dir:
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(self, *args, **kwargs)
transformers.Trainer.training_step = _killing_step
"""
KILL_IN_FINAL_SAVE = """
import os, signal, transformers
_save = transformers.PreTrainedModel.save_pretrained
def _killing_save(self, directory, *args, **kwargs):
    directory = os.path.abspath(directory)
    if os.path.basename(directory) == "model" and os.environ["KILL_IN"] in directory:
        with open(os.path.join(directory + ".partial-marker"), "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(self, directory, *args, **kwargs)
transformers.PreTrainedModel.save_pretrained = _killing_save
"""
KILL_AFTER_TRAINED = """
import os, shutil, signal
_rmtree = shutil.rmtree
def _killing_rmtree(path, *args, **kwargs):
    path = os.path.abspath(path)
    if os.path.basename(path) == "checkpoints" and os.environ["KILL_IN"] in path:
        os.kill(os.getpid(), signal.SIGKILL)
    return _rmtree(path, *args, **kwargs)
shutil.rmtree = _killing_rmtree
"""


def run_pipeline(store: Path, *overrides: str, prelude: str = "", kill_in: str = "finetune-"):
    """The tiny run, killed by `prelude` only in the stage whose work dir holds `kill_in`."""
    return TinyRun(store).run(*FAST, *overrides, prelude=prelude, env={"KILL_IN": kill_in})


def stages(store: Path, stage: str) -> dict[str, Path]:
    """Finished stages by key (arm name in it), partial ones left out."""
    return {
        p.name: p
        for p in sorted(store.glob(f"{stage}-*"))
        if p.is_dir() and not p.name.endswith(".partial") and (p / "COMPLETE").is_file()
    }


def ran(store: Path, *overrides: str) -> Path:
    done = run_pipeline(store, *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    return store


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """One uninterrupted run with noise: its noise-off arm is also what noise=off computes."""
    return ran(tmp_path_factory.mktemp("fresh"), "noise=uniform")


def deterministic(log_path: Path) -> list[dict]:
    """The loss log without its wall-clock fields."""
    return [
        {k: v for k, v in entry.items() if k not in ("train_runtime", "train_tokens_per_second")}
        for entry in json.loads(log_path.read_text())
    ]


def assert_same_as_uninterrupted(resumed: Path, fresh: Path) -> list[dict]:
    """Same stage keys, bit-equal weights, same loss log, train_loss and outputs; the metrics."""
    fts, fresh_fts = stages(resumed, "finetune"), stages(fresh, "finetune")
    assert fts and fts.keys() <= fresh_fts.keys()
    out = []
    for key, ft in fts.items():
        got, want = (load_file(d / "model" / "model.safetensors") for d in (ft, fresh_fts[key]))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[name], want[name]) for name in want), key
        m, m_fresh = (json.loads((d / "metrics.json").read_text()) for d in (ft, fresh_fts[key]))
        assert m["train_steps"] == m_fresh["train_steps"] == 24
        assert m["train_loss"] == m_fresh["train_loss"]
        assert m["train_tokens_seen"] == m_fresh["train_tokens_seen"]
        log, log_fresh = (deterministic(d / "loss_log.json") for d in (ft, fresh_fts[key]))
        assert [e["step"] for e in log] == list(range(2, 25, 2)) and log == log_fresh
        assert not (ft / "checkpoints").exists()
        out.append(m)
    gens, fresh_gens = stages(resumed, "generate"), stages(fresh, "generate")
    assert gens and gens.keys() <= fresh_gens.keys()
    for key, gen in gens.items():
        assert (gen / "outputs.json").read_text() == (fresh_gens[key] / "outputs.json").read_text()
    return out


def test_kill_mid_training_with_noise_resumes_bit_identical(tmp_path, fresh):
    store = tmp_path / "store"
    for done in fresh.iterdir():  # the noise-off arm's stages, reused: only the +NEFT arm trains
        if done.is_dir() and "neft" not in done.name and done.name not in ("hydra", "results"):
            shutil.copytree(done, store / done.name)
    killed = run_pipeline(
        store, "noise=uniform", prelude=KILL_MID_TRAINING, kill_in="neft-uniform5"
    )
    assert killed.returncode == -9
    (partial,) = store.glob("finetune-*neft-uniform5*.partial")
    ckpts = sorted(p.name for p in (partial / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-8"]

    resumed = ran(store, "noise=uniform")
    metrics = assert_same_as_uninterrupted(resumed, fresh)
    assert sorted(m["resumed_from_step"] for m in metrics) == [0, 8]
    assert [m["noise_alpha"] for m in metrics] == [0.0, 5.0]


def test_kill_while_writing_the_final_model_trains_no_extra_step(tmp_path, fresh):
    store = tmp_path / "store"
    killed = run_pipeline(store, "noise=off", prelude=KILL_IN_FINAL_SAVE)
    assert killed.returncode == -9
    (partial,) = store.glob("finetune-*.partial")
    assert (partial / "model.partial-marker").is_file()  # killed in save_pretrained of model/
    assert (partial / "checkpoints" / "checkpoint-24" / "trainer_state.json").is_file()
    assert not (partial / "trained.json").exists()

    resumed = ran(store, "noise=off")
    (metrics,) = assert_same_as_uninterrupted(resumed, fresh)
    assert metrics["resumed_from_step"] == 24  # the final checkpoint: loaded, not trained on


def test_kill_after_the_model_is_written_retrains_nothing(tmp_path, fresh):
    store = tmp_path / "store"
    killed = run_pipeline(store, "noise=off", prelude=KILL_AFTER_TRAINED)
    assert killed.returncode == -9
    (partial,) = store.glob("finetune-*.partial")
    trained = json.loads((partial / "trained.json").read_text())
    assert (partial / "checkpoints").is_dir()

    resumed = ran(store, "noise=off")
    (metrics,) = assert_same_as_uninterrupted(resumed, fresh)
    assert metrics == trained  # returned as written: same runtime, nothing retrained
