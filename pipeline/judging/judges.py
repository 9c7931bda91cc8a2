"""Judges of AlpacaEval pairs, through the alpaca-eval package (its annotators and caching).

Judges (conf/judge/): the paper's API judges (`alpaca_eval_gpt4`, `chatgpt_fn`: AlpacaEval 1;
`weighted_alpaca_eval_gpt4_turbo`: AlpacaEval 2 with length control), an OpenAI-compatible server
(e.g. vLLM), and `local`: a local Hugging Face causal LM plugged in as alpaca_eval's
`fn_completions`, which answers "Output (a)"/"Output (b)" by comparing its next-token logits and
is asked in both orders so that its position bias cancels. Shared by the alpaca_eval and
judge_calibration stages. Each judge.kind is a JudgeKind of pipeline/judging/kinds/ (one module
each: its check, its annotator config and arguments, its key params), looked up by name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.loading import ASSETS, check_encodable, judged_instruction
from pipeline.judging.alpaca_import import JudgeError, import_alpaca_eval, pin_alpaca_eval_version
from pipeline.judging.kinds import judge_kind, judge_settings
from pipeline.store.key_rules import judge_params
from pipeline.store.store import StageResult, Store


@dataclass(frozen=True)
class Reference:
    """Outputs to compare against: AlpacaEval reference outputs or a generate stage's outputs."""

    label: str
    key: str  # a stage key, or a content hash of a reference file
    records: list


def load_reference(source: str) -> Reference:
    """Reference outputs from an AlpacaEval-format file (path or pkg:<asset>)."""
    path = ASSETS / source[len("pkg:") :] if source.startswith("pkg:") else Path(source)
    if not path.is_file():
        raise JudgeError(
            f"generate.reference={source!r}: no such file ({path.resolve()}); "
            "give AlpacaEval-format reference outputs"
        )
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except ValueError as err:
        raise JudgeError(
            f"{path}: not valid JSON ({err}); expected AlpacaEval-format reference outputs"
        ) from err
    if not isinstance(records, list):
        raise JudgeError(f"{path}: top level is {type(records).__name__}; expected a list")
    check_encodable(str(path), records)
    for i, rec in enumerate(records):
        for field in ("instruction", "output"):
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise JudgeError(f"{path}: record {i} has no string field '{field}'")
    _check_one_answer_each(records, source)
    generator = records[0].get("generator", path.stem) if records else path.stem
    return Reference(
        label=str(generator), key=hashlib.sha256(text.encode()).hexdigest()[:16], records=records
    )


def _check_one_answer_each(records: list, source: str) -> None:
    """One reference answer per instruction (as the judge reads it: judged_instruction).

    pairs_against looks answers up by instruction, so of two records with one instruction the
    last would be judged against, silently. Two records with the same output are let through:
    whichever is looked up, every judged pair is the same (a file concatenated with a copy of
    itself, say); two different outputs are refused, since which one is meant is not ours to
    guess."""
    first: dict[str, int] = {}
    for i, rec in enumerate(records):
        text = judged_instruction(rec)
        j = first.setdefault(text, i)
        if j != i and records[j]["output"] != rec["output"]:
            raise JudgeError(
                f"generate.reference={source!r}: records {j} and {i} answer the same "
                f"instruction differently ({text[:80]!r}); keep the one the win rate should be "
                "judged against and drop the other"
            )


def reference_from_stage(stage: StageResult, label: str) -> Reference:
    records = json.loads((stage.path / "outputs.json").read_text(encoding="utf-8"))
    return Reference(label=label, key=stage.key, records=records)


def validate_judge(judge_cfg) -> None:
    """Fail before any training or generation when the judge cannot run."""
    kind = judge_kind(judge_cfg.kind)  # an unknown kind names the registered ones
    judge_settings(judge_cfg)  # its own settings: keys and types (an unknown key is named)
    if judge_cfg.alpaca_eval_version not in (1, 2):
        raise JudgeError(
            f"judge.alpaca_eval_version={judge_cfg.alpaca_eval_version!r}: use 1 (the paper's) or 2"
        )
    kind.validate(judge_cfg)  # the kind's own reasons first (a missing key says so)
    # Then the process's AlpacaEval version: every job checks its judge here before any stage or
    # table, and alpaca_eval keeps the version of its first import for the whole process. Pinned
    # only when a judge was built, a sweep rerun whose stages were all reused imported
    # alpaca_eval first in point #0's aggregation, unpinned, and point #1's judge then failed.
    pin_alpaca_eval_version(judge_cfg.alpaca_eval_version)


def annotator(judge_cfg, work: Path, cache: Store, fn_completions=None):
    """alpaca_eval's pairwise annotator for `judge_cfg`, caching its valid verdicts in `work`.

    An API key is handed to alpaca_eval in memory only; no file written here contains it.
    """
    import_alpaca_eval(judge_cfg.alpaca_eval_version)
    from pipeline.judging.cache import annotator_class

    kind = judge_kind(judge_cfg.kind)
    config, extra = kind.annotator_args(judge_cfg, work, cache, fn_completions)
    if not config.is_file():
        raise JudgeError(
            f"judge.annotator={judge_cfg.annotator!r}: no annotator config at {config}"
        )
    judge = annotator_class()(
        annotators_config=str(config),
        caching_path=str(work / "annotations.json"),
        is_randomize_output_order=not judge_cfg.both_orders,
        **extra,
    )
    judge.judge_name = judge_cfg.name
    kind.prepare(judge, judge_cfg)
    return judge


def judge_pairs(annotator, pairs: list[dict], both_orders: bool) -> list[dict]:
    """One preference per pair (1 = output_1/reference, 2 = output_2/model).

    With `both_orders`, each pair is also judged swapped and the two verdicts are averaged. Raises
    JudgeError when any verdict is invalid, after the valid ones are cached (see judge_cache).
    """
    forward = annotator.annotate_pairs(pairs)
    if not both_orders:
        _raise_if_invalid(annotator, forward, ["preference"])
        return forward
    swapped = [
        {
            **p,
            "output_1": p["output_2"],
            "output_2": p["output_1"],
            "generator_1": p["generator_2"],
            "generator_2": p["generator_1"],
        }
        for p in pairs
    ]
    backward = annotator.annotate_pairs(swapped)
    scored = [
        {**f, "preference_forward": f["preference"], "preference_backward": b["preference"]}
        for f, b in zip(forward, backward)
    ]
    _raise_if_invalid(annotator, scored, ["preference_forward", "preference_backward"])
    for s in scored:
        # f + (3 - b) as earlier versions summed it: published win rates keep their exact bits
        s["preference"] = (s["preference_forward"] + (3 - s["preference_backward"])) / 2
    return scored


def _raise_if_invalid(annotator, scored: list[dict], fields: list[str]) -> None:
    from pipeline.judging.cache import invalid_verdicts_message

    message = invalid_verdicts_message(annotator, scored, fields)
    if message:
        raise JudgeError(message)


def check_references(prompts: list[dict], reference: Reference, where: str, source: str) -> None:
    """Every prompt has a reference answer, matched as pairs_against will match the generate
    stage's outputs: by judged_instruction (instruction, and its input where it has one)."""
    known = {judged_instruction(r) for r in reference.records}
    missing = [i for i, p in enumerate(prompts) if judged_instruction(p) not in known]
    if missing:
        raise JudgeError(
            f"{where}: {len(missing)} of {len(prompts)} prompts have no reference answer in "
            f"generate.reference={source!r}, first row {missing[0]} "
            f"({judged_instruction(prompts[missing[0]])[:80]!r}); add their answers or drop them"
        )


def pairs_against(outputs: list[dict], reference: Reference, where: str) -> list[dict]:
    # outputs.json records carry the input inside `instruction` already (no input field);
    # a reference file may hold it apart, as the prompts do: judged_instruction joins both.
    ref_by_instruction = {judged_instruction(r): r for r in reference.records}
    missing = [o["instruction"] for o in outputs if o["instruction"] not in ref_by_instruction]
    if missing:
        raise JudgeError(
            f"{where}: {len(missing)} instructions have no reference output in "
            f"{reference.label}, e.g. {missing[0][:80]!r}"
        )
    return [
        {
            "instruction": o["instruction"],
            "output_1": ref_by_instruction[o["instruction"]]["output"],
            "output_2": o["output"],
            "generator_1": reference.label,
            "generator_2": o["generator"],
            "dataset": o.get("dataset", ""),
        }
        for o in outputs
    ]


def judge_key_params(judge_cfg) -> dict:
    """The judge's part of a stage key: its config (what every judge has, and its kind's typed
    settings), and what its kind adds (a local judge: its device where it is not the CPU, since
    a GPU's numerics can flip a close verdict)."""
    from omegaconf import OmegaConf

    from pipeline.config.choices import plain
    from pipeline.config.schema import config_params

    shared = {k: v for k, v in plain(judge_cfg).items() if k != "settings"}
    settings = plain(judge_settings(judge_cfg))
    judge = config_params(OmegaConf.create(judge_params(shared, settings)))
    return {"judge": judge} | judge_kind(judge_cfg.kind).key_params(judge_cfg)
