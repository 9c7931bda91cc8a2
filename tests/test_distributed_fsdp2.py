"""FSDP2's consolidated save (issue 14), on this CPU: two gloo ranks shard the tiny model, take
one AdamW step and save it whole; the directory loads like any model, with the weights of the
same step taken unsharded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.store.store import Store
from tests.support.composed import SMOKE, composed

ROOT = Path(__file__).resolve().parents[1]


FSDP2_SAVE = """
import sys, torch, torch.distributed as dist
from pathlib import Path
from torch.distributed.fsdp import fully_shard
from pipeline.models.loading import load_model_and_tokenizer
from pipeline.train.training import save_consolidated
base, out = sys.argv[1], Path(sys.argv[2])
dist.init_process_group("gloo")
torch.manual_seed(0)
model, tok = load_model_and_tokenizer(base, "float32")
batch = torch.randint(0, model.config.vocab_size, (2, 12))
for layer in model.model.layers:
    fully_shard(layer)
fully_shard(model)
assert type(next(model.parameters())).__name__ == "DTensor"
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
model(input_ids=batch, labels=batch).loss.backward()
opt.step()
save_consolidated(model, out, dist.get_rank() == 0)
if dist.get_rank() == 0:
    tok.save_pretrained(out)  # as the finetune stage does: the dir then loads like any model
dist.destroy_process_group()
"""


@pytest.mark.e2e
def test_fsdp2_sharded_model_is_saved_whole_and_loads_like_any_model(tmp_path):
    """Two gloo ranks shard the tiny model (FSDP2), take one AdamW step and save it consolidated:
    the weights equal the same step taken unsharded in one process."""
    from pipeline.models.loading import base_model_dir, load_model_and_tokenizer

    cfg = composed(*SMOKE)
    base = base_model_dir(cfg.model, Store(tmp_path / "cache"))
    script = tmp_path / "fsdp2_save.py"
    script.write_text(FSDP2_SAVE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--standalone",
            str(script),
            base,
            str(tmp_path / "saved"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer(base, "float32")
    batch = torch.randint(0, model.config.vocab_size, (2, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()
    saved, _ = load_model_and_tokenizer(str(tmp_path / "saved"), "float32")
    want, got = model.state_dict(), saved.state_dict()
    assert got.keys() == want.keys()
    before = load_model_and_tokenizer(base, "float32")[0].state_dict()
    assert any(not torch.equal(want[k], before[k]) for k in want), "the step changed no weight"
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
