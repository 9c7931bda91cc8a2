"""overfit stage: how closely a fine-tuned model fits its training data (paper Figures 4-5).

All measured with noise off (the saved model carries no NEFTune hook, and it runs in eval mode):
  - loss (mean NLL per response token) of every sampled training example and of every
    held-out example;
  - greedy answers to a sample of training instructions, scored against the training responses
    with ROUGE-L (rouge-score, F-measure, 0-1) and BLEU (sacrebleu sentence BLEU, 0-100).
Writes per_example.json (the histograms' data) and metrics.json (the means).

Run: python -m pipeline.run experiment=default_all     (the main point runs it for base and +NEFT)
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from pipeline.data.loading import (
    check_source,
    format_prompt,
    load_train,
    pad_batch,
    records_digest,
    tokenize_examples,
)
from pipeline.generation.batched import generate_batched
from pipeline.models.devices import compute_device, release_accelerator_memory
from pipeline.models.loading import load_model_and_tokenizer
from pipeline.stages.contract import Call, Context
from pipeline.store.key_rules import device_params
from pipeline.store.store import StageResult, Store, readable_of, stage_key, write_json_atomic

# 2: generations with the padding-free repetition penalty (generation.batched.generate_batched)
VERSION = 2


def check(cfg) -> None:
    """Cheap: the numbers are in range and the held-out file exists (checked even when the
    stage is off: a config that turns it on later must not fail after training)."""
    o = cfg.overfit
    for key in ("batch_size", "max_new_tokens"):
        if o[key] < 1:
            raise ValueError(f"overfit.{key}={o[key]}: must be >= 1")
    for key in ("generate_sample", "heldout_limit", "loss_sample"):
        if o[key] is not None and o[key] < 0:
            raise ValueError(f"overfit.{key}={o[key]}: a number of rows, must be >= 0")
    penalty = float(o.repetition_penalty)
    if not (math.isfinite(penalty) and penalty > 0):
        raise ValueError(
            f"overfit.repetition_penalty={o.repetition_penalty}: a finite number > 0 "
            "(1.0 = off, the paper's 1.2)"
        )
    check_source(o.heldout, "overfit.heldout")


def run(cfg, ctx: Context, call: Call) -> StageResult:
    """Plan entry: noise-off losses and overlap of the chain's fine-tuned model."""
    return overfit(
        call.upstream["finetune"],
        cfg.overfit,
        cfg.data,
        cfg.finetune.max_length,
        cfg.model.dtype,
        ctx.store,
    )


def response_losses(
    model, tok, records: list[dict], max_length: int, batch_size: int, desc: str = "loss"
) -> tuple[list[float], int]:
    """Mean NLL per response token of each record (prompt masked, EOS included), in eval mode:
    no noise, no dropout.

    Truncated to `max_length` as in training; records whose prompt fills it (finetune drops
    those too) are skipped
    and counted: returns (losses, n_skipped).
    """
    examples, dropped = tokenize_examples(records, tok, max_length)
    was_training = model.training
    model.eval()
    losses: list[float] = []
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch"):
            batch = pad_batch(examples[start : start + batch_size], tok.pad_token_id)
            with torch.no_grad():
                logits = (
                    model(
                        input_ids=batch["input_ids"].to(model.device),
                        attention_mask=batch["attention_mask"].to(model.device),
                    )
                    .logits.float()
                    .cpu()
                )
            labels = batch["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none"
            )
            counted = (labels != -100).sum(dim=1)
            losses += (nll.sum(dim=1) / counted).tolist()
    finally:
        model.train(was_training)
    return losses, dropped


def overlap_scores(outputs: list[str], references: list[str]) -> tuple[list[float], list[float]]:
    """Per pair: ROUGE-L F-measure (0-1) and sentence BLEU (0-100) of `outputs` against
    `references`."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs vs {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, out)["rougeL"].fmeasure for out, ref in zip(outputs, references)]
    bleu = [sacrebleu.sentence_bleu(out, [ref]).score for out, ref in zip(outputs, references)]
    return rouge, bleu


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _samples(train: list[dict], overfit_cfg) -> tuple[list[dict], list[dict]]:
    """The training rows whose loss is measured and those whose instruction is answered."""
    rng = random.Random(overfit_cfg.seed)
    loss_rows = (
        train
        if overfit_cfg.loss_sample is None
        else rng.sample(train, min(overfit_cfg.loss_sample, len(train)))
    )
    gen_rows = random.Random(overfit_cfg.seed).sample(
        train, min(overfit_cfg.generate_sample, len(train))
    )
    return loss_rows, gen_rows


def _measure(
    model_dir: Path, rows: dict, overfit_cfg, max_length: int, dtype: str, work: Path
) -> dict:
    """Losses on `rows["loss"]` and `rows["heldout"]`, answers to `rows["generate"]`."""
    model, tok = load_model_and_tokenizer(str(model_dir), dtype, device=compute_device())
    batch = overfit_cfg.batch_size
    train_loss, train_skipped = response_losses(
        model, tok, rows["loss"], max_length, batch, "loss on training data"
    )
    heldout_loss, heldout_skipped = response_losses(
        model, tok, rows["heldout"], max_length, batch, "loss on held-out data"
    )
    gen_rows = rows["generate"]
    outputs, _ = generate_batched(
        model,
        tok,
        [format_prompt(r, for_training=False) for r in gen_rows],
        batch,
        overfit_cfg.max_new_tokens,
        max_length + overfit_cfg.max_new_tokens,
        overfit_cfg.repetition_penalty,
        desc="answer training instructions",
    )
    del model
    release_accelerator_memory()  # the next stage may need the whole GPU
    rouge, bleu = overlap_scores(outputs, [r["output"] for r in gen_rows])
    generations = [
        {
            "instruction": r["instruction"],
            "input": r["input"],
            "training_output": r["output"],
            "output": o,
        }
        for r, o in zip(gen_rows, outputs)
    ]
    write_json_atomic(
        work / "per_example.json",
        {
            "train_loss": train_loss,
            "heldout_loss": heldout_loss,
            "rougeL": rouge,
            "bleu": bleu,
            "generations": generations,
        },
    )
    return {
        "overfit_train_loss": _mean(train_loss),
        "overfit_heldout_loss": _mean(heldout_loss),
        "overfit_rougeL": _mean(rouge),
        "overfit_bleu": _mean(bleu),
        "overfit_n_train": len(train_loss),
        "overfit_n_heldout": len(heldout_loss),
        "overfit_n_generated": len(outputs),
        "overfit_heldout": overfit_cfg.heldout,
        "overfit_n_skipped_too_long": train_skipped + heldout_skipped,
    }


def overfit(
    finetuned: StageResult, overfit_cfg, data_cfg, max_length: int, dtype: str, store: Store
) -> StageResult:
    """Noise-off train/held-out losses and training-instruction overlap of the `finetuned` model."""
    train = load_train(data_cfg.train, data_cfg.train_limit)
    # Bad rows fail here, before the model loads.
    heldout = load_train(overfit_cfg.heldout, overfit_cfg.heldout_limit)
    loss_rows, gen_rows = _samples(train, overfit_cfg)
    params = (
        OmegaConf.to_container(overfit_cfg, resolve=True)
        | {
            "train": records_digest(train),
            "heldout_records": records_digest(heldout),
            "max_length": max_length,
            "dtype": str(dtype),  # plain str, not the schema's Enum member
        }
        | device_params(compute_device())
    )
    key = stage_key("overfit", readable_of(finetuned.key), params, [finetuned.key], VERSION)
    rows = {"loss": loss_rows, "heldout": heldout, "generate": gen_rows}

    def compute(work: Path) -> dict:
        return _measure(finetuned.path / "model", rows, overfit_cfg, max_length, dtype, work)

    return store.materialize(key, compute, config=params)
