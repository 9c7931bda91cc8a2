"""NEFTune noise: scale, padding, eval mode, per_example vs padded, agreement with transformers'
hook."""

import math

import pytest
import torch
from transformers.integrations.neftune import neftune_post_forward_hook

from pipeline.train.noise import attach_neftune, neftune_noise, token_lengths, validate_noise
from tests.support.tiny import D, captured_noise, tiny_llama


def test_noise_norm_is_alpha_over_sqrt3():
    torch.manual_seed(1)
    alpha, n, length = 5.0, 4000, 37
    x = torch.zeros(n, length, D)
    noise = neftune_noise(
        x, alpha, "uniform", "per_example", torch.ones(n, length, dtype=torch.long)
    )
    norms = noise.flatten(1).norm(dim=1)
    # ||noise||^2 = alpha^2/(L d) * sum U^2, E[U^2] = 1/3 -> E||noise||^2 = alpha^2/3.
    assert math.isclose(norms.pow(2).mean().item(), alpha**2 / 3, rel_tol=0.01)
    assert math.isclose(norms.mean().item(), alpha / math.sqrt(3), rel_tol=0.01)


def test_gaussian_norm_is_alpha():
    torch.manual_seed(2)
    noise = neftune_noise(
        torch.zeros(3000, 20, D),
        5.0,
        "gaussian",
        "per_example",
        torch.ones(3000, 20, dtype=torch.long),
    )
    assert math.isclose(noise.flatten(1).norm(dim=1).pow(2).mean().item(), 25.0, rel_tol=0.01)


def test_padding_gets_exactly_zero_noise_and_real_tokens_are_scaled_by_their_length():
    model = tiny_llama()
    attach_neftune(model, alpha=10.0)
    model.train()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    noise = captured_noise(model, model, input_ids=ids, attention_mask=mask)
    assert torch.count_nonzero(noise[1, 3:]) == 0
    assert torch.all(noise[1, :3] != 0)
    # Uniform(-m, m) with m = alpha / sqrt(L_i d): bounded by each row's own magnitude.
    assert noise[0].abs().max() <= 10.0 / math.sqrt(6 * D) + 1e-6
    assert noise[1].abs().max() <= 10.0 / math.sqrt(3 * D) + 1e-6
    assert noise[1].abs().max() > 10.0 / math.sqrt(
        6 * D
    )  # would be impossible with the padded length


def test_no_noise_in_eval_mode():
    model = tiny_llama()
    attach_neftune(model, alpha=15.0)
    model.eval()
    ids = torch.tensor([[5, 6, 7]])
    noise = captured_noise(model, model, input_ids=ids, attention_mask=torch.ones_like(ids))
    assert torch.count_nonzero(noise) == 0


def test_remove_detaches_the_hook():
    model = tiny_llama()
    handle = attach_neftune(model, alpha=15.0)
    handle.remove()
    model.train()
    ids = torch.tensor([[5, 6, 7]])
    assert (
        torch.count_nonzero(
            captured_noise(model, model, input_ids=ids, attention_mask=torch.ones_like(ids))
        )
        == 0
    )


def test_per_example_and_padded_differ_by_sqrt_length_ratio():
    x = torch.zeros(2, 8, D)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    torch.manual_seed(3)
    padded = neftune_noise(x, 5.0, "uniform", "padded", mask)
    torch.manual_seed(3)
    per_ex = neftune_noise(x, 5.0, "uniform", "per_example", mask)
    torch.testing.assert_close(per_ex[0], padded[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        per_ex[1, :5], padded[1, :5] * math.sqrt(8 / 5), rtol=1e-5, atol=1e-7
    )
    assert torch.count_nonzero(per_ex[1, 5:]) == 0 and torch.count_nonzero(padded[1, 5:]) == 3 * D


def test_padded_matches_transformers_hook_under_same_seed():
    ours, theirs = tiny_llama(), tiny_llama()
    attach_neftune(ours, alpha=5.0, length="padded")
    emb = theirs.get_input_embeddings()
    emb.neftune_noise_alpha = 5.0
    emb.register_forward_hook(neftune_post_forward_hook)
    ours.train(), theirs.train()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    torch.manual_seed(123)
    a = captured_noise(ours, ours, input_ids=ids, attention_mask=mask)
    torch.manual_seed(123)
    b = captured_noise(theirs, theirs, input_ids=ids, attention_mask=mask)
    assert torch.count_nonzero(a) == a.numel()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_packed_segments_use_their_own_length():
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 0, 1]])
    mask = torch.ones_like(pos)
    assert token_lengths(mask, pos).tolist() == [[4, 4, 4, 4, 2, 2, 2, 2]]
    torch.manual_seed(4)
    packed = neftune_noise(torch.zeros(1, 8, D), 5.0, "uniform", "per_example", mask, pos)
    torch.manual_seed(4)
    whole = neftune_noise(torch.zeros(1, 8, D), 5.0, "uniform", "per_example", mask)
    torch.testing.assert_close(packed[0, :4], whole[0, :4] * math.sqrt(8 / 4), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(packed[0, 4:], whole[0, 4:] * math.sqrt(8 / 2), rtol=1e-5, atol=1e-7)


def test_hook_reads_position_ids_for_packed_batches():
    model = tiny_llama()
    attach_neftune(model, alpha=5.0)
    model.train()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    torch.manual_seed(5)
    noise = captured_noise(model, model, input_ids=ids, position_ids=pos)
    torch.manual_seed(5)
    expected = neftune_noise(
        torch.zeros(1, 6, D), 5.0, "uniform", "per_example", torch.ones_like(ids), pos
    )
    torch.testing.assert_close(noise, expected, rtol=1e-5, atol=1e-6)


def test_works_through_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    attach_neftune(peft_model, alpha=10.0)
    peft_model.train()
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    noise = captured_noise(peft_model, peft_model, input_ids=ids, attention_mask=mask)
    assert torch.count_nonzero(noise[1, 2:]) == 0
    assert torch.all(noise[0] != 0)
    assert noise[1].abs().max() <= 10.0 / math.sqrt(2 * D) + 1e-6


def test_alpha_zero_is_no_noise():
    assert (
        torch.count_nonzero(
            neftune_noise(torch.zeros(2, 3, D), 0.0, "uniform", "per_example", torch.ones(2, 3))
        )
        == 0
    )


@pytest.mark.parametrize(
    "kind,alpha,length,match",
    [
        ("uniform", -1.0, "per_example", "alpha"),
        ("laplace", 5.0, "per_example", "kind"),
        ("uniform", 5.0, "batch", "length"),
        ("uniform", float("nan"), "per_example", "finite"),
        ("uniform", float("inf"), "per_example", "finite"),
        ("uniform", True, "per_example", "alpha"),
    ],
)
def test_bad_noise_config_is_rejected(kind, alpha, length, match):
    with pytest.raises(ValueError, match=match):
        validate_noise(kind, alpha, length)


def test_bf16_scale_is_computed_in_fp32_so_lengths_above_256_are_not_rounded():
    # Issue 18, item 14: bf16 rounds 257 to 256; the scale must follow the real length.
    dim, alpha = 64, 5.0
    for seq_len in (257, 258):
        embeds = torch.zeros(1, seq_len, dim, dtype=torch.bfloat16)
        mask = torch.ones(1, seq_len, dtype=torch.long)
        gen = torch.Generator().manual_seed(0)
        noise = neftune_noise(embeds, alpha, "uniform", "per_example", mask, None, gen)
        again = torch.Generator().manual_seed(0)
        eps = torch.zeros_like(embeds).uniform_(-1.0, 1.0, generator=again)
        assert noise.dtype == torch.bfloat16
        measured = noise.float().abs().sum() / eps.float().abs().sum()
        want = alpha / math.sqrt(seq_len * dim)
        assert abs(measured.item() / want - 1) < 5e-4, seq_len


@pytest.fixture
def hooked_kind():
    """A kind using the hook points beyond `sample` (NoisyTune's weights, R3F's two passes)."""
    from pipeline.train.noise_kinds import KINDS, NoiseKind, register

    class Hooked(NoiseKind):
        def sample(self, like, mag, generator, settings):
            return torch.ones_like(like) * mag

        def before_training(self, model, settings, generator):
            with torch.no_grad():  # NoisyTune: a one-off perturbation of the pretrained weights
                model.get_input_embeddings().weight.add_(1.0)

        def training_loss(self, loss, settings):
            return loss(False) + loss(True)  # R3F: a clean and a noised pass

    register("hooked")(Hooked)
    yield
    KINDS.pop("hooked")


def test_a_kind_reaches_every_hook_point_through_the_handle(hooked_kind):
    model = tiny_llama()
    before = model.get_input_embeddings().weight.detach().clone()
    handle = attach_neftune(model, alpha=5.0, kind="hooked")
    assert torch.equal(model.get_input_embeddings().weight, before + 1.0)
    model.train()
    ids = torch.tensor([[5, 6, 7]])
    added = []

    def forward():
        noise = captured_noise(model, model, input_ids=ids, attention_mask=torch.ones_like(ids))
        added.append(noise)
        return noise.sum()

    handle.training_loss(forward)
    assert torch.count_nonzero(added[0]) == 0  # the clean pass
    assert torch.allclose(added[1], torch.full_like(added[1], 5.0 / math.sqrt(3 * D)))
    assert handle.noised  # back on after the kind's passes
    # Uniform keeps NEFTune's default: one noised pass, nothing done to the weights.
    plain = tiny_llama()
    weights = plain.get_input_embeddings().weight.detach().clone()
    handle = attach_neftune(plain, alpha=5.0)
    assert torch.equal(plain.get_input_embeddings().weight, weights)
    calls = []
    handle.training_loss(lambda: calls.append(handle.noised) or torch.tensor(0.0))
    assert calls == [True]
