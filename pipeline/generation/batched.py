"""Batched generation with a Hugging Face model: left-padded batches in prompt order, greedy, a
repetition penalty that ignores padding, each answer dropped from its batch as it ends
(generation.greedy), resumable batch by batch (progress.jsonl).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.generation.greedy import greedy_shrinking
from pipeline.generation.progress import append_progress, read_progress


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
    bar = tqdm(total=len(texts), desc=desc, unit="answer")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if all(i in done for i in idx):
            bar.update(len(idx))
            continue
        answers = _answer_batch(
            model,
            tok,
            [texts[i] for i in idx],
            max_new_tokens,
            max_total_length,
            repetition_penalty,
            min_new_tokens,
            bar.update,
        )
        for tokens, i in zip(answers, idx):
            # A pad id the model emits as a word is not counted, as generate's padded output
            # counted it; EOS is (when it is not the pad).
            counts[i] = (
                sum(t != tok.pad_token_id for t in tokens)
                if tok.pad_token_id != tok.eos_token_id
                else len(tokens)
            )
            outputs[i] = tok.decode(tokens, skip_special_tokens=True).strip()
        if progress is not None:
            append_progress(progress, [(i, outputs[i], counts[i]) for i in idx])
    bar.close()
    return outputs, counts


def _answer_batch(
    model,
    tok,
    texts: list[str],
    max_new_tokens: int,
    max_total_length: int,
    repetition_penalty: float,
    min_new_tokens: int,
    answered=None,
) -> list[list[int]]:
    """The new tokens of each prompt of one left-padded batch, greedy, each ending at its EOS;
    `answered(n)` told as answers end."""
    batch = tok(texts, return_tensors="pt", padding=True).to(model.device)
    room = max_total_length - batch["input_ids"].shape[1]
    if room < max(min_new_tokens, 1):
        raise ValueError(
            f"a prompt of {batch['input_ids'].shape[1]} tokens leaves {room} new tokens within "
            f"max_total_length={max_total_length}; at least {max(min_new_tokens, 1)} are needed"
        )
    return greedy_shrinking(
        model,
        dict(batch),
        min(max_new_tokens, room),
        tok.eos_token_id,
        repetition_penalty,
        min_new_tokens,
        answered,
    )
