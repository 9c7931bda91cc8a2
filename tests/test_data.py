"""Data loading and validation: messages name the file, row and field; templates match the
paper's."""

import json

import pytest

from pipeline.data.loading import (
    DataError,
    format_prompt,
    load_prompts,
    load_train,
    tokenize_examples,
)


def write(tmp_path, rows, name="train.json"):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return str(path)


GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi!"}


@pytest.mark.parametrize(
    "bad_row,field,why",
    [
        ({"instruction": "Say hi.", "input": ""}, "output", "missing"),
        ({"instruction": "Say hi.", "input": "", "output": "   "}, "output", "empty"),
        ({"instruction": 3, "input": "", "output": "x"}, "instruction", "int"),
        ({"instruction": "Say hi.", "input": ["a"], "output": "x"}, "input", "list"),
        ({"input": "", "output": "x"}, "instruction", "missing"),
    ],
)
def test_bad_training_rows_name_file_row_and_field(tmp_path, bad_row, field, why):
    path = write(tmp_path, [GOOD, GOOD, bad_row])
    with pytest.raises(DataError) as err:
        load_train(path)
    msg = str(err.value)
    assert path in msg and "row 2" in msg and f"'{field}'" in msg and why in msg


def test_non_object_row_and_non_list_file_are_rejected(tmp_path):
    with pytest.raises(DataError, match="row 1: is str"):
        load_train(write(tmp_path, [GOOD, "oops"]))
    (tmp_path / "obj.json").write_text(json.dumps({"instruction": "x"}))
    with pytest.raises(DataError, match="expected a JSON list"):
        load_train(str(tmp_path / "obj.json"))


def test_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2"):
        load_train(str(path))


def test_missing_file_says_so(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_train(str(tmp_path / "nope.json"))


def test_jsonl_and_missing_input_and_limit(tmp_path):
    rows = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(5)]
    recs = load_train(write(tmp_path, rows, "t.jsonl"), limit=3)
    assert [r["instruction"] for r in recs] == ["Q0", "Q1", "Q2"]
    assert all(r["input"] == "" for r in recs)


def test_prompts_get_default_dataset_and_reject_empty_instruction(tmp_path):
    recs = load_prompts(write(tmp_path, [{"instruction": "Tell a joke."}], "p.json"), "mine")
    assert recs == [{"instruction": "Tell a joke.", "input": "", "dataset": "mine"}]
    with pytest.raises(DataError, match="row 0: field 'instruction' is empty"):
        load_prompts(write(tmp_path, [{"instruction": ""}], "q.json"), "mine")


def test_shipped_datasets_are_valid_and_large_enough():
    train = load_train("pkg:default_train.json")
    prompts = load_prompts("pkg:default_eval.json", "x")
    assert len(train) >= 150 and len(prompts) >= 40
    lengths = sorted(len(r["output"]) for r in train)
    assert (
        lengths[len(lengths) // 6] < 100 and lengths[-len(lengths) // 6] > 500
    )  # short and long answers
    assert not {p["instruction"] for p in prompts} & {r["instruction"] for r in train}


def test_templates_end_as_in_the_paper():
    train_prompt = format_prompt({"instruction": "Do X.", "input": ""}, for_training=True)
    eval_prompt = format_prompt({"instruction": "Do X.", "input": ""}, for_training=False)
    assert train_prompt.endswith("### Instruction:\nDo X.\n\n### Response:")
    assert eval_prompt == train_prompt + "\n"
    with_input = format_prompt({"instruction": "Do X.", "input": "ctx"}, for_training=True)
    assert "### Input:\nctx\n\n### Response:" in with_input and "paired with an input" in with_input


class _CharTokenizer:
    """One token per character, no special tokens: lengths are easy to count."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


@pytest.mark.parametrize("max_length", [0, -1])
def test_tokenize_refuses_a_max_length_below_one_instead_of_cutting_the_eos(max_length):
    # Before: full_ids[:-1] trained every example without its EOS (and without any cap).
    with pytest.raises(ValueError, match=rf"finetune\.max_length={max_length}: must be >= 1"):
        tokenize_examples([GOOD], _CharTokenizer(), max_length)


def test_tokenize_keeps_the_eos_of_an_example_that_fits():
    prompt = format_prompt(GOOD, for_training=True)
    (example,), dropped = tokenize_examples([GOOD], _CharTokenizer(), len(prompt) + 4)
    assert dropped == 0 and example["input_ids"][-1] == 0
    assert example["labels"] == [-100] * len(prompt) + [ord(c) for c in "Hi!"] + [0]
