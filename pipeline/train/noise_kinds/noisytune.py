"""NoisyTune: perturb each pretrained parameter matrix once, before fine-tuning.

Wu et al., "NoisyTune: A Little Noise Can Help You Finetune Pretrained Language Models Better",
ACL 2022 (arXiv 2202.12024), Section 3, Eq. 1 (matrix-wise perturbing):

    W~_i = W_i + U(-lambda / 2, lambda / 2) * std(W_i)

for every parameter matrix W_i of the pretrained model, each with its own standard deviation,
lambda the relative noise intensity (0.15, the paper's default). The equation is as the issue
quotes it and as the method's reference snippet writes it (`para += (torch.rand(para.size()) -
0.5) * noise_lambda * torch.std(para)` over `model.named_parameters()`, found in the search
tool's code index in several repositories that credit NoisyTune); the paper's text reached
through the search tool holds its abstract and introduction ("a matrix-wise perturbing method
which adds different uniform noises to different parameter matrices based on their standard
deviations"), not the equation itself.

A different hook point from the embedding noise: `before_training`, when the noise is attached
to the freshly loaded model (pipeline/train/training.py), with a generator seeded from the
finetune seed alone (train/noise.weights_generator): the same draws on every rank and on every
resumed run. A resumed run draws them again on the freshly loaded pretrained weights and then
loads its checkpoint, which holds every trained weight: nothing is perturbed twice; the weights a
checkpoint does not hold (a LoRA run's frozen base) get exactly the first run's perturbation.
Training itself is plain: one clean pass per batch, no embedding noise (noise.alpha and
noise.length do not apply: scaled_by_alpha = False).

What is perturbed: every floating-point parameter of the pretrained model with at least two
entries (torch.std of one entry is undefined), biases and norm weights too as in the reference
snippet; tied parameters once (named_parameters yields each once); not the adapters PEFT adds
(they are not pretrained); parameters not materialised on this rank (FSDP rank-0 loading: rank
0's are broadcast). A 4-bit quantised base (QLoRA) holds no floating-point matrix to perturb:
refused. Noise is drawn in fp32 on the CPU and added in the parameter's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.train.noise_kinds import NoiseKind, register


@dataclass
class NoisyTuneSettings:
    lam: float = 0.15  # lambda: relative noise intensity, U(-lam/2, lam/2) x std(W) per matrix


def adapter_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the parameters of adapters PEFT added (each tuner layer names its adapter
    submodules in `adapter_layer_names`): not pretrained, never perturbed."""
    ids = set()
    for module in model.modules():
        for name in getattr(module, "adapter_layer_names", ()):
            sub = getattr(module, name, None)
            if isinstance(sub, torch.nn.Module):
                ids |= {id(p) for p in sub.parameters()}
    return ids


def perturbed(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs NoisyTune perturbs, in named_parameters order."""
    adapters = adapter_parameters(model)
    out = []
    for name, param in model.named_parameters():
        if id(param) in adapters or param.is_meta or param.numel() < 2:
            continue
        if not param.is_floating_point():
            raise ValueError(
                f"noise.kind=noisytune perturbs the pretrained weights, and {name} is not "
                f"floating point ({param.dtype}: a 4-bit quantised base, "
                "finetune.lora.quantize_4bit=true); use plain LoRA or a full finetune"
            )
        out.append((name, param))
    return out


@register("noisytune")
class NoisyTune(NoiseKind):
    """U(-lambda/2, lambda/2) x std(W) added to each pretrained matrix W once; then plain
    training (no embedding noise)."""

    Settings = NoisyTuneSettings
    scaled_by_alpha = False  # lambda is the strength: noise.alpha/noise.length do not apply

    def check(self, settings) -> None:
        if not (math.isfinite(settings.lam) and settings.lam >= 0):
            raise ValueError(
                f"noise.settings.lam={settings.lam}: a finite number >= 0 (the paper's 0.15)"
            )

    def label(self, settings) -> str:
        return f"-lambda{settings.lam:g}"

    def sample(self, like: torch.Tensor, mag, generator, settings) -> torch.Tensor:
        return torch.zeros_like(like)  # no embedding noise (never called: passes are clean)

    @torch.no_grad()
    def before_training(self, model, settings, generator) -> None:
        for _, param in perturbed(model):
            u = torch.rand(param.shape, generator=generator, dtype=torch.float32)
            spread = param.detach().float().std().item()
            noise = (u - 0.5) * (settings.lam * spread)
            param.add_(noise.to(device=param.device, dtype=param.dtype))

    def training_loss(self, loss, settings) -> torch.Tensor:
        return loss(False)  # plain fine-tuning of the perturbed model
