"""A local Hugging Face causal LM as alpaca_eval's `fn_completions`: it answers "Output (a)" or
"Output (b)" by comparing its next-token logits (judge.settings.model, e.g.
SmolLM2-135M-Instruct)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING, OmegaConf

from pipeline.config.schema import ModelConfig
from pipeline.data.loading import ASSETS
from pipeline.judging.alpaca_import import JudgeError
from pipeline.judging.kinds import JudgeKind, register
from pipeline.models.devices import compute_device, inference_placement, resolve_dtype
from pipeline.models.loading import DTYPES, base_model_dir, validate_model
from pipeline.store.key_rules import device_params

ANNOTATORS_DIR = ASSETS / "annotators"


@dataclass
class LocalSettings:
    """judge.settings of judge.kind=local."""

    model: ModelConfig = MISSING  # the judge model, a model config (YAML: /model@settings.model)
    batch_size: int = 4  # pairs per judge forward pass (>= 1)
    max_prompt_tokens: int = 1024  # judge prompts are cut from the left beyond this many tokens


@register("local")
class LocalJudge(JudgeKind):
    """judge.settings.model on this process's device; annotator configs in
    pipeline/assets/annotators/."""

    Settings = LocalSettings

    def validate(self, judge_cfg) -> None:
        settings = self.settings(judge_cfg)
        if settings.batch_size < 1:
            raise JudgeError(
                f"judge.settings.batch_size={settings.batch_size}: pairs per local judge "
                "forward pass, must be >= 1"
            )
        if settings.max_prompt_tokens < 1:
            raise JudgeError(
                f"judge.settings.max_prompt_tokens={settings.max_prompt_tokens}: must be >= 1 "
                "(the judge's prompts are cut from the left beyond this many tokens)"
            )
        if OmegaConf.is_missing(settings, "model"):
            raise JudgeError(
                f"judge={judge_cfg.name}: judge.settings.model is not set; name the judge "
                "model in the judge YAML's defaults list (- /model@settings.model: smollm2_135m)"
            )
        validate_model(settings.model)
        if settings.model.dtype == "auto":
            # resolve_precision resolves it before any key, as it does model.dtype, where it
            # looks for the judge's model at judge.settings.model; a config it did not reach
            # resolves here, on this process's hardware, before any key is computed.
            settings.model.dtype = resolve_dtype(settings.model.dtype)

    def annotator_args(self, judge_cfg, work: Path, cache, fn_completions) -> tuple[Path, dict]:
        if fn_completions is None:
            settings = self.settings(judge_cfg)
            fn_completions = local_judge_completions(
                base_model_dir(settings.model, cache),
                settings.model.dtype,
                settings.batch_size,
                settings.max_prompt_tokens,
            )
        config = ANNOTATORS_DIR / judge_cfg.annotator / "configs.yaml"
        return config, {"fn_completions": fn_completions}

    def model(self, judge_cfg):
        return self.settings(judge_cfg).model

    def key_params(self, judge_cfg) -> dict:
        # A GPU's numerics can flip a close verdict: its device enters the key where not the CPU.
        return device_params(compute_device())


def local_judge_completions(model_dir: str, dtype: str, batch_size: int, max_prompt_tokens: int):
    """An alpaca_eval `fn_completions`: a local causal LM picks "Output (a)" or "(b)" by logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side, tok.truncation_side = "left", "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    device = compute_device()  # the one place that decides (pipeline/models/devices.py)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=DTYPES[dtype], **inference_placement(device)
    ).eval()
    ids = [tok.encode(c, add_special_tokens=False)[-1] for c in ("a", "b")]
    if ids[0] == ids[1]:
        raise JudgeError(f"judge tokenizer of {model_dir} cannot tell 'a' from 'b'")

    def completions(prompts: list[str], **_decoding) -> dict:
        out: list[str | None] = [None] * len(prompts)
        # similar lengths share a batch
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tok(
                [prompts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_prompt_tokens,
            ).to(model.device)
            with torch.inference_mode():
                # only the last position is needed
                logits = model(**batch, logits_to_keep=1).logits[:, -1, ids]
            for i, (a, b) in zip(idx, logits.tolist()):
                out[i] = "Output (a)" if a >= b else "Output (b)"
        return {"completions": out}

    return completions
