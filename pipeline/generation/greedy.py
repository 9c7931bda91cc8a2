"""Greedy decoding of one left-padded batch that drops each answer from the batch as it ends.

transformers' `generate` keeps every row of a batch in every forward pass until the longest
answer ends (a finished row is fed padding), so a batch costs its longest answer times its size,
and on a CPU each step also streams every weight once for the whole batch. This loop runs the
same forward passes (the model's own forward, its KV cache, positions counted over each row's
real tokens, logits in fp32, the processors below, argmax) and, after each step, keeps only the
rows still answering (DynamicCache.batch_select_indices): a batch of 50 answers costs the sum
of its answers' lengths, and its weights are streamed once per step for all rows still going.
In fp32 an answer is the same alone and in any batch (the padding is masked; penalised nowhere),
so dropping rows changes no answer: tests hold it equal to `generate`'s, token for token.

What `generate` is not asked for here is not done: no sampling, beam or stop strings.
"""

from __future__ import annotations

import inspect

import torch


class PenaltyIgnoringPadding:
    """Repetition penalty (CTRL: a logit > 0 divided, < 0 multiplied by `penalty`) on the ids of
    each row after its first `pads[row]` positions, once per distinct id: each row's real tokens,
    prompt and answer, never its left padding. The arithmetic of transformers'
    RepetitionPenaltyLogitsProcessor, so that scores match it bit for bit; transformers' own
    penalises every id of the padded input, so with left padding (and pad == EOS, as for many
    models) an answer would depend on which prompts share its batch, and its per-row
    `prompt_ignore_length` is refused by transformers 5.17 and 5.18 (the GPU image's). vLLM,
    which does not pad, penalises exactly these tokens."""

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


def eos_suppressed(scores: torch.Tensor, eos_id: int, new_tokens: int, min_new_tokens: int):
    """EOS impossible until `min_new_tokens` new tokens exist (transformers'
    MinNewTokensLengthLogitsProcessor)."""
    if new_tokens < min_new_tokens:
        scores[:, eos_id] = -float("inf")
    return scores


def _cache_argument(model) -> str:
    """The name under which this transformers' model forward takes the KV cache: `cache` since
    transformers renamed it (5.25 has it; `past_key_values` warns there and goes in 5.40),
    `past_key_values` before (the GPU image's 5.17). A PEFT wrapper is asked for its base."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.inference_mode()
def greedy_shrinking(
    model,
    batch: dict,
    max_new_tokens: int,
    eos_id: int,
    repetition_penalty: float = 1.0,
    min_new_tokens: int = 0,
    answered=None,
) -> list[list[int]]:
    """The new tokens of each row of `batch` (a tokenizer's left-padded input_ids and
    attention_mask on the model's device), greedy, each list ending at its EOS (included) or at
    `max_new_tokens`; `repetition_penalty` over each row's real tokens (1.0: none).
    `answered(n)`, if given, is told each time n answers end (a progress bar)."""
    from transformers import DynamicCache

    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    pads = (mask == 0).sum(dim=1)  # left padding: the first `pads` positions of each row
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # each live row's index
    answers: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    cache = DynamicCache()
    cache_kwarg = _cache_argument(model)
    step_ids = input_ids
    for step in range(max_new_tokens):
        # Positions over each row's real tokens (left padding counts none), as generate gives.
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions[:, -step_ids.shape[1] :],
            use_cache=True,
            **{cache_kwarg: cache},
        )
        scores = out.logits[:, -1, :].to(torch.float32)
        scores = eos_suppressed(scores, eos_id, step, min_new_tokens)
        if repetition_penalty != 1.0:
            scores = PenaltyIgnoringPadding(repetition_penalty, pads[rows])(input_ids, scores)
        chosen = torch.argmax(scores, dim=-1)
        for row, token in zip(rows.tolist(), chosen.tolist()):
            answers[row].append(token)
        going = chosen != eos_id
        if answered is not None and (ended := int((~going).sum())):
            answered(ended)
        if not bool(going.any()):
            break
        input_ids = torch.cat([input_ids, chosen[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        step_ids = chosen[:, None]
        if not bool(going.all()):  # drop the rows that answered: their cache too
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, input_ids, mask, step_ids = (
                rows[keep],
                input_ids[keep],
                mask[keep],
                step_ids[keep],
            )
    else:  # max_new_tokens reached: the rows still going end here
        if answered is not None:
            answered(len(rows))
    return answers
