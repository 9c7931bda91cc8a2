"""Noise kinds by name (noise.kind): each module of this package registers one NoiseKind.

A new kind is one module here, e.g. laplace.py:

    from dataclasses import dataclass
    import torch
    from pipeline.train.noise_kinds import NoiseKind, register

    @dataclass
    class LaplaceSettings:
        scale: float = 1.0  # Laplace scale b of the unit entries (before alpha/sqrt(L*d))

    @register("laplace")
    class Laplace(NoiseKind):
        Settings = LaplaceSettings  # noise.settings, typed (omit: the kind has no settings)

        def sample(self, like, mag, generator, settings):
            ...  # a tensor shaped like `like`: the noise entries scaled by `mag`

plus conf/noise/laplace.yaml (`kind: laplace`, `settings: {scale: 2.0}`: only what differs from
the dataclass). Modules are found with pkgutil the first time a kind is looked up, so nothing
else names them. `none` (the baseline) is no kind: no noise. noise.settings is checked against
the kind's Settings right after composition (an unknown key or a wrong type fails naming the kind
and the key); a kind's settings enter the finetune key, and its `label` its arm's name.

Hook points. Training attaches every kind the same way (train/noise.attach_neftune) and calls
each hook for every kind; the defaults are NEFTune's, so a kind overrides only what it changes:
- `sample`: the noise entries the embedding hook adds, times NEFTune's alpha/sqrt(L*d) per token
  (NEFTune uniform and gaussian, SymNoise's symmetric entries).
- `before_training`: once, when the noise is attached to the freshly loaded model, before the
  first step (NoisyTune's one-off perturbation of the pretrained weights; its own generator).
- `training_loss`: the loss of one training batch, given `loss(noised)`, which runs the model's
  forward pass with the embedding hook on or off (R3F/R4F: the clean loss plus lambda times the
  symmetric KL between a clean and a noised pass; FreeLB: K ascent steps, each a noised pass
  whose perturbation, kept by the kind from `before_training` on, `sample` returns and the
  ascent updates within its norm bound). The default is NEFTune's: the loss of one noised pass.
  The training loop reaches it through NEFTuneHandle.training_loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.registry import NoSettings, Registry

OFF = "none"  # the baseline: no noise, whatever alpha says


class NoiseKind:
    """One kind of noise: its own settings, its sampler and its hook points (see the module)."""

    name = "?"  # set by @register
    Settings: type = NoSettings  # the dataclass of noise.settings for this kind

    def check(self, settings) -> None:
        """Fail (ValueError naming noise.settings.<key>) on a setting out of its range."""

    def label(self, settings) -> str:
        """What the arm's name adds after neft-<kind><alpha> (e.g. '-scale2'); '' for none."""
        return ""

    def sample(self, like: torch.Tensor, mag, generator, settings) -> torch.Tensor:
        """Noise entries shaped like `like`, scaled by `mag` (a number or a tensor that
        broadcasts), drawn from `generator` (None: torch's global RNG)."""
        raise NotImplementedError

    def before_training(self, model: torch.nn.Module, settings, generator) -> None:
        """Once, when the noise is attached, before the first training step."""

    def training_loss(self, loss: Callable[[bool], torch.Tensor], settings) -> torch.Tensor:
        """One batch's training loss; `loss(noised)` runs the forward pass."""
        return loss(True)


REGISTRY = Registry(
    "noise.kind",
    "kinds",
    __name__,
    lambda kind: (
        f"A new kind is pipeline/train/noise_kinds/{kind}.py (a NoiseKind subclass decorated "
        f"with @register({kind!r}), its Settings dataclass beside it) and "
        f"conf/noise/{kind}.yaml (kind: {kind}, settings: what differs)"
    ),
    builtin=(OFF,),
)
KINDS = REGISTRY.entries
discover = REGISTRY.discover


def register(name: str):
    """Class decorator: an instance of the NoiseKind subclass becomes noise kind `name`."""
    return REGISTRY.register(name, instantiate=True)


def names() -> tuple[str, ...]:
    """Every valid noise.kind: the baseline and the registered kinds."""
    return REGISTRY.names()


def check_kind(kind: str) -> None:
    """Fail, naming the registered kinds and what to add, when `kind` is unknown."""
    REGISTRY.check(kind)


def noise_kind(kind: str) -> NoiseKind:
    """The kind registered as `kind`."""
    return REGISTRY.get(kind)


def noise_settings(noise_cfg):
    """noise.settings typed as noise.kind's Settings, in place (see Registry.settings)."""
    return REGISTRY.settings(noise_cfg)


def settings_object(kind: str, settings: dict | None):
    """Kind `kind`'s Settings instance from plain `settings` (what crosses into the training
    process: noise_params' dict); missing fields take their defaults, unknown ones fail."""
    from omegaconf import OmegaConf

    section = OmegaConf.create({"kind": kind, "settings": settings or {}})
    return OmegaConf.to_object(REGISTRY.settings(section))


def sampler(kind: str, settings: dict | None = None) -> Callable:
    """`fn(like, mag, generator)`: kind `kind`'s sample with `settings` (None: its defaults)."""
    noise = noise_kind(kind)
    typed = settings_object(kind, settings)
    return lambda like, mag, generator: noise.sample(like, mag, generator, typed)
