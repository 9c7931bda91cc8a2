"""End-to-end runs of `python -m pipeline.run` on the tiny model: finetune -> generate, reuse,
kill + resume, a bad row (sweeps, LoRA and the report points are in test_pipeline_e2e_points.py)."""

import json
from pathlib import Path

import pytest

from pipeline.data.loading import load_prompts
from tests.support.composed import SMOKE
from tests.support.pipeline_run import run_pipeline, stage_dirs
from tests.support.wandb_offline import read_run

pytestmark = pytest.mark.e2e


def test_tiny_run_trains_both_arms_generates_in_order_and_reruns_from_the_store(tmp_path):
    store = tmp_path / "store"
    first = run_pipeline(store, *SMOKE)
    assert first.returncode == 0, first.stderr[-3000:]
    finetunes, generates = stage_dirs(store, "finetune"), stage_dirs(store, "generate")
    assert [p.name.split("_")[-1].rsplit("-", 1)[0] for p in finetunes] == ["base", "neft-uniform5"]
    assert len(generates) == 2

    expected = [p["instruction"] for p in load_prompts("pkg:default_eval.json", "x", limit=6)]
    generators = set()
    for gen in generates:
        records = json.loads((gen / "outputs.json").read_text())
        assert [r["instruction"] for r in records] == expected  # one record per prompt, input order
        assert all(set(r) == {"instruction", "output", "generator", "dataset"} for r in records)
        assert all(isinstance(r["output"], str) and r["output"] for r in records)
        generators |= {r["generator"] for r in records}
    assert len(generators) == 2

    for ft in finetunes:
        metrics = json.loads((ft / "metrics.json").read_text())
        assert metrics["train_steps"] == 24 and metrics["resumed_from_step"] == 0
        assert 0 < metrics["train_loss"] < 10 and metrics["train_tokens_per_s"] > 0
        assert (ft / "model" / "model.safetensors").is_file() and (
            ft / "model" / "tokenizer.json"
        ).is_file()
        assert len(json.loads((ft / "loss_log.json").read_text())) == 12
        assert not (ft / "checkpoints").exists()
    base, neft = (json.loads((p / "metrics.json").read_text()) for p in finetunes)
    assert (base["noise_alpha"], neft["noise_alpha"]) == (0.0, 5.0)
    assert base["train_loss"] != neft["train_loss"]  # noise changed training
    judged = stage_dirs(store, "alpaca_eval")
    _assert_judged_and_tabled(store, judged)
    _assert_logged_to_wandb(store, finetunes, generates)

    mtimes = {p: (p / "COMPLETE").stat().st_mtime for p in finetunes + generates + judged}
    second = run_pipeline(store, *SMOKE)
    assert second.returncode == 0, second.stderr[-3000:]
    # every stage instance pipeline/plan.py runs for this config, each reused
    from tests.support.pipeline_run import TinyRun

    planned = TinyRun(store).planned_stages()  # the overrides of SMOKE, as run_pipeline got
    assert second.stdout.count(": reused ->") == len(planned)
    assert ": computed ->" not in second.stdout
    assert {p: (p / "COMPLETE").stat().st_mtime for p in finetunes + generates + judged} == mtimes


def _assert_judged_and_tabled(store: Path, judged: list[Path]) -> None:
    """Three judged stages with every verdict kept; tables and figures with the tiny numbers."""
    assert len(judged) == 3  # base and +NEFT vs the reference, +NEFT vs base
    for stage in judged:
        metrics = json.loads((stage / "metrics.json").read_text())
        assert metrics["n_total"] == 6 and 0 <= metrics["win_rate"] <= 100
        if (
            "_vs_neftune_repro_reference_" in stage.name
        ):  # (identical pairs, as tiny models make, are one entry)
            assert (
                len(json.loads((stage / "annotations.json").read_text())) == 12
            )  # every verdict, both orders
    results = store / "results" / "default"
    table1 = (results / "table1.md").read_text()
    assert (
        "| default | tiny-llama | local-tiny / neftune_repro_reference |" in table1
        and "29.79" in table1
    )
    table4 = (results / "table4.md").read_text()
    assert "| +NEFT, characters |" in table4 and "1061.89" in table4
    figure3 = (results / "figure3.md").read_text()
    assert (
        "| ours | tiny-llama, default | +NEFT |" in figure3
        and "local_cpu (local task set, shots arc 3" in figure3
    )
    assert (
        "| paper (≈, read off a chart) | LLaMA-2-7B Alpaca | base | 56.4 | 80.0 | 47.9 | 41.6 |"
        in figure3
    )
    for png in ("winrate.png", "lengths.png", "openllm.png"):
        assert (results / png).stat().st_size > 1000


def _assert_logged_to_wandb(store: Path, finetunes: list[Path], generates: list[Path]) -> None:
    """W&B (offline by default): one run per stage execution, read back from the offline runs."""
    results = store / "results" / "default"
    runs = {r["name"]: r for r in map(read_run, (store / "wandb" / "wandb").glob("offline-run-*"))}
    for ft in finetunes:
        run = runs[ft.name]
        metrics = json.loads((ft / "metrics.json").read_text())
        assert (run["job_type"], run["group"]) == ("finetune", "default")
        assert run["summary"]["train_loss"] == pytest.approx(metrics["train_loss"])
        # what it measured, under the keys every run has (pipeline/tracking/identity.py)
        assert run["config"]["noise"]["alpha"] == metrics["noise_alpha"]
        assert (run["config"]["experiment"], run["config"]["model"]) == ("default", "tiny-llama")
        assert run["config"]["stage_key"] == ft.name and run["config"]["seed"] == 42
        assert sum("train/loss" in row for row in run["history"]) == 12  # the Trainer's curve
        clean = sum("train/clean_loss" in row for row in run["history"])  # without the noise
        assert clean == (12 if metrics["noise_alpha"] else 0)
    for gen in generates:
        assert runs[gen.name]["job_type"] == "generate" and runs[gen.name]["artifacts"] == [
            f"outputs-{gen.name}"
        ]
    assert {r["job_type"] for r in runs.values()} == {
        "finetune",
        "generate",
        "alpaca_eval",
        "analysis",
        "openllm",
        "compare",
        "judge_calibration",
        "tables",
    }
    (tables_run,) = [r for r in runs.values() if r["job_type"] == "tables"]
    logged_tables = {
        k.split("/")[0]: row[f"{k.split('/')[0]}/nrows"]
        for row in tables_run["history"]
        for k in row
        if k.endswith("/_type") and row[k] == "table-file"
    }
    assert logged_tables["table1"] == len((results / "table1.csv").read_text().splitlines()) - 1
    assert {"table1", "table4", "figure3", "noise_grid"} <= set(logged_tables)
    assert logged_tables["generations"] == 6  # 6 prompts, base and +NEFT side by side
    assert logged_tables["findings"] >= 4  # win rate, LC, characters, words (+ lm-eval tasks)
    logged_images = {
        k.rsplit("/", 1)[0]
        for row in tables_run["history"]
        for k in row
        if k.endswith("/_type") and row[k] == "image-file"
    }
    # every figure of the results directory, each under its own name
    assert logged_images == {f"figure/{p.stem}" for p in results.glob("*.png")}
    assert {"figure/winrate", "figure/lengths", "figure/openllm"} <= logged_images


def test_a_table_number_leads_to_the_stage_that_computed_it(tmp_path):
    """Take a number from a generated table, follow its stage key to metrics.json: they match."""
    import csv

    from pipeline.results.cells import KEY_SUFFIX

    store = tmp_path / "store"
    done = run_pipeline(store, *SMOKE, "logger=disabled", "calibration.n_pairs=10")
    assert done.returncode == 0, done.stderr[-3000:]
    results = store / "results" / "default"
    table = list(csv.reader((results / "table1.csv").open(encoding="utf-8")))
    header, row = table[0], table[1]
    checked = 0
    for column, metric in (
        ("ours: base", "win_rate"),
        ("ours: +NEFT", "win_rate"),
        ("ours: +NEFT, LC", "lc_win_rate"),
    ):
        key = row[header.index(column + KEY_SUFFIX)]
        metrics = json.loads((store / key / "metrics.json").read_text())
        assert row[header.index(column)].split(" ± ")[0] == f"{metrics[metric]:.2f}"
        checked += 1
    table4 = list(csv.reader((results / "table4.csv").open(encoding="utf-8")))
    chars = next(r for r in table4 if r[0] == "+NEFT, characters")
    key = chars[2]  # the column after ours is its stage key
    assert chars[1] == f"{json.loads((store / key / 'metrics.json').read_text())['chars_mean']:.2f}"
    # ... and the markdown names the same directories
    md = (results / "table1.md").read_text()
    assert f"`{row[header.index('ours: base' + KEY_SUFFIX)]}`" in md and checked == 3
    # the REPORT opens with findings whose CIs come from the compare stage
    report = (results / "REPORT.md").read_text()
    assert report.index("## Findings") < report.index("## Versions")
    compare_key = next(p.name for p in stage_dirs(store, "compare"))
    assert f"[`{compare_key}`]" in report and "judge_calibration-" in report


KILL_AT_STEP_12 = """
import os, signal, transformers
_step = transformers.Trainer.training_step
def _killing_step(self, *args, **kwargs):
    if self.state.global_step >= 12:
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(self, *args, **kwargs)
transformers.Trainer.training_step = _killing_step
"""


def test_sigkilled_finetune_resumes_from_its_checkpoint(tmp_path):
    store = tmp_path / "store"
    killed = run_pipeline(store, *SMOKE, "noise=off", prelude=KILL_AT_STEP_12)
    assert killed.returncode == -9
    partial = [p for p in store.glob("finetune-*.partial")]
    assert (
        len(partial) == 1
        and (partial[0] / "checkpoints" / "checkpoint-8" / "trainer_state.json").is_file()
    )
    assert stage_dirs(store, "finetune") == []  # nothing marked done

    resumed = run_pipeline(store, *SMOKE, "noise=off")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (ft,) = stage_dirs(store, "finetune")
    metrics = json.loads((ft / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 8 and metrics["train_steps"] == 24
    assert not partial[0].exists() and not list(store.glob("*.lock"))

    # The resumed run ends where an uninterrupted one does.
    fresh = run_pipeline(tmp_path / "fresh", *SMOKE, "noise=off")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    (ft_fresh,) = stage_dirs(tmp_path / "fresh", "finetune")
    log_resumed = json.loads((ft / "loss_log.json").read_text())
    log_fresh = json.loads((ft_fresh / "loss_log.json").read_text())
    assert [e["step"] for e in log_resumed] == [e["step"] for e in log_fresh]
    assert log_resumed[-1]["loss"] == pytest.approx(log_fresh[-1]["loss"], rel=1e-4)


def test_bad_training_row_fails_before_training_and_marks_nothing_done(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {"instruction": "a", "input": "", "output": "b"},
                {"instruction": "c", "input": "", "output": ""},
            ]
        )
    )
    store = tmp_path / "store"
    result = run_pipeline(store, *SMOKE, f"data.train={bad}")
    assert result.returncode != 0
    assert f"{bad}: row 1: field 'output' is empty" in result.stderr
    assert not list(store.glob("finetune-*")) and not list(store.glob("generate-*"))
