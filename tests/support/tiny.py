"""A one-layer random Llama and the noise its NEFTune hook adds, for the noise tests."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

D = 64


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg)


def captured_noise(model, forward_model, **batch) -> torch.Tensor:
    """Run one forward and return what the hook added to the embeddings."""
    emb = model.get_input_embeddings()
    seen = {}

    def grab(_m, _i, out):
        seen["out"] = out.detach().clone()

    # Registered after attach_neftune, so it sees the noised output.
    h = emb.register_forward_hook(grab)
    with torch.no_grad():
        forward_model(**batch)
    h.remove()
    clean = emb.weight[batch["input_ids"]]
    return seen["out"] - clean
