"""Overfitting analysis (Figs 4-5) and the shared generation loop, on the tiny random Llama:
numbers with known answers."""

import pytest
import torch

from pipeline.data.loading import load_train, tokenize_examples
from pipeline.generation.batched import generate_batched
from pipeline.models.loading import base_model_dir, load_model_and_tokenizer
from pipeline.stages.overfit import overlap_scores, response_losses
from pipeline.store.store import Store
from pipeline.train.noise import attach_neftune
from tests.support.composed import composed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model_cfg = composed("model=tiny").model
    model, tok = load_model_and_tokenizer(
        base_model_dir(model_cfg, Store(tmp_path_factory.mktemp("cache"))), "float32"
    )
    return model, tok


RECORDS = load_train("pkg:default_train.json", limit=6)


def test_overlap_of_identical_texts_is_perfect_and_of_disjoint_texts_zero():
    texts = [
        "The cat sat on the mat and looked out of the window.",
        "Paris is the capital of France.",
    ]
    rouge, bleu = overlap_scores(texts, texts)
    assert rouge == pytest.approx([1.0, 1.0]) and bleu == pytest.approx([100.0, 100.0])
    rouge, bleu = overlap_scores(["alpha beta gamma delta"], ["one two three four"])
    assert rouge == [0.0] and bleu == [0.0]
    rouge, _ = overlap_scores(["a b c d"], ["a b x y"])  # LCS 2 of 4 each way: F = 0.5
    assert rouge == pytest.approx([0.5])
    with pytest.raises(ValueError, match="2 outputs vs 1 references"):
        overlap_scores(texts, texts[:1])


def test_loss_equals_the_models_own_loss_on_the_response_tokens(tiny):
    model, tok = tiny
    (example,), _ = tokenize_examples(RECORDS[:1], tok, 256)
    with torch.no_grad():
        expected = model(
            input_ids=torch.tensor([example["input_ids"]]), labels=torch.tensor([example["labels"]])
        ).loss.item()
    losses, skipped = response_losses(model, tok, RECORDS[:1], 256, 1)
    assert skipped == 0 and losses == pytest.approx([expected], rel=1e-5)


def test_batched_padded_losses_equal_one_at_a_time(tiny):
    model, tok = tiny
    one_by_one, _ = response_losses(model, tok, RECORDS, 256, 1)
    batched, _ = response_losses(model, tok, RECORDS, 256, 4)
    assert batched == pytest.approx(one_by_one, rel=1e-4)
    assert len(set(round(x, 6) for x in batched)) == len(RECORDS)  # really per example


def test_loss_is_measured_without_noise_even_with_a_neftune_hook_in_training_mode(tiny):
    model, tok = tiny
    clean, _ = response_losses(model, tok, RECORDS, 256, 3)
    handle = attach_neftune(model, alpha=50.0)
    model.train()
    try:
        (example,), _ = tokenize_examples(RECORDS[:1], tok, 256)
        ids = torch.tensor([example["input_ids"]])
        with torch.no_grad():  # the hook does act in training mode, so the check below can fail
            assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
        noisy_hook, _ = response_losses(model, tok, RECORDS, 256, 3)
        again, _ = response_losses(model, tok, RECORDS, 256, 3)
        assert model.training  # the caller's mode is restored
    finally:
        handle.remove()
        model.eval()
    assert noisy_hook == clean and again == clean  # noise off: deterministic, bit for bit


def test_records_whose_prompt_fills_max_length_are_skipped_and_counted(tiny):
    model, tok = tiny
    shortest_prompt = min(len(tok(r["instruction"])["input_ids"]) for r in RECORDS)
    losses, skipped = response_losses(model, tok, RECORDS, shortest_prompt + 40, 2)
    assert skipped > 0 and len(losses) + skipped == len(RECORDS)


def test_generation_keeps_input_order_and_honours_min_new_tokens(tiny):
    model, tok = tiny
    prompts = [f"### Instruction:\n{r['instruction']}\n\n### Response:\n" for r in RECORDS]
    free, free_counts = generate_batched(model, tok, prompts, 4, 8, 1024, 1.2)
    forced, counts = generate_batched(model, tok, prompts, 4, 30, 1024, 1.2, min_new_tokens=25)
    assert min(counts) >= 25 and max(free_counts) <= 8
    single = [generate_batched(model, tok, [p], 1, 8, 1024, 1.2)[0][0] for p in prompts[:2]]
    assert (
        free[:2] == single
    )  # batch position does not change a greedy answer, and outputs come back in input order
    with pytest.raises(ValueError, match="max_total_length=20"):
        generate_batched(model, tok, prompts, 4, 8, 20, 1.2)
