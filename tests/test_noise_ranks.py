"""NEFTune noise per rank: independent across ranks, reproducible per (seed, rank), and unchanged
(the same global-RNG draws as before) when no generator is given."""

import math

import pytest
import torch

from pipeline.train.noise import attach_neftune, neftune_noise, rank_generator
from tests.support.tiny import D, captured_noise, tiny_llama

MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 0, 0, 0]])


def draw(gen, kind="uniform", length="per_example"):
    return neftune_noise(torch.zeros(2, 6, D), 5.0, kind, length, MASK, None, gen)


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
@pytest.mark.parametrize("length", ["per_example", "padded"])
def test_ranks_draw_different_noise_and_a_rerun_draws_the_same(kind, length):
    rank0 = draw(rank_generator(42, 0), kind, length)
    rank1 = draw(rank_generator(42, 1), kind, length)
    again = draw(rank_generator(42, 0), kind, length)
    assert torch.equal(rank0, again)
    assert not torch.allclose(rank0, rank1)
    # Independent draws: the two ranks' eps are uncorrelated, not shifted copies of each other.
    corr = torch.corrcoef(torch.stack([rank0[0].flatten(), rank1[0].flatten()]))[0, 1]
    assert abs(corr.item()) < 0.15


def test_seed_and_rank_are_not_simply_added():
    assert not torch.equal(draw(rank_generator(1, 0)), draw(rank_generator(0, 1)))
    assert not torch.equal(draw(rank_generator(42, 0)), draw(rank_generator(43, 0)))


def test_rank_generator_is_seeded_from_a_hash_of_seed_and_rank():
    seeds = {rank_generator(42, r).initial_seed() for r in range(64)}
    assert len(seeds) == 64
    assert rank_generator(42, 3).initial_seed() == rank_generator(42, 3).initial_seed()
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_generator_leaves_the_global_rng_alone():
    # Dropout and data order draw from the global RNG: per-rank noise must not shift them.
    torch.manual_seed(7)
    expected = torch.rand(5)
    torch.manual_seed(7)
    draw(rank_generator(42, 0))
    assert torch.equal(torch.rand(5), expected)


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
@pytest.mark.parametrize("length", ["per_example", "padded"])
def test_no_generator_draws_exactly_what_it_drew_before(kind, length):
    # The pre-generator code: global-RNG draws in this exact order and shape.
    torch.manual_seed(3)
    got = draw(None, kind, length)
    torch.manual_seed(3)
    x = torch.zeros(2, 6, D)
    if length == "padded":
        mag = 5.0 / torch.sqrt(torch.tensor(6 * D))
        want = (
            torch.zeros_like(x).uniform_(-mag, mag)
            if kind == "uniform"
            else torch.zeros_like(x).normal_(0.0, 1.0) * mag
        )
    else:
        eps = (
            torch.zeros_like(x).uniform_(-1.0, 1.0)
            if kind == "uniform"
            else torch.zeros_like(x).normal_(0.0, 1.0)
        )
        lengths = torch.tensor([6.0, 3.0]).view(2, 1, 1) * MASK.unsqueeze(-1)
        want = eps * torch.where(lengths > 0, 5.0 / torch.sqrt(lengths.clamp(min=1) * D), 0.0)
    assert torch.equal(got, want)


def test_attach_neftune_with_rank_generators_in_a_model():
    def step_noise(gen):
        model = tiny_llama()
        attach_neftune(model, alpha=10.0, generator=gen)
        model.train()
        return captured_noise(model, model, input_ids=IDS, attention_mask=MASK)

    rank0, rank1 = step_noise(rank_generator(5, 0)), step_noise(rank_generator(5, 1))
    assert torch.equal(rank0, step_noise(rank_generator(5, 0)))
    assert not torch.allclose(rank0[:, :3], rank1[:, :3])
    for noise in (rank0, rank1):  # the rank's generator changes the draws, not the scale rules
        assert torch.count_nonzero(noise[1, 3:]) == 0
        assert noise[1].abs().max() <= 10.0 / math.sqrt(3 * D) + 1e-6
    # Consecutive steps of one rank draw fresh noise from the same generator.
    model = tiny_llama()
    gen = rank_generator(5, 0)
    attach_neftune(model, alpha=10.0, generator=gen)
    model.train()
    first = captured_noise(model, model, input_ids=IDS, attention_mask=MASK)
    second = captured_noise(model, model, input_ids=IDS, attention_mask=MASK)
    assert torch.equal(first, rank0) and not torch.equal(first, second)
