"""Bad input is found by the checks, before any training, naming the key, file or row (issue 19,
item 5): a NaN or infinite noise alpha, a lone surrogate in training data or prompts, prompts
without a reference answer, a results directory that cannot be written."""

import json
from pathlib import Path

import pytest

from pipeline.data.loading import DataError
from pipeline.judging.judges import JudgeError
from pipeline.plan import check_all
from tests.support.pipeline_run import TinyRun, tiny_config

FAST = ("openllm=none",)  # what these runs change of the tiny stack


@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf"])
def test_a_non_finite_alpha_fails_the_checks(alpha):
    with pytest.raises(ValueError, match=r"noise.alpha=.*finite number"):
        check_all(tiny_config(*FAST, "noise=uniform", f"noise.alpha={alpha}"))


def _rows_with_surrogate(path: Path, field: str, n: int = 3) -> Path:
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(n)]
    text = json.dumps(rows).replace(
        f'"{field}1"' if field == "output" else '"q1"', '"x\\ud800y"'
    )  # valid JSON, not text
    path.write_text(text)
    return path


def test_a_lone_surrogate_in_training_data_fails_the_checks_naming_file_and_row(tmp_path):
    bad = _rows_with_surrogate(tmp_path / "train.json", "instruction")
    with pytest.raises(
        DataError,
        match=rf"data.train: {bad}: row 1: field 'instruction'.*"
        "surrogate",
    ):
        check_all(tiny_config(*FAST, f"data.train={bad}"))


def test_a_lone_surrogate_in_the_prompts_fails_the_checks_naming_file_and_row(tmp_path):
    bad = _rows_with_surrogate(tmp_path / "prompts.json", "instruction")
    with pytest.raises(DataError, match=rf"{bad}: row 1: field 'instruction'.*surrogate"):
        check_all(tiny_config(*FAST, f"generate.prompts={bad}"))


def test_prompts_without_a_reference_answer_fail_the_checks_naming_the_row(tmp_path):
    prompts = json.loads(
        (Path(__file__).parents[2] / "pipeline" / "assets" / "default_eval.json").read_text()
    )[:6]
    prompts[4]["instruction"] = "A question nobody answered."
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(prompts))
    with pytest.raises(JudgeError, match=r"1 of 6 prompts have no reference answer.*row 4"):
        check_all(tiny_config(*FAST, f"generate.prompts={path}"))


def test_a_results_directory_that_cannot_be_written_fails_before_any_stage(tmp_path, monkeypatch):
    import pipeline.plan
    from pipeline.run import run_point
    from pipeline.tracking.tracker import Tracker

    def trained(*args, **kwargs):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(pipeline.plan, "run_plan", trained)
    (tmp_path / "file").write_text("not a directory")
    cfg = TinyRun(tmp_path / "store", results=tmp_path / "file" / "results").config(*FAST)
    with pytest.raises(
        RuntimeError,
        match=r"paths.results: cannot write results to "
        rf"{tmp_path / 'file' / 'results'}",
    ):
        run_point(cfg, Tracker("disabled", "p", "g", str(tmp_path)))
