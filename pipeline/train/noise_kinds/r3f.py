"""R3F: the clean loss plus lambda times the symmetric KL between a clean and a noised pass.

Aghajanyan et al., "Better Fine-Tuning by Reducing Representational Collapse", ICLR 2021
(arXiv 2008.03156), Section 3 (the R3F objective):

    L_R3F(f, g, theta) = L(theta) + lambda * KL_S(g . f(x) || g . f(x + z)),
    z ~ N(0, sigma^2 I) or z ~ U(-sigma, sigma),   KL_S(p || q) = KL(p || q) + KL(q || p),

noise z on the input embeddings, in training only. Read in the search tool's copies: the paper's
opening pages (its abstract: "parametric noise (sampling from either a normal or uniform
distribution)") and the official code, fairseq examples/rxf (rxf_src/
label_smoothed_cross_entropy_r3f.py, the generation criterion, and README.md): `--eps` (sigma,
default 1e-5: the standard deviation or the half-range), `--r3f-lambda` (default 1.0),
`--noise-type` (default normal), the symmetric KL with fp32 softmaxes, both passes
backpropagated. R4F adds spectral normalisation of a classification head g; a causal LM's
output layer is no such head, so R4F is not offered.

Here g . f is the LM's next-token distribution at each position whose target the loss counts
(labels != -100 after the shift): KL_S is summed over the vocabulary at each such position and
averaged over them exactly as the cross-entropy is (Passes.per_token: the trainer's own
normaliser, so gradient accumulation and several processes weight both terms alike). fairseq's
generation criterion instead sums KL_S over every position of a sequence, padding included, and
averages over sequences (its scale grows with the length); the per-token form keeps lambda on
the paper's per-prediction scale. z is drawn on real tokens only (padding cannot influence any
counted position: it is masked out of attention). noise.alpha and noise.length do not apply
(scaled_by_alpha = False): sigma is the scale.

Settings (the defaults): the official code's defaults, sigma 1e-5, lambda 1.0, normal noise (the
paper searches lambda in {0.1, 0.5, 1, 5}; fairseq's RTE example uses uniform noise, lambda 0.7).
Cost: two forward passes and one backward through both per batch (train_passes_per_example 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.train.noise_kinds import NoiseKind, register
from pipeline.train.response_logits import counted_positions

DISTRIBUTIONS = ("normal", "uniform")


@dataclass
class R3FSettings:
    lam: float = 1.0  # lambda: weight of the symmetric KL against the clean loss (r3f-lambda)
    sigma: float = 1e-5  # eps: the noise's standard deviation (normal) or half-range (uniform)
    distribution: str = "normal"  # normal: N(0, sigma^2) | uniform: U(-sigma, sigma) (noise-type)


def symmetric_kl(clean: torch.Tensor, noised: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p || q) + KL(q || p) of the next-token distributions p (clean logits) and q (noised),
    summed over the vocabulary and over the positions whose target the loss counts (logits at t
    predict labels at t + 1; labels -100 are not counted), in fp32. Logits of shape (N, V) are
    those positions' already (finetune.loss_logits=response computed no others)."""
    if clean.dim() == 3:
        counted = counted_positions(labels)
        clean, noised = clean[counted], noised[counted]
    p_log = F.log_softmax(clean.float(), dim=-1)
    q_log = F.log_softmax(noised.float(), dim=-1)
    return ((p_log.exp() - q_log.exp()) * (p_log - q_log)).sum()


@register("r3f")
class R3F(NoiseKind):
    """A clean and a noised pass; the clean loss plus lambda times their symmetric KL."""

    Settings = R3FSettings
    scaled_by_alpha = False  # sigma is the scale: noise.alpha/noise.length do not apply

    def check(self, settings) -> None:
        for key in ("lam", "sigma"):
            value = float(getattr(settings, key))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"noise.settings.{key}={value}: must be a finite number >= 0 "
                    "(the R3F code's defaults: lam 1.0, sigma 1e-5)"
                )
        if settings.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"noise.settings.distribution={settings.distribution!r}: use one of "
                f"{', '.join(DISTRIBUTIONS)}"
            )

    def label(self, settings) -> str:
        shape = "" if settings.distribution == "normal" else f"-{settings.distribution}"
        return f"-lambda{settings.lam:g}-sigma{settings.sigma:g}{shape}"

    def sample(self, like: torch.Tensor, mag, generator, settings) -> torch.Tensor:
        if settings.distribution == "uniform":
            return torch.zeros_like(like).uniform_(-mag, mag, generator=generator)
        return torch.zeros_like(like).normal_(0.0, 1.0, generator=generator) * mag

    def perturbation(self, embeds, neftune, tokens, generator, settings) -> torch.Tensor:
        # sigma itself on every real token (not NEFTune's alpha / sqrt(L * d)), none on padding.
        like = torch.empty(embeds.shape, dtype=torch.float32, device=embeds.device)
        z = self.sample(like, settings.sigma, generator, settings)
        if tokens is not None:
            z = z * tokens.unsqueeze(-1).to(z.dtype)
        return z.to(embeds.dtype)

    def training_loss(self, loss, settings) -> torch.Tensor:
        clean = loss.run(noised=False, logits=True)
        noised = loss.run(noised=True, logits=True)
        kl = symmetric_kl(clean.logits, noised.logits, clean.labels)
        return clean.loss + settings.lam * loss.per_token(kl).to(clean.loss.dtype)
