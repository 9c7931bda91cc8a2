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
  (NEFTune uniform and gaussian; FreeLB's initial perturbation).
- `perturbation`: the whole tensor the embedding hook adds, given NEFTune's (`neftune()`: the
  `sample` entries at alpha/sqrt(L*d) over each sequence's real tokens) and the real tokens'
  mask; a kind whose noise has a scale of its own returns its own (R3F's sigma).
- `before_training`: once, when the noise is attached to the freshly loaded model, before the
  first step and before a resumed run loads its checkpoint, with a generator seeded from the
  finetune seed alone (NoisyTune's one-off perturbation of the pretrained weights).
- `training_loss`: the loss of one training batch, given `passes` (Passes): `passes(noised)`
  runs the model's forward pass with the embedding hook on or off and returns its loss;
  `passes.run(...)` returns the whole Pass (the logits, the labels, the perturbation as a leaf
  tensor with its gradient, the real tokens), may add a given perturbation instead of drawing
  one, and `passes.backward(loss)` backpropagates an intermediate loss as the trainer does its
  own (R3F: the clean loss plus lambda times the symmetric KL between a clean and a noised
  pass; FreeLB: K ascent steps on the perturbation, each pass backpropagated; NoisyTune: one
  clean pass). The default is NEFTune's: the loss of one noised pass. The training loop reaches
  it through NEFTuneHandle.training_loss, which counts the passes a batch took (the cost).
- `scaled_by_alpha`: False for a kind whose strength is a setting of its own (R3F, NoisyTune):
  noise.alpha and noise.length then enter neither its finetune key nor its arm's name, and
  alpha 0 does not make it the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.registry import NoSettings, Registry

OFF = "none"  # the baseline: no noise, whatever alpha says


@dataclass
class Pass:
    """One forward pass of a training batch, as NoiseKind.training_loss ran it (Passes.run)."""

    loss: torch.Tensor  # the batch's loss as the trainer computes it (its label tokens' mean)
    logits: torch.Tensor | None = None  # (B, L, V) when asked for ((N, V): loss_logits=response)
    labels: torch.Tensor | None = None  # (B, L) the targets the loss counts (-100: none)
    delta: torch.Tensor | None = None  # what the embedding hook added, a leaf (`track`): .grad
    tokens: torch.Tensor | None = None  # (B, L) 1 on real tokens, 0 on padding (None: no mask)


class Passes:
    """The forward passes one training batch may take, for NoiseKind.training_loss.

    `run(noised, logits, perturbation, track)` runs the model's forward pass on the batch (the
    trainer's `forward`); `backward(loss)` backpropagates an intermediate loss as the trainer
    backpropagates the one training_loss returns (its scaling, its accelerator: the parameters'
    gradients add up); `per_token(total)` normalises a sum over the batch's label tokens as the
    trainer normalises its loss. Without a trainer (a plain model) backward is loss.backward()
    and per_token divides by the batch's label tokens, as the model's own mean loss does.
    """

    def __init__(self, run: Callable, backward: Callable | None, per_token: Callable | None):
        self._run, self._backward, self._per_token = run, backward, per_token
        self.count = 0  # forward passes run; each is backpropagated once (here or by the trainer)
        self.labels = None  # the last pass's labels (per_token's default normaliser)

    def __call__(self, noised: bool = True) -> torch.Tensor:
        """The loss of one forward pass, noised (the kind's perturbation) or clean."""
        return self.run(noised).loss

    def run(
        self,
        noised: bool = True,
        *,
        logits: bool = False,
        perturbation: torch.Tensor | None = None,
        track: bool = False,
    ) -> Pass:
        """One forward pass. `perturbation`: added to the embeddings instead of a fresh draw;
        `track`: what is added becomes a leaf tensor requiring grad (Pass.delta, its gradient
        there after backward); `logits`: keep the logits (they hold (B, L, V) in memory)."""
        self.count += 1
        done = self._run(noised, logits, perturbation, track)
        self.labels = done.labels
        return done

    def backward(self, loss: torch.Tensor) -> None:
        if self._backward is None:
            loss.backward()
        else:
            self._backward(loss)

    def per_token(self, total: torch.Tensor) -> torch.Tensor:
        if self._per_token is not None:
            return self._per_token(total, self.labels)
        return total / self.labels[..., 1:].ne(-100).sum().clamp(min=1)


class NoiseKind:
    """One kind of noise: its own settings, its sampler and its hook points (see the module)."""

    name = "?"  # set by @register
    Settings: type = NoSettings  # the dataclass of noise.settings for this kind
    scaled_by_alpha = True  # noise.alpha/noise.length set its strength (see the module)

    def check(self, settings) -> None:
        """Fail (ValueError naming noise.settings.<key>) on a setting out of its range."""

    def label(self, settings) -> str:
        """What the arm's name adds after neft-<kind><alpha> (e.g. '-scale2'); '' for none."""
        return ""

    def sample(self, like: torch.Tensor, mag, generator, settings) -> torch.Tensor:
        """Noise entries shaped like `like`, scaled by `mag` (a number or a tensor that
        broadcasts), drawn from `generator` (None: torch's global RNG)."""
        raise NotImplementedError

    def perturbation(
        self,
        embeds: torch.Tensor,
        neftune: Callable[[], torch.Tensor],
        tokens: torch.Tensor | None,
        generator,
        settings,
    ) -> torch.Tensor:
        """What the embedding hook adds to `embeds` (B, L, d) in training: NEFTune's noise
        (`neftune()`) by default; `tokens` (B, L) is 1 on real tokens (None: all real)."""
        return neftune()

    def before_training(self, model: torch.nn.Module, settings, generator) -> None:
        """Once, when the noise is attached, before the first training step; `generator` is
        seeded from the finetune seed alone (the same draws on every rank and every resume)."""

    def training_loss(self, loss: Passes, settings) -> torch.Tensor:
        """One batch's training loss; `loss(noised)` runs the forward pass (Passes)."""
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
