"""Every rule that keeps a stage key as it was when a config or a stage changed shape.

A stage key hashes exactly what its stage computes from (store/keys.py). When the config is
reorganised without changing what is computed, the stored stages must still be found: their
keys must not move. Each rule below maps today's shape back to the shape the keys were first
computed from, and says why; stages build their hashed params through these and nowhere else,
so the list of "hashed as before" exceptions is this file.

Plain data in, plain data out: the store imports nothing of the rest of the pipeline.
"""

from __future__ import annotations


def without_empty_arch(value):
    """A config (any node, nested) as keys hash it: the schema gave every model config an `arch`
    slot (only model.source=tiny fills it); a model without one, wherever it sits (the trained
    model, a local judge's), hashes as before the schema existed."""
    if isinstance(value, dict):
        return {
            k: without_empty_arch(v) for k, v in value.items() if not (k == "arch" and v is None)
        }
    return value


def finetune_params(finetune: dict, accumulation: int, launch: dict) -> dict:
    """The finetune config as finetune keys hash it.

    - The effective batch is configured (finetune.effective_batch_size) but the keys hash the
      accumulation it implies, as they did before the batch was configured over processes: one
      process with effective batch 8 and 4 per device is the 2 x 4 it always was.
    - The launch (finetune.distributed) enters only when it is more than one process (`launch`
      non-empty: its world size and sharding change data order and numerics); one process
      trains in the pipeline process whatever the strategy says, as before the launch existed.
    """
    hashed = {k: v for k, v in finetune.items() if k not in ("effective_batch_size", "distributed")}
    hashed["gradient_accumulation_steps"] = accumulation
    if launch:
        hashed["distributed"] = launch
    return hashed
