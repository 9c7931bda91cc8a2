"""The paper's NEFTune noise: entries ~ Uniform(-mag, mag)."""

from __future__ import annotations

import torch

from pipeline.train.noise_kinds import register


@register("uniform")
def uniform(like: torch.Tensor, mag, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform(-mag, mag) entries shaped like `like`."""
    # The same call as transformers' neftune hook, so equal seeds give equal noise.
    return torch.zeros_like(like).uniform_(-mag, mag, generator=generator)
