"""Values that used to pass the checks and then trained something other than what they say, or
failed only after training (issue 26, items 1, 2, 3, 9, 10, 13, 15): each is now refused by
plan.check_all (or the stage check it runs) naming the key and the fix. The same cases through
the real `python -m pipeline.run` are in tests/faults/test_silent_numbers.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.data.loading import DataError, load_prompts
from pipeline.judging.judges import JudgeError, load_reference, pairs_against
from pipeline.plan import check_all
from tests.support.composed import SMOKE, composed

TINY = (*SMOKE, "openllm=none")
ASSETS = Path(__file__).resolve().parents[1] / "pipeline" / "assets"


def refused(*overrides: str, match: str, error=ValueError):
    with pytest.raises(error, match=match) as caught:
        check_all(composed(*TINY, *overrides))
    return str(caught.value)


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


# --- item 1: one seed given twice ----------------------------------------------------------------


@pytest.mark.parametrize("seeds", ["[42,42]", "[1,2,1]"])
def test_a_seed_given_twice_is_refused_naming_the_key_and_the_fix(seeds):
    # Before: one trained model counted twice, "± 0.00 (sd, 2 seeds)" over the same stage key.
    message = refused(f"seeds={seeds}", match=r"seeds=\[.*\]: seed (42|1) is given twice")
    assert "distinct seeds" in message


def test_distinct_seeds_pass_the_checks():
    check_all(composed(*TINY, "seeds=[1,2]"))


# --- item 2: max_steps=0, max_length too small ---------------------------------------------------


@pytest.mark.parametrize("steps", [0, -2])
def test_max_steps_other_than_minus_one_or_positive_is_refused(steps):
    # transformers trains max_steps=0 as 1 step (only < 0 means "use epochs").
    refused(
        f"finetune.max_steps={steps}",
        match=rf"finetune\.max_steps={steps}: use -1 to train finetune\.epochs, or >= 1",
    )


@pytest.mark.parametrize("length", [-1, 0, 31])
def test_a_max_length_that_cannot_hold_prompt_response_and_eos_is_refused(length):
    # -1 trained with full_ids[:-1]: no cap, and the EOS cut off every example.
    refused(f"finetune.max_length={length}", match=rf"finetune\.max_length={length}: .*>= 32")


def test_the_smallest_max_length_allowed_passes():
    check_all(composed(*TINY, "finetune.max_length=32"))


# --- item 15: batch 0 and a bad learning rate, named before anything else fails ------------------


def test_a_zero_per_device_batch_is_named_not_a_zero_division():
    refused("finetune.per_device_batch_size=0", match=r"finetune\.per_device_batch_size=0")


def test_the_accumulation_itself_names_a_zero_per_device_batch():
    # The dry run (cluster/jobs.py) computes it without the stage check.
    from pipeline.train.launch import accumulation_steps

    with pytest.raises(ValueError, match=r"finetune\.per_device_batch_size=0: must be >= 1"):
        accumulation_steps(composed(*TINY, "finetune.per_device_batch_size=0").finetune, 1)


@pytest.mark.parametrize("lr", ["-1", "0", "nan", "inf"])
def test_a_learning_rate_that_is_not_a_positive_number_is_refused(lr):
    refused(f"finetune.learning_rate={lr}", match=r"finetune\.learning_rate=.*finite number > 0")


@pytest.mark.parametrize(
    "override",
    ["finetune.warmup_ratio=-0.1", "finetune.weight_decay=nan", "finetune.max_grad_norm=-1"],
)
def test_other_optimiser_numbers_are_range_checked(override):
    key = override.split("=")[0]
    refused(override, match=rf"{re.escape(key)}=.*finite number >= 0")


# --- item 3: a prompt given twice, a reference with two answers to one instruction ---------------


def test_a_prompt_given_twice_is_refused_naming_both_rows(tmp_path):
    rows = json.loads((ASSETS / "default_eval.json").read_text())[:5]
    rows.append(dict(rows[2]))
    path = write_json(tmp_path / "prompts.json", rows)
    refused(
        f"generate.prompts={path}",
        match=rf"generate\.prompts: {path}: rows 2 and 5 hold the same prompt",
        error=DataError,
    )


def test_one_instruction_with_two_inputs_is_two_prompts(tmp_path):
    rows = [{"instruction": "Translate.", "input": "Hallo"}, {"instruction": "Translate."}]
    path = write_json(tmp_path / "prompts.json", rows)
    assert len(load_prompts(str(path), "mine")) == 2


def test_a_reference_with_two_answers_to_one_instruction_is_refused(tmp_path):
    rows = json.loads((ASSETS / "default_eval_reference.json").read_text())
    rows.append({**rows[3], "output": "Another answer."})
    path = write_json(tmp_path / "reference.json", rows)
    # Before: a dict built over the records, the last one judged against, silently.
    refused(
        f"generate.reference={path}",
        match=rf"generate\.reference={str(path)!r}: records 3 and {len(rows) - 1} answer the "
        "same instruction differently",
        error=JudgeError,
    )


def test_a_reference_record_repeated_exactly_is_accepted(tmp_path):
    rows = json.loads((ASSETS / "default_eval_reference.json").read_text())
    rows.append(dict(rows[3]))
    path = write_json(tmp_path / "reference.json", rows)
    check_all(composed(*TINY, f"generate.reference={path}"))


# --- item 9: prompts with an input ---------------------------------------------------------------

INPUT_ROWS = [  # five: the fewest an LC win rate takes
    {"instruction": "Translate to English.", "input": "Hallo Welt", "output": "Hello world"},
    {"instruction": "Translate to English.", "input": "Guten Tag", "output": "Good day"},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    {"instruction": "Translate to English.", "input": "Danke", "output": "Thanks"},
    {"instruction": "Say bye.", "output": "Bye!"},
]


class _EchoEngine:
    """Stands in for the hf engine: answers every prompt with its position."""

    def generate(self, model_dir, texts, cfg, dtype, max_new, min_new, generator, work):
        return [f"answer {i}" for i in range(len(texts))], [2] * len(texts), 0.1, {}


def test_prompts_with_an_input_are_judged_against_their_own_reference_answer(tmp_path, monkeypatch):
    """The generate stage's own outputs.json, paired by the judge's lookup, as in the paper
    config's single file for prompts and reference (an Alpaca-format eval set with inputs)."""
    from pipeline.stages import generate

    path = write_json(tmp_path / "eval.json", INPUT_ROWS)
    cfg = composed(*TINY, f"generate.prompts={path}", f"generate.reference={path}")
    check_all(cfg)
    monkeypatch.setattr(generate, "engine", lambda name: _EchoEngine())
    prompts = load_prompts(str(path), "mine")
    generate._generate(Path("unused"), prompts, cfg.generate, "float32", "gen", None, tmp_path)
    outputs = json.loads((tmp_path / "outputs.json").read_text())
    # Before: the check passed on the bare instruction, then no output could be paired.
    pairs = pairs_against(outputs, load_reference(str(path)), "outputs.json")
    assert [(p["instruction"], p["output_1"], p["output_2"]) for p in pairs] == [
        ("Translate to English.\n\nHallo Welt", "Hello world", "answer 0"),
        ("Translate to English.\n\nGuten Tag", "Good day", "answer 1"),
        ("Say hi.", "Hi!", "answer 2"),
        ("Translate to English.\n\nDanke", "Thanks", "answer 3"),
        ("Say bye.", "Bye!", "answer 4"),
    ]


def test_an_input_prompt_whose_reference_has_only_the_bare_instruction_is_refused(tmp_path):
    prompts = write_json(tmp_path / "prompts.json", INPUT_ROWS[:1])
    reference = write_json(
        tmp_path / "reference.json", [{"instruction": "Translate to English.", "output": "x"}]
    )
    refused(
        f"generate.prompts={prompts}",
        f"generate.reference={reference}",
        match=r"1 of 1 prompts have no reference answer.*row 0 "
        r"\('Translate to English\.\\n\\nHallo Welt'\)",
        error=JudgeError,
    )


# --- item 10: numbers of generate, judge and openllm --------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "generate.max_new_tokens=0",
        "generate.batch_size=0",
        "generate.max_total_length=0",
        "generate.max_total_length=1",
        "generate.repetition_penalty=0",
        "generate.repetition_penalty=nan",
        "generate.repetition_penalty=-1.2",
        "judge.settings.batch_size=0",
        "judge.settings.max_prompt_tokens=-1",
        "openllm.limit=0",
        "openllm.limit=-1",
        "openllm.batch_size=0",
        "calibration.resamples=0",
        "overfit.batch_size=0",
        "overfit.max_new_tokens=0",
        "overfit.generate_sample=-1",
        "overfit.repetition_penalty=nan",
    ],
)
def test_a_number_out_of_range_is_refused_naming_its_key(override):
    key, value = override.split("=")
    refused(override, match=rf"^{re.escape(key)}={value}(\.0)?: ")


def test_fewer_prompts_than_an_lc_win_rate_takes_are_refused():
    # Before: generate.limit=2 passed, trained and generated, then failed in the LC fit.
    refused(
        "generate.limit=2",
        match=r"generate\.limit=2: 2 prompts are judged, and the length-controlled win rate "
        r"needs at least 5",
    )


def test_a_prompt_file_shorter_than_an_lc_win_rate_takes_is_refused(tmp_path):
    rows = json.loads((ASSETS / "default_eval.json").read_text())[:3]
    path = write_json(tmp_path / "prompts.json", rows)
    refused(
        f"generate.prompts={path}",
        "generate.limit=null",
        match=rf"generate\.prompts='{path}': 3 prompts",
    )


def test_a_prompt_too_long_for_max_total_length_is_refused_naming_its_row(tmp_path):
    rows = json.loads((ASSETS / "default_eval_reference.json").read_text())[:4]
    rows[2]["instruction"] = "word " * 200_000  # 1 MB, with its reference answer
    path = write_json(tmp_path / "eval.json", rows)
    refused(
        f"generate.prompts={path}",
        f"generate.reference={path}",
        match=r"generate\.prompts: .*row 2 has 1000\d+ characters: more than "
        r"generate\.max_total_length=1024 tokens",
    )


# --- item 13: experiment.name --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "", "a\nb", ".hidden", "a/b", " "])
def test_an_experiment_name_that_is_not_one_plain_directory_name_is_refused(name):
    cfg = composed(*TINY)
    cfg.experiment.name = name  # set directly: Hydra's override grammar cannot say all of these
    with pytest.raises(ValueError, match=r"experiment\.name=.*e\.g\. experiment\.name=my_study"):
        check_all(cfg)


@pytest.mark.parametrize("name", ["default", "paper_table1", "smoke-2.v1", "7b"])
def test_plain_experiment_names_pass(name):
    check_all(composed(*TINY, f"experiment.name={name}"))


def test_a_bad_experiment_name_writes_nothing_before_it_is_refused(tmp_path, monkeypatch):
    import pipeline.plan
    from pipeline.run import run_point
    from pipeline.tracking.tracker import Tracker

    def trained(*args, **kwargs):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(pipeline.plan, "run_plan", trained)
    results = tmp_path / "results"
    cfg = composed(
        *TINY,
        "experiment.name=../escaped",
        f"paths.results={results}",
        f"paths.store={tmp_path / 'store'}",
    )
    with pytest.raises(ValueError, match=r"experiment\.name='\.\./escaped'"):
        run_point(cfg, Tracker("disabled", "p", "g", str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # before: escaped/points/ was made


@pytest.mark.parametrize("where", ["{tmp}/results/..", "{tmp}/results/a\nb", ""])
def test_the_report_refuses_a_results_dir_that_is_not_an_experiment_dir(tmp_path, where, capsys):
    from pipeline.report import main

    with pytest.raises(SystemExit) as caught:
        main([where.format(tmp=tmp_path)])
    assert caught.value.code == 2  # argparse's usage error
    assert "results_dir" in capsys.readouterr().err
