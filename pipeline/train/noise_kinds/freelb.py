"""FreeLB: K projected ascent steps on an embedding perturbation, from NEFTune's initial one.

Zhu et al., "FreeLB: Enhanced Adversarial Training for Natural Language Understanding", ICLR
2020 (arXiv 1909.11764), Algorithm 1, as its official code runs it (zhuchen03/FreeLB,
huggingface-transformers/examples/run_glue_freelb.py, the "Code for adversarial training" block;
read in the search tool's code index, commit 2100e74):

    delta_0 = U(-1, 1) * mask * adv_init_mag / sqrt(L_i * d)       (per example, l2 norm type)
    for t = 1 .. adv_steps:
        loss_t = L(f(X + delta_{t-1}), y) / adv_steps;  loss_t.backward()   (theta's grads add up)
        if t == adv_steps: break
        g = grad of loss_t w.r.t. delta_{t-1}
        delta_t = delta_{t-1} + adv_lr * g / ||g||_F                    (||.||_F per example)
        if adv_max_norm > 0: delta_t *= min(1, adv_max_norm / ||delta_t||_F)   (per example)
    theta <- optimiser step on the accumulated gradient

The initial perturbation is NEFTune's uniform noise exactly (NEFTune's own code is this init
with one pass: adv_steps = 1), so noise.alpha is FreeLB's adv_init_mag and this kind's `steps`
K = adv_steps - 1 counts the ascent steps: K = 0 trains exactly as noise.kind=uniform (the same
draws from the same generator), K >= 1 takes K + 1 forward/backward passes per batch (the cost
section of the report counts them: train_passes_per_example). The ascent step is normalised
over each example's real tokens only (the gradient on padding is zero anyway: padding is masked
out of attention and loss), so padding is never perturbed.

Settings (the defaults): FreeLB's official ALBERT/GLUE launch script
(huggingface-transformers/launch/run_glue.sh, the MNLI line: adv-lr 4e-2, adv-max-norm 0,
adv-steps 3), i.e. K = 2, step size 0.04, no norm bound; its adv-init-mag (8e-2 there) is
replaced by NEFTune's alpha (5 in the study), which is the point of the comparison. The paper
tunes these per task; its own grid is not reproduced here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.train.noise_kinds import NoiseKind, register


@dataclass
class FreeLBSettings:
    steps: int = 2  # K ascent steps per batch (FreeLB's adv-steps - 1): K + 1 passes; 0 = NEFTune
    step_size: float = 0.04  # adv-lr: l2 length of one ascent step per example (embedding units)
    max_norm: float = 0.0  # adv-max-norm: each example's ||delta||_F bound after a step; 0 = none


def ascent(
    delta: torch.Tensor, grad: torch.Tensor, tokens: torch.Tensor | None, settings
) -> torch.Tensor:
    """One FreeLB step: delta + step_size * grad / ||grad||_F, then projected onto the ball of
    radius max_norm (each example on its own; 0: no bound). Padding (tokens 0) never moves.
    Computed in fp32, returned in delta's dtype, detached (the next pass's leaf)."""
    g = grad.detach().float()
    if tokens is not None:
        g = g * tokens.unsqueeze(-1).to(g.dtype)
    norm = g.flatten(1).norm(dim=1).clamp(min=1e-8).view(-1, 1, 1)
    moved = delta.detach().float() + settings.step_size * g / norm
    if settings.max_norm > 0:
        size = moved.flatten(1).norm(dim=1).view(-1, 1, 1)
        moved = moved * torch.where(size > settings.max_norm, settings.max_norm / size, 1.0)
    return moved.to(delta.dtype)


@register("freelb")
class FreeLB(NoiseKind):
    """NEFTune's uniform init, then K projected ascent steps, every pass's gradient kept."""

    Settings = FreeLBSettings

    def check(self, settings) -> None:
        if settings.steps < 0:
            raise ValueError(
                f"noise.settings.steps={settings.steps}: the number of ascent steps, >= 0 "
                "(0 trains as NEFTune uniform; FreeLB's code uses 2)"
            )
        for key in ("step_size", "max_norm"):
            value = float(getattr(settings, key))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"noise.settings.{key}={value}: must be a finite number >= 0")

    def label(self, settings) -> str:
        bound = f"-norm{settings.max_norm:g}" if settings.max_norm > 0 else ""
        return f"-k{settings.steps}-lr{settings.step_size:g}{bound}"

    def sample(self, like: torch.Tensor, mag, generator, settings) -> torch.Tensor:
        # NEFTune uniform's draw exactly: K = 0 is noise.kind=uniform.
        return torch.zeros_like(like).uniform_(-mag, mag, generator=generator)

    def training_loss(self, loss, settings) -> torch.Tensor:
        if settings.steps == 0:
            return loss(True)  # NEFTune: one pass at the initial perturbation
        passes = settings.steps + 1
        current = loss.run(track=True)  # delta_0: NEFTune's draw, a leaf
        earlier = []
        for _ in range(settings.steps):
            step_loss = current.loss / passes
            loss.backward(step_loss)  # theta's gradients add up; delta's is read below
            earlier.append(step_loss.detach())
            delta = ascent(current.delta, current.delta.grad, current.tokens, settings)
            current = loss.run(perturbation=delta, track=True)
        # The trainer backpropagates the last pass; the value it logs is the mean over passes.
        return current.loss / passes + sum(earlier)
