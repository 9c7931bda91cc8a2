"""LoRA and QLoRA: adapters on the base for training, merged back into plain weights after."""

from __future__ import annotations

from pathlib import Path


def with_lora(model, lora_cfg, quantized: bool):
    """`model` with LoRA adapters of finetune.lora (a 4-bit base prepared for k-bit training)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merged(peft_model, adapter_dir: Path, quantized: bool):
    """The base with the adapter merged in.

    A 4-bit base is dequantized where it is (on the GPU) and the adapter merged into that: the
    weights it was trained against (NF4 values, now in the compute dtype), not the original
    bf16 base reloaded on the host (30B: ~65 GB), and not re-quantized (lossy).
    """
    if not quantized:
        return peft_model.merge_and_unload()
    from peft import PeftModel

    base = peft_model.unload()  # the 4-bit base, adapters removed
    base = base.dequantize()  # transformers: bnb Linear4bit -> nn.Linear in the compute dtype
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
