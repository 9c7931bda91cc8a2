"""The Gaussian NEFTune variant of the paper's Table 6: entries ~ N(0, 1) * mag."""

from __future__ import annotations

import torch

from pipeline.train.noise_kinds import NoiseKind, register


@register("gaussian")
class Gaussian(NoiseKind):
    """N(0, 1) entries times `mag`; no settings of its own."""

    def sample(self, like: torch.Tensor, mag, generator, settings) -> torch.Tensor:
        return torch.zeros_like(like).normal_(0.0, 1.0, generator=generator) * mag
