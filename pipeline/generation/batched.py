"""Batched generation with a Hugging Face model: left-padded batches in prompt order, greedy or
sampled, a repetition penalty that ignores padding, resumable batch by batch (progress.jsonl).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.generation.progress import append_progress, read_progress


def penalty_ignoring_padding(penalty: float, attention_mask: torch.Tensor):
    """The repetition penalty over each row's real tokens: prompt and answer, never padding.

    transformers' own `repetition_penalty` penalises every id in the padded input, so with left
    padding (and pad == EOS, as for many models) an answer would depend on which prompts share
    its batch; vLLM, which does not pad, penalises exactly these tokens. Our own processor, not
    RepetitionPenaltyLogitsProcessor with per-row `prompt_ignore_length`: transformers 5.17 and
    5.18 (the GPU image's) reject a tensor there; from 5.19 on the two give the same scores.
    """
    from transformers import LogitsProcessorList

    pads = (attention_mask == 0).sum(dim=1)  # left padding: the first `pads` positions of a row
    return LogitsProcessorList([PenaltyIgnoringPadding(float(penalty), pads)])


class PenaltyIgnoringPadding:
    """Repetition penalty (CTRL: a logit > 0 divided, < 0 multiplied by `penalty`) on the ids of
    each row after its first `pads[row]` positions, once per distinct id. The arithmetic of
    transformers' RepetitionPenaltyLogitsProcessor, so that scores match it bit for bit."""

    def __init__(self, penalty: float, pads: torch.Tensor):
        if not penalty > 0:
            raise ValueError(f"repetition penalty {penalty} must be > 0")
        self.penalty = penalty
        self.pads = pads

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        pads = self.pads.to(input_ids.device)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # Padding (and any id past the head's vocabulary) points at one extra column, dropped.
        ids = input_ids.masked_fill(positions[None, :] < pads[:, None], vocab).clamp(max=vocab)
        padded = torch.nn.functional.pad(scores, (0, 1))
        seen = torch.gather(padded, 1, ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return padded.scatter(1, ids, seen)[..., :vocab]


def generate_batched(
    model,
    tok,
    texts: list[str],
    batch_size: int,
    max_new_tokens: int,
    max_total_length: int,
    repetition_penalty: float,
    min_new_tokens: int = 0,
    desc: str = "generate",
    progress: Path | None = None,
) -> tuple[list[str], list[int]]:
    """Greedy answers to `texts` (in their order) and the number of new tokens of each.

    Batches are formed longest prompt first (memory peaks early), left padded and sent to the
    model's device. EOS is suppressed until `min_new_tokens` new tokens exist. In fp32 an answer
    is the same alone and in any batch (padding is masked, and penalised nowhere).
    `progress`: a JSON-lines file each finished batch is appended to; a rerun (a requeued job)
    skips the batches found there, so the batches it does run are the same as uninterrupted.
    """
    from tqdm import tqdm

    model.eval()
    tok.padding_side = "left"
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(texts)
    counts = [0] * len(texts)
    done = read_progress(progress, outputs, counts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[start : start + batch_size]
        if all(i in done for i in idx):
            continue
        new = _generate_batch(
            model,
            tok,
            [texts[i] for i in idx],
            max_new_tokens,
            max_total_length,
            repetition_penalty,
            min_new_tokens,
        )
        for row, i in enumerate(idx):
            tokens = new[row]
            counts[i] = (
                int((tokens != tok.pad_token_id).sum())
                if tok.pad_token_id != tok.eos_token_id
                else _until_eos(tokens, tok.eos_token_id)
            )
            outputs[i] = tok.decode(tokens, skip_special_tokens=True).strip()
        if progress is not None:
            append_progress(progress, [(i, outputs[i], counts[i]) for i in idx])
    return outputs, counts


def _generate_batch(
    model,
    tok,
    texts: list[str],
    max_new_tokens: int,
    max_total_length: int,
    repetition_penalty: float,
    min_new_tokens: int,
) -> torch.Tensor:
    """The new tokens of one left-padded batch (on the CPU), greedy."""
    batch = tok(texts, return_tensors="pt", padding=True).to(model.device)
    room = max_total_length - batch["input_ids"].shape[1]
    if room < max(min_new_tokens, 1):
        raise ValueError(
            f"a prompt of {batch['input_ids'].shape[1]} tokens leaves {room} new tokens within "
            f"max_total_length={max_total_length}; at least {max(min_new_tokens, 1)} are needed"
        )
    penalty = {}
    if repetition_penalty != 1.0:
        penalty["logits_processor"] = penalty_ignoring_padding(
            repetition_penalty, batch["attention_mask"]
        )
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=min(max_new_tokens, room),
            min_new_tokens=min_new_tokens,
            repetition_penalty=1.0,  # applied by penalty_ignoring_padding instead
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **penalty,
        )
    return out[:, batch["input_ids"].shape[1] :].cpu()


def _until_eos(tokens, eos_id: int) -> int:
    hits = (tokens == eos_id).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(tokens)
