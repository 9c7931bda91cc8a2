"""Instruction data: loading (local JSON/JSONL, shipped assets, Hugging Face datasets),
validation, templates.

A data source is one of
  - "pkg:<file>"                      a file shipped in pipeline/assets/
  - "hf:<dataset>[:<config>][@<split>]"  a Hugging Face dataset (split defaults to train)
  - any other string                  a local .json (list of records) or .jsonl path
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"

# Stanford Alpaca templates. Training prompts end with "### Response:" and the response follows
# directly; the paper's evaluation prompts end with "### Response:\n".
PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


# The fewest tokens an Alpaca training example can have: the no-input template with a
# one-character instruction is 30 tokens in SmolLM2's tokenizer and in the tiny BPE (trained on
# this very template, so as short as a tokenizer makes it), plus one response token and the EOS.
# A finetune.max_length below it truncates every example to template only (rows dropped, or
# trained without their EOS); the paper uses 512.
SHORTEST_TRAIN_EXAMPLE = 32


class DataError(ValueError):
    """A dataset file or row that cannot be used; the message names file, row and field."""


def format_prompt(record: dict, for_training: bool) -> str:
    """Alpaca prompt for `record`; evaluation prompts get the trailing newline the paper used."""
    template = PROMPT_INPUT if record.get("input") else PROMPT_NO_INPUT
    prompt = template.format(instruction=record["instruction"], input=record.get("input", ""))
    return prompt if for_training else prompt + "\n"


def judged_instruction(record: dict) -> str:
    """The instruction of `record` as outputs.json carries it and the judge reads it: with its
    input, if any, after a blank line. alpaca_eval's format has no input field and its judges
    see only `instruction`, so the input must be inside it, or the judge would compare answers
    to a task it cannot see; a prompt's identity (duplicates, its reference answer) is this text
    too, on every side (generate's outputs, prompts, reference files with or without inputs)."""
    return (
        f"{record['instruction']}\n\n{record['input']}"
        if record.get("input")
        else record["instruction"]
    )


def check_source(source: str, key: str) -> None:
    """Check of the data source of config `key` before any training: a local file exists, is
    UTF-8 and parses as JSON/JSONL (hub sources are not checked)."""
    if source is None:  # data=sharegpt reads paths.sharegpt_train, which has no default
        raise DataError(
            f"{key} is not set: for data=sharegpt give paths.sharegpt_train=<an "
            "Alpaca-format export of the 512-token chunks>; else set it directly"
        )
    if source.startswith("hf:"):
        return
    path = (
        ASSETS / source[len("pkg:") :] if source.startswith("pkg:") else Path(source).expanduser()
    )
    if not path.is_file():
        raise DataError(
            f"{key}={source!r}: no such file ({path.resolve()}); give a local .json/.jsonl path, "
            "pkg:<file in pipeline/assets> or hf:<dataset>"
        )
    # Read now: a file that cannot be decoded or parsed must not be found after training.
    try:
        _read_rows(source)
    except DataError as err:
        raise DataError(f"{key}: {err}") from err


def _read_rows(source: str) -> tuple[str, list]:
    if source.startswith("pkg:"):
        path = ASSETS / source[len("pkg:") :]
    elif source.startswith("hf:"):
        rows = _read_hub(source[len("hf:") :])
        check_encodable(source, rows)
        return source, rows
    else:
        path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(
            f"{source}: no such file ({path.resolve()}); give a local .json/.jsonl path, "
            "pkg:<file> or hf:<dataset>"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); re-save it as UTF-8"
        ) from err
    try:
        if path.suffix == ".jsonl":
            rows = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(
                            f"{path}: line {lineno} is not valid JSON ({err.msg}); fix or remove "
                            "that line"
                        ) from err
        else:
            rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}); expected a list of records"
        ) from err
    if not isinstance(rows, list):
        raise DataError(
            f"{path}: top level is {type(rows).__name__}; expected a JSON list of records (or use "
            ".jsonl)"
        )
    check_encodable(str(path), rows)
    return str(path), rows


def _lone_surrogate(value) -> str | None:
    """The field path of the first string under `value` that is not encodable as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"character {err.start} ({value[err.start]!a})"
        return None
    items = (
        value.items()
        if isinstance(value, dict)
        else (enumerate(value) if isinstance(value, list) else ())
    )
    for name, item in items:
        found = _lone_surrogate(item)
        if found is not None:
            return f"field {name!r}, {found}" if isinstance(value, dict) else f"[{name}] {found}"
    return None


def check_encodable(name: str, rows: list) -> None:
    # JSON's \ud800 escapes parse into lone surrogates, which no tokenizer or file can take:
    # found here, before training, rather than inside the tokenizer after a stage is stored.
    for i, row in enumerate(rows):
        found = _lone_surrogate(row)
        if found is not None:
            raise DataError(
                f"{name}: row {i}: {found} is a lone UTF-16 surrogate, not text; "
                "fix or drop that row"
            )


def _read_hub(spec: str) -> list:
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    import datasets

    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as err:  # the hub is unreachable offline; say so plainly
        raise DataError(
            f"hf:{spec}: could not load the Hugging Face dataset ({type(err).__name__}: {err}). "
            "Offline? Download it elsewhere and point data.train / generate.prompts at a local "
            "JSON file."
        ) from err
    return [dict(r) for r in ds]


def _check_str(where: str, row: dict, field: str, required: bool, nonempty: bool) -> None:
    if field not in row:
        if required:
            raise DataError(f"{where}: missing field '{field}'; every record needs it")
        return
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' is {type(value).__name__}, expected a string")
    if nonempty and not value.strip():
        raise DataError(f"{where}: field '{field}' is empty; fill it in or drop the row")


def _validated_rows(source: str, limit: int | None, what: str, fields: tuple) -> list[dict]:
    """Rows of `source` (first `limit`), each checked against `fields`: (name, required,
    nonempty)."""
    name, rows = _read_rows(source)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{name}: no {what}")
    for i, row in enumerate(rows):
        where = f"{name}: row {i}"
        if not isinstance(row, dict):
            raise DataError(
                f"{where}: is {type(row).__name__}, expected an object with "
                f"{'/'.join(f[0] for f in fields)}"
            )
        for field, required, nonempty in fields:
            _check_str(where, row, field, required, nonempty)
    return rows


def load_train(source: str, limit: int | None = None) -> list[dict]:
    """Alpaca-format training records {instruction, input, output}, validated; the first
    `limit` rows if set."""
    rows = _validated_rows(
        source,
        limit,
        "training records",
        (("instruction", True, True), ("input", False, False), ("output", True, True)),
    )
    return [
        {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
        for r in rows
    ]


def load_prompts(
    source: str, default_dataset: str, limit: int | None = None, key: str = "generate.prompts"
) -> list[dict]:
    """Evaluation prompts {instruction, input, dataset} (AlpacaEval format), validated; a
    prompt given twice is refused (`key` names the config key in the message)."""
    rows = _validated_rows(
        source,
        limit,
        "evaluation prompts",
        (("instruction", True, True), ("input", False, False), ("dataset", False, True)),
    )
    # Every prompt is one sample of the win rate and of its bootstrap: a repeated one would
    # count twice, and its two answers would be judged against one reference answer.
    first_row: dict[str, int] = {}
    for i, row in enumerate(rows):
        text = judged_instruction(row)
        if text in first_row:
            raise DataError(
                f"{key}: {source}: rows {first_row[text]} and {i} hold the same prompt "
                f"({text[:80]!r}); a repeated prompt counts twice in the win rate and its "
                "bootstrap: drop one of them"
            )
        first_row[text] = i
    return [
        {
            "instruction": r["instruction"],
            "input": r.get("input", ""),
            "dataset": r.get("dataset", default_dataset),
        }
        for r in rows
    ]


def records_digest(records: list[dict]) -> str:
    """Content hash of validated records: a stage keyed by it is recomputed when the data change."""
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]


def tokenize_examples(records: list[dict], tok, max_length: int) -> tuple[list[dict], int]:
    """input_ids/labels with the prompt masked (-100) and EOS appended; drops rows with no
    response left."""
    if max_length < 1:  # full_ids[:-1] would keep everything but the EOS
        raise ValueError(
            f"finetune.max_length={max_length}: must be >= 1 (tokens per example, prompt + "
            f"response + EOS; at least {SHORTEST_TRAIN_EXAMPLE} to hold any example)"
        )
    examples, dropped = [], 0
    for rec in records:
        source = format_prompt(rec, for_training=True)
        source_ids = tok(source, add_special_tokens=True)["input_ids"]
        full_ids = tok(source + rec["output"], add_special_tokens=True)["input_ids"] + [
            tok.eos_token_id
        ]
        full_ids = full_ids[:max_length]
        if len(source_ids) >= len(full_ids):
            dropped += 1
            continue
        labels = [-100] * len(source_ids) + full_ids[len(source_ids) :]
        examples.append({"input_ids": full_ids, "labels": labels})
    return examples, dropped


def pad_batch(features: list[dict], pad_id: int) -> dict:
    """Right-pad a training batch; padding is masked out of attention and loss."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        labels[i, :n] = torch.tensor(f["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
