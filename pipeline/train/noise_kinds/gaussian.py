"""The Gaussian NEFTune variant of the paper's Table 6: entries ~ N(0, 1) * mag."""

from __future__ import annotations

import torch

from pipeline.train.noise_kinds import register


@register("gaussian")
def gaussian(like: torch.Tensor, mag, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, 1) entries shaped like `like`, times `mag`."""
    return torch.zeros_like(like).normal_(0.0, 1.0, generator=generator) * mag
