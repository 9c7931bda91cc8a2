"""The paper's NEFTune noise: entries ~ Uniform(-mag, mag)."""

from __future__ import annotations

import torch

from pipeline.train.noise_kinds import NoiseKind, register


@register("uniform")
class Uniform(NoiseKind):
    """Uniform(-mag, mag) entries; no settings of its own."""

    def sample(self, like: torch.Tensor, mag, generator, settings) -> torch.Tensor:
        # The same call as transformers' neftune hook, so equal seeds give equal noise.
        return torch.zeros_like(like).uniform_(-mag, mag, generator=generator)
