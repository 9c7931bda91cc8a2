"""The training loss from the logits of response tokens only (finetune.loss_logits=response).

The loss counts only the positions whose next token is a label (the response and its EOS);
transformers' causal-LM loss still computes the output layer (hidden x 49k vocabulary on the
default's model, a fifth of its GEMM work) and an fp32 log-softmax at every position, prompt and
padding included, then ignores them. Here a pre-hook on the output layer hands it only the
counted positions' hidden states, and `loss` computes the same cross-entropy (a sum over the
counted tokens, divided by the Trainer's num_items_in_batch, as transformers' ForCausalLMLoss
does) from those rows. No library offers this on a CPU (Liger's fused loss is Triton/CUDA):
written here, through the Trainer's own `compute_loss_func` extension point.

The result equals transformers' loss up to summation order (last bits in fp32; equal to 4
decimals under bf16 autocast: tests/test_response_logits.py), which is why `auto` keeps fp32
training on the full logits (models/devices.loss_logits).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

IGNORE = -100  # transformers' label of a position the loss does not count


def counted_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: positions t whose logits the loss counts (they predict labels[t + 1])."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:].ne(IGNORE)
    return mask


@dataclass
class ResponseLogits:
    """A pre-hook on `model`'s output layer that keeps the rows of counted positions while a
    `selecting(labels)` block is open (elsewhere, e.g. the clean-loss forward, every row)."""

    model: torch.nn.Module
    _mask: torch.Tensor | None = None
    _handles: list = field(default_factory=list)

    def __post_init__(self):
        head = self.model.get_output_embeddings()
        if head is None:
            raise ValueError(
                f"finetune.loss_logits=response: {type(self.model).__name__} has no output "
                "layer (get_output_embeddings() is None); use finetune.loss_logits=all"
            )
        self._handles.append(head.register_forward_pre_hook(self._select))

    def _select(self, _module, args):
        if self._mask is None:
            return None
        hidden = args[0]
        if hidden.shape[:2] != self._mask.shape:
            raise RuntimeError(
                f"finetune.loss_logits=response: the output layer got hidden states of shape "
                f"{tuple(hidden.shape)} for labels of shape {tuple(self._mask.shape)}; use "
                "finetune.loss_logits=all for this model"
            )
        return (hidden[self._mask], *args[1:])

    @contextmanager
    def selecting(self, labels: torch.Tensor):
        """The forward passes inside see the output layer compute counted rows only."""
        self._mask = counted_positions(labels)
        try:
            yield
        finally:
            self._mask = None

    @staticmethod
    def loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """The Trainer's compute_loss_func: cross-entropy over the counted positions, summed and
        divided by num_items_in_batch (the counted tokens of the whole accumulated batch), or
        their mean without it. `outputs.logits` holds the counted rows (N, V) from the hook, or
        every position (B, L, V) from a forward outside `selecting`."""
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        mask = counted_positions(labels)
        if logits.dim() == 3:
            logits = logits[mask]
        targets = labels[:, 1:][mask[:, :-1]].to(logits.device)
        if num_items_in_batch is None:
            return F.cross_entropy(logits.float(), targets)
        total = F.cross_entropy(logits.float(), targets, reduction="sum")
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
