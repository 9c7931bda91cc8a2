"""NEFTune noise on the input embeddings of any Hugging Face causal LM (PEFT-wrapped included).

X + (alpha / sqrt(L * d)) * eps, eps ~ Uniform(-1, 1) (N(0, 1) for `gaussian`), in training only.
The kinds of eps are registered by name in pipeline/train/noise_kinds/ (one module per kind, each
with its own settings, noise.settings, and hook points).

- length="per_example": L is each sequence's real length from the attention mask, padding gets no
  noise, and when position_ids restart inside a row (packing) each segment uses its own length.
  This is what the paper's own training code does.
- length="padded": L is the padded batch length and padding is noised too, exactly as the
  transformers `neftune_noise_alpha` hook does (same RNG draws, see transformers issue 34659).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum

import torch

from pipeline.config.choices import NoiseLength, plain
from pipeline.store.key_rules import noise_setting_params
from pipeline.train.noise_kinds import (
    OFF,
    NoiseKind,
    Pass,
    Passes,
    check_kind,
    noise_kind,
    noise_settings,
    sampler,
    settings_object,
)

LENGTHS = tuple(m.value for m in NoiseLength)
# What a kind not scaled by alpha (NoiseKind.scaled_by_alpha) hashes and records for them.
UNSCALED = {"alpha": 0.0, "length": NoiseLength.per_example.value}


def validate_noise(kind: str, alpha: float, length: str) -> None:
    """Reject a bad noise config before any model is loaded (kind: by the registry)."""
    check_kind(kind)
    if length not in LENGTHS:
        raise ValueError(f"noise.length={length!r} is unknown; use one of {LENGTHS}")
    # `alpha < 0` is False for NaN: test for a finite number explicitly.
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(
            f"noise.alpha={alpha!r} must be a finite number >= 0 (the paper uses 5, 10 or 15)"
        )


def noise_params(noise_cfg) -> dict:
    """The part of the noise config that changes training (what the finetune key hashes and the
    training process gets); every 'off' setting hashes alike."""
    validate_noise(noise_cfg.kind, noise_cfg.alpha, noise_cfg.length)
    settings = noise_settings(noise_cfg)  # its kind's own: keys and types (unknown: named)
    if noise_cfg.kind == OFF:
        return {"kind": OFF}
    kind = noise_kind(noise_cfg.kind)
    if kind.scaled_by_alpha and noise_cfg.alpha == 0:  # alpha 0 is the baseline, NEFTune's kinds
        return {"kind": OFF}
    kind.check(settings)
    # Plain str, never the schema's Enum member: these values are hashed into stage keys.
    length = noise_cfg.length
    length = length.value if isinstance(length, Enum) else str(length)
    shared = {"kind": str(noise_cfg.kind), "alpha": float(noise_cfg.alpha), "length": length}
    if not kind.scaled_by_alpha:
        # Its strength is a setting of its own: alpha and length change nothing it trains, so
        # they hash (and are recorded) at their neutral values whatever the config says.
        shared |= UNSCALED
    return noise_setting_params(shared, plain(settings))


def noise_label(noise: dict) -> str:
    """An arm's name for a noise setting: base, neft-uniform5, neft-gaussian5-padded; a kind
    with settings adds its label of them (NoiseKind.label); a kind not scaled by alpha is named
    by its kind and its label alone (r3f-lambda1-sigma1e-05)."""
    if noise["kind"] == OFF:
        return "base"
    kind = noise_kind(noise["kind"])
    alpha = noise["alpha"]
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    suffix = "" if noise["length"] == "per_example" else "-padded"
    if "settings" in noise:
        suffix = kind.label(settings_object(noise["kind"], noise["settings"])) + suffix
    if not kind.scaled_by_alpha:
        return f"{noise['kind']}{suffix}"
    return f"neft-{noise['kind']}{alpha}{suffix}"


def token_lengths(attention_mask: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """Per-token length L of the sequence (or packed segment) of each token; 0 on padding."""
    mask = attention_mask.to(torch.long)
    if position_ids is None:
        return mask * mask.sum(dim=1, keepdim=True)
    # A segment starts at column 0 and wherever the position counter restarts.
    starts = torch.zeros_like(mask)
    starts[:, 0] = 1
    starts[:, 1:] = (position_ids[:, 1:] <= position_ids[:, :-1]).to(torch.long)
    seg = torch.cumsum(starts, dim=1) - 1  # segment index within the row
    n_seg = int(seg.max().item()) + 1
    counts = torch.zeros(mask.shape[0], n_seg, dtype=torch.long, device=mask.device)
    counts.scatter_add_(1, seg, mask)
    return mask * torch.gather(counts, 1, seg)


def neftune_noise(
    embeds: torch.Tensor,
    alpha: float,
    kind: str = "uniform",
    length: str = "per_example",
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    settings: dict | None = None,
) -> torch.Tensor:
    """The noise tensor NEFTune adds to `embeds` (B, L, d).

    `generator` (on `embeds`' device) draws eps; None draws from torch's global RNG, as before.
    `settings`: the kind's own (noise_params' plain dict; None: its defaults).
    """
    if kind == OFF or alpha == 0:
        return torch.zeros_like(embeds)
    return _scaled_noise(
        embeds, alpha, sampler(kind, settings), length, attention_mask, position_ids, generator
    )


def _scaled_noise(
    embeds: torch.Tensor,
    alpha: float,
    draw: Callable,
    length: str,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """`draw(like, mag, generator)`'s entries at NEFTune's scale alpha / sqrt(L * d)."""
    if alpha == 0:
        return torch.zeros_like(embeds)  # nothing drawn: the RNG stays where it was
    _, seq_len, dim = embeds.shape
    if length == "padded" or attention_mask is None:
        return draw(embeds, alpha / torch.sqrt(torch.tensor(seq_len * dim)), generator)
    eps = draw(embeds, 1.0, generator)
    # The scale in fp32 whatever the embeddings' dtype: bf16 holds integers exactly only up to
    # 256, so L = 257 would be scaled as 256. Only the final noise is cast.
    lengths = token_lengths(attention_mask, position_ids).to(torch.float32)
    scale = torch.where(
        lengths > 0, alpha / torch.sqrt(lengths.clamp(min=1) * dim), torch.zeros_like(lengths)
    )
    return (eps.to(torch.float32) * scale.unsqueeze(-1)).to(embeds.dtype)


@dataclass
class NEFTuneHandle:
    """Attached noise hooks; call `remove()` to detach them."""

    alpha: float
    kind: str
    length: str
    settings: object = None  # the kind's Settings instance (None for the baseline)
    noised: bool = True  # the embedding hook adds noise; training_loss's loss(False) clears it
    batches: int = 0  # training batches whose loss the kind computed (training_loss calls)
    passes: int = 0  # forward passes they took, each backpropagated once (the cost)
    _kind: NoiseKind | None = None
    _batch: dict = field(default_factory=dict)
    _handles: list = field(default_factory=list)
    _given: torch.Tensor | None = None  # the pass's perturbation, instead of a draw
    _track: bool = False  # what the pass adds becomes a leaf requiring grad
    _seen: dict = field(default_factory=dict)  # the pass's labels, tokens and what it added

    def training_loss(
        self,
        forward: Callable[..., object],
        backward: Callable[[torch.Tensor], None] | None = None,
        per_token: Callable | None = None,
    ) -> torch.Tensor:
        """One training batch's loss as the noise kind computes it (NoiseKind.training_loss).

        `forward()` runs the model on the batch and returns its loss, `forward(True)` the loss
        and the model's outputs (their logits); `backward(loss)` backpropagates an intermediate
        loss as the trainer does its own, `per_token(total, labels)` normalises a sum over the
        batch's label tokens as the trainer normalises its loss (None: a plain model's
        loss.backward() and mean). The baseline: `forward()` once, untouched; every kind that
        keeps the default: `forward()` once, noised."""
        if self._kind is None:
            self.batches, self.passes = self.batches + 1, self.passes + 1
            return forward()

        def run(noised: bool, logits: bool, perturbation, track: bool) -> Pass:
            before = self.noised
            self.noised, self._given, self._track = noised, perturbation, track
            self._seen = {}
            try:
                got = forward(True) if logits else forward()
            finally:
                self.noised, self._given, self._track = before, None, False
            loss, outputs = got if logits else (got, None)
            seen = self._seen
            return Pass(
                loss=loss,
                logits=getattr(outputs, "logits", None),
                labels=seen.get("labels"),
                delta=seen.get("delta"),
                tokens=seen.get("tokens"),
            )

        passes = Passes(run, backward, per_token)
        loss = self._kind.training_loss(passes, self.settings)
        self._seen = {}  # not kept past its batch (a tracked perturbation and its gradient)
        self.batches += 1
        self.passes += passes.count
        return loss

    def batch_labels(self, labels: torch.Tensor) -> None:
        """The pass's labels, from the trainer: a trainer whose own loss function computes the
        loss (finetune.loss_logits=response) does not hand them to the model's forward."""
        self._seen["labels"] = labels

    def passes_per_batch(self) -> float | None:
        """Forward (+ backward) passes per training batch so far (None: no batch yet)."""
        return self.passes / self.batches if self.batches else None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def rank_generator(seed: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one rank's noise, seeded from (seed, rank): independent across ranks.

    Hashing both (not seed + rank) keeps (seed 1, rank 0) and (seed 0, rank 1) apart.
    """
    digest = hashlib.sha256(f"neftune-noise/{int(seed)}/{int(rank)}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return gen


def weights_generator(seed: int) -> torch.Generator:
    """The generator of a kind's one-off draws at attach time (NoiseKind.before_training), seeded
    from the finetune seed alone: every rank and every resumed run draws the same (a separate
    stream: the noise generators and the Trainer's RNG are left where they are)."""
    digest = hashlib.sha256(f"neftune-weights/{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def attach_neftune(
    model: torch.nn.Module,
    alpha: float,
    kind: str = "uniform",
    length: str = "per_example",
    generator: torch.Generator | None = None,
    settings: dict | None = None,
    seed: int = 0,
) -> NEFTuneHandle:
    """Add NEFTune noise to `model`'s input embeddings while the embedding module is training.

    `model` is the object whose forward receives the batch (a PreTrainedModel or a PeftModel):
    a pre-hook captures attention_mask/position_ids (and the labels, for the kinds that compare
    passes) so the embedding hook can use real lengths. `generator` (e.g. rank_generator(seed,
    rank, device)) draws the noise; None: the global RNG. `settings`: the kind's own
    (noise_params' dict carries them; None: the kind's defaults). The kind's `before_training`
    hook runs here, once, with weights_generator(`seed`) (the finetune seed): before a resumed
    run loads its checkpoint, which then replaces every weight it holds, so nothing is
    perturbed twice, and the weights it does not hold (a LoRA run's frozen base) are perturbed
    exactly as the first time.
    """
    validate_noise(kind, alpha, length)
    handle = NEFTuneHandle(alpha=alpha, kind=kind, length=length)
    if kind == OFF:
        return handle
    if settings is None and fields(noise_kind(kind).Settings):
        # Its defaults would train another noise than the finetune key (which hashes the
        # settings) says: the caller must hand over what noise_params() gave.
        raise ValueError(
            f"noise.kind={kind!r} has settings of its own: attach_neftune(..., "
            "settings=noise_params(noise_cfg)['settings']) must be given them"
        )
    handle._kind, handle.settings = noise_kind(kind), settings_object(kind, settings)
    draw = handle._kind.sample
    typed = handle.settings

    def sample(like, mag, gen):
        return draw(like, mag, gen, typed)

    handle._kind.before_training(model, typed, weights_generator(seed))
    embedding = model.get_input_embeddings()
    perturbation = handle._kind.perturbation

    def capture(_module, args, kwargs):
        handle._batch["attention_mask"] = kwargs.get("attention_mask")
        handle._batch["position_ids"] = kwargs.get("position_ids")
        if kwargs.get("labels") is not None:  # else the trainer gave them (batch_labels)
            handle._seen["labels"] = kwargs["labels"]

    def add_noise(module, _inputs, output):
        if not module.training:
            return output
        # Taken, not peeked: a later direct call of the embedding must not reuse this batch's mask.
        mask = handle._batch.pop("attention_mask", None)
        pos = handle._batch.pop("position_ids", None)
        if mask is not None and mask.shape == output.shape[:2]:
            handle._seen["tokens"] = mask
        if not handle.noised:  # a clean pass of the kind's training_loss
            return output
        if pos is not None and pos.shape != output.shape[:2]:
            pos = None
        if mask is not None and mask.shape != output.shape[:2]:
            mask = None
        if mask is None and pos is not None:
            mask = torch.ones(
                output.shape[:2], dtype=torch.long, device=output.device
            )  # packed, no padding
        if handle._given is not None:  # the kind's own (FreeLB's ascent)
            added = handle._given
        else:
            added = perturbation(
                output,
                lambda: _scaled_noise(output, alpha, sample, length, mask, pos, generator),
                mask,
                generator,
                typed,
            )
        if handle._track:  # a leaf: the kind reads its gradient after backward
            added = added.detach().requires_grad_(True)
            handle._seen["delta"] = added
        return output + added

    handle._handles.append(model.register_forward_pre_hook(capture, with_kwargs=True))
    handle._handles.append(embedding.register_forward_hook(add_noise))
    return handle
