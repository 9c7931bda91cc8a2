"""Batched generation as a GPU runs it, checked on a CPU: the repetition penalty skips left
padding (as vLLM does), an fp32 answer is the same alone and in any batch, and a killed run's
finished batches are taken up again."""

from __future__ import annotations

import json

import pytest
import torch


def test_penalty_skips_left_padding_as_vllm_does():
    """HF's repetition_penalty penalises the pad id of a padded row; ours only real tokens."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from pipeline.generation.greedy import PenaltyIgnoringPadding

    pad, vocab = 0, 6
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0, 0.1]] * 2)
    ids = torch.tensor([[pad, pad, 3, 4], [5, 5, 3, 4]])  # row 0 padded, row 1 not
    mask = (torch.arange(4) >= torch.tensor([[2], [0]])).long()
    ours = PenaltyIgnoringPadding(1.2, (mask == 0).sum(dim=1))(ids, scores.clone())
    alone = RepetitionPenaltyLogitsProcessor(1.2)(ids[:1, 2:], scores[:1].clone())
    assert torch.equal(ours[0], alone[0])  # the padded row is penalised as if alone
    assert ours[0, pad] == 2.0 and ours[0, 3] == -1.2 and ours[0, 4] == 2.5
    hf = RepetitionPenaltyLogitsProcessor(1.2)(ids, scores.clone())
    assert hf[0, pad] != 2.0 and vocab == scores.shape[1]  # what made answers batch-dependent


def _rows_and_scores(rows: int = 6, length: int = 9, vocab: int = 40):
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (rows, length))
    scores = torch.randn(rows, vocab) * 3  # both signs: the penalty multiplies or divides
    return ids, scores


@pytest.mark.parametrize("pads", [0, 3])
def test_penalty_equals_transformers_own_on_rows_padded_alike(pads):
    """With the same padding in every row, transformers' processor with an integer
    prompt_ignore_length (every 5.x has it) is the exact reference for ours."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from pipeline.generation.greedy import PenaltyIgnoringPadding

    ids, scores = _rows_and_scores()
    mask = (torch.arange(ids.shape[1]) >= pads).long().expand_as(ids)
    ours = PenaltyIgnoringPadding(1.2, (mask == 0).sum(dim=1))(ids, scores.clone())
    theirs = RepetitionPenaltyLogitsProcessor(1.2, prompt_ignore_length=pads or None)
    assert torch.equal(ours, theirs(ids, scores.clone()))


def test_penalty_needs_no_per_row_lengths_from_transformers(monkeypatch):
    """transformers 5.17 and 5.18 reject a per-row tensor prompt_ignore_length (ValueError at
    every generation with a penalty): ours must not depend on it."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from pipeline.generation.greedy import PenaltyIgnoringPadding

    original = RepetitionPenaltyLogitsProcessor.__init__

    def as_in_5_17(self, penalty, prompt_ignore_length=None):
        if prompt_ignore_length is not None and not isinstance(prompt_ignore_length, int):
            raise ValueError("`prompt_ignore_length` has to be a positive integer")
        original(self, penalty, prompt_ignore_length)

    monkeypatch.setattr(RepetitionPenaltyLogitsProcessor, "__init__", as_in_5_17)
    ids, scores = _rows_and_scores(rows=2, length=4, vocab=6)
    mask = (torch.arange(4) >= torch.tensor([[2], [0]])).long()
    ours = PenaltyIgnoringPadding(1.2, (mask == 0).sum(dim=1))(ids, scores.clone())
    for row, pads in enumerate((2, 0)):  # each row as transformers penalises it alone
        alone = RepetitionPenaltyLogitsProcessor(1.2)(
            ids[row : row + 1, pads:], scores[row : row + 1].clone()
        )
        assert torch.equal(ours[row], alone[0])


def _accepts_per_row_lengths() -> bool:
    from transformers import RepetitionPenaltyLogitsProcessor

    try:
        RepetitionPenaltyLogitsProcessor(1.2, torch.tensor([1, 0]))
    except ValueError:
        return False
    return True


def test_penalty_is_what_transformers_per_row_lengths_give_where_it_has_them():
    """Where transformers takes per-row lengths (5.19 on), ours gives the same scores: the
    answers of the default are what they were before it stopped relying on that."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from pipeline.generation.greedy import PenaltyIgnoringPadding

    if not _accepts_per_row_lengths():
        pytest.skip("this transformers has no per-row prompt_ignore_length (5.17, 5.18)")
    ids, scores = _rows_and_scores()
    pads = torch.tensor([0, 1, 4, 8, 9, 2])  # 9: a row with no real token
    mask = (torch.arange(ids.shape[1]) >= pads[:, None]).long()
    ours = PenaltyIgnoringPadding(1.2, (mask == 0).sum(dim=1))(ids, scores.clone())
    assert torch.equal(ours, RepetitionPenaltyLogitsProcessor(1.2, pads)(ids, scores.clone()))


@pytest.mark.e2e
def test_an_fp32_answer_is_the_same_alone_and_in_any_batch():
    from pipeline.data.loading import ASSETS, format_prompt
    from pipeline.generation.batched import generate_batched

    model, tok = _tiny_model(pad_is_eos=True)  # pad == EOS, as for many real tokenizers
    rows = json.loads((ASSETS / "default_eval.json").read_text(encoding="utf-8"))[:10]
    texts = [
        format_prompt({"instruction": r["instruction"], "input": r.get("input", "")}, False)
        for r in rows
    ]
    alone = [generate_batched(model, tok, [t], 1, 24, 1024, 1.2)[0][0] for t in texts]
    for batch in (3, 10):
        assert generate_batched(model, tok, texts, batch, 24, 1024, 1.2)[0] == alone


def test_generation_continues_from_the_batches_a_killed_run_wrote(tmp_path):
    """A requeued generate job skips the batches it finished (805 prompts of a 7B model are
    not redone), and runs the rest in the same batches as an uninterrupted run."""
    from pipeline.generation.batched import generate_batched

    model, tok = _tiny_model()
    texts = [f"Name {n} colours." for n in ("two", "three", "four", "five")]
    full, full_counts = generate_batched(model, tok, texts, 2, 8, 256, 1.2)
    progress = tmp_path / "progress.jsonl"
    assert generate_batched(model, tok, texts, 2, 8, 256, 1.2, progress=progress)[0] == full
    first_batch = [json.loads(line) for line in progress.read_text().splitlines()[:2]]
    for row in first_batch:  # marked, to see that they are taken, not recomputed
        row["output"] = f"KEPT {row['i']}"
    progress.write_text("".join(json.dumps(r) + "\n" for r in first_batch) + '{"i": 2, "ou')
    resumed, counts = generate_batched(model, tok, texts, 2, 8, 256, 1.2, progress=progress)
    kept = {row["i"] for row in first_batch}
    assert all(resumed[i] == f"KEPT {i}" for i in kept)
    assert [o for i, o in enumerate(resumed) if i not in kept] == [
        o for i, o in enumerate(full) if i not in kept
    ] and counts == full_counts
    assert len(progress.read_text().splitlines()) == 2 + 2  # kept, the cut line dropped, 1 batch


def _tiny_model(pad_is_eos: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.models.loading import build_tiny_tokenizer

    tok = build_tiny_tokenizer(512)
    if pad_is_eos:
        tok.pad_token = tok.eos_token
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tok


def _generate_as_transformers(model, tok, texts, max_new, penalty, min_new, eos):
    """transformers' own generate on the batch, with our penalty as its logits processor: the
    reference the shrinking decoder is held to, each row cut after its EOS."""
    from transformers import LogitsProcessorList

    from pipeline.generation.greedy import PenaltyIgnoringPadding

    batch = tok(texts, return_tensors="pt", padding=True)
    extra = {}
    if penalty != 1.0:
        pads = (batch["attention_mask"] == 0).sum(dim=1)
        extra["logits_processor"] = LogitsProcessorList([PenaltyIgnoringPadding(penalty, pads)])
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=max_new,
            min_new_tokens=min_new,
            repetition_penalty=1.0,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos,
            **extra,
        )
    rows = []
    for new in out[:, batch["input_ids"].shape[1] :].tolist():
        rows.append(new[: new.index(eos) + 1] if eos in new else new)
    return rows


@pytest.mark.parametrize("pad_is_eos", [False, True])
@pytest.mark.parametrize("penalty,min_new", [(1.2, 0), (1.0, 0), (1.2, 6)])
def test_the_shrinking_decoder_answers_as_transformers_generate(pad_is_eos, penalty, min_new):
    """Greedy answers of rows that end at different steps (the EOS is a token the model emits
    at various points, so rows leave the batch one by one) equal generate's, token for token,
    padding and penalty included: dropping a finished row changes no other row's answer."""
    from pipeline.data.loading import ASSETS, format_prompt
    from pipeline.generation.greedy import greedy_shrinking

    model, tok = _tiny_model(pad_is_eos=pad_is_eos)
    model.eval()
    tok.padding_side = "left"
    rows = json.loads((ASSETS / "default_eval.json").read_text(encoding="utf-8"))[:8]
    texts = [format_prompt(r, for_training=False) for r in rows]
    # Without an EOS the rows run to the end: take as EOS a token they emit at varied steps.
    free = _generate_as_transformers(model, tok, texts, 24, penalty, 0, eos=-1)
    firsts = {}
    for row in free:
        for step, token in enumerate(row):
            firsts.setdefault(token, set()).add(step if token in row else None)
    eos = max(firsts, key=lambda t: (len(firsts[t]), -t))
    reference = _generate_as_transformers(model, tok, texts, 24, penalty, min_new, eos)
    assert len({len(r) for r in reference}) > 2  # rows do leave at different steps
    batch = dict(tok(texts, return_tensors="pt", padding=True))
    assert greedy_shrinking(model, batch, 24, eos, penalty, min_new) == reference
