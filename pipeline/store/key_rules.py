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


def finetune_params(finetune: dict, accumulation: int, launch: dict, model_dtype: str) -> dict:
    """The finetune config as finetune keys hash it.

    - The effective batch is configured (finetune.effective_batch_size) but the keys hash the
      accumulation it implies, as they did before the batch was configured over processes: one
      process with effective batch 8 and 4 per device is the 2 x 4 it always was.
    - The launch (finetune.distributed) enters only when it is more than one process (`launch`
      non-empty: its world size and sharding change data order and numerics); one process
      trains in the pipeline process whatever the strategy says, as before the launch existed.
    - The weights' training dtype (finetune.weights_dtype, resolved) enters only where it is not
      model.dtype: the only case before the key existed (fp32 masters on a bf16 CPU are new).
    - Which logits the loss computes (finetune.loss_logits, resolved) enters only where it is
      `response`: every key before it computed them all.
    """
    leave_out = ("effective_batch_size", "distributed")
    if finetune.get("weights_dtype") == model_dtype:
        leave_out += ("weights_dtype",)
    if finetune.get("loss_logits", "all") == "all":
        leave_out += ("loss_logits",)
    hashed = {k: v for k, v in finetune.items() if k not in leave_out}
    hashed["gradient_accumulation_steps"] = accumulation
    if launch:
        hashed["distributed"] = launch
    return hashed


def noise_setting_params(shared: dict, settings: dict) -> dict:
    """A noise setting as finetune keys hash it, from {kind, alpha, length} and its kind's typed
    settings: a kind without settings of its own (uniform, gaussian) hashes {kind, alpha,
    length} as before kinds carried settings, so every finetune stored before is still found; a
    kind with settings adds them, so that they split its keys."""
    return shared | {"settings": settings} if settings else shared


# Every field the flat JudgeConfig had before kinds declared their own settings, with its default
# then; api_key_env per kind: the local judges' YAMLs set it null, the rest kept the schema's
# OPENAI_API_KEY (openai_compatible's is its own setting now).
FLAT_JUDGE_FIELDS = {
    "batch_size": 1,
    "max_prompt_tokens": 0,
    "base_url": None,
    "served_model": None,
    "api_key_env": "OPENAI_API_KEY",
    "model": None,
}
FLAT_JUDGE_KINDS = {"local": {"api_key_env": None}, "openai": {}, "openai_compatible": {}}


def judge_params(shared: dict, settings: dict) -> dict:
    """A judge as its stage keys hash it, from its shared fields and its kind's typed settings:
    the kinds that existed before kinds had settings of their own (local, openai,
    openai_compatible) hash the flat JudgeConfig of then, every field of every kind at its value
    or its default then, so that every judge stage stored before is still found. Any other kind
    hashes its shared fields and its settings as they are."""
    then = FLAT_JUDGE_KINDS.get(shared["kind"])
    if then is None:
        return shared | {"settings": settings}
    return shared | FLAT_JUDGE_FIELDS | then | settings


def engine_params(name: str, settings: dict) -> dict:
    """A generation engine as the generate key hashes it: its settings under the engine's own
    name, as generate.<name> held them before engines declared their own settings
    (generate.settings now), so that every generate stage stored before is still found."""
    return {"engine": name, name: settings}


def device_params(device: str) -> dict:
    """The device an inference stage ran on, as its key hashes it: nothing on the CPU (keys
    computed before devices were recorded are still found), the device elsewhere (a GPU's
    numerics can flip a close verdict or a greedy token)."""
    return {} if device == "cpu" else {"device": device}


def hf_engine_params(device: str) -> dict:
    """The hf engine in the generate key: no engine name and no settings, as before engines
    existed (it was the only way to generate), and its device where not the CPU."""
    return device_params(device)


def generate_params(params: dict, dtype: str, device: str) -> dict:
    """The generate config as generate keys hash it: generate.batch_size only where it can
    change an answer. In fp32 on a CPU an answer is the same alone and in any batch (left
    padding masked and penalised nowhere: tests/test_gpu_path_batching.py), so the batch is a
    speed setting and leaves the key (which it was part of before: those generate stages are
    computed once more, with the same answers); in bf16, or on a GPU whose kernels change with
    the shape, a product's rounding depends on the batch and so may a greedy token."""
    if dtype == "float32" and device == "cpu":
        return {k: v for k, v in params.items() if k != "batch_size"}
    return params
