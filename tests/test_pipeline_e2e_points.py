"""End-to-end runs of the experiment's points on the tiny model: the alpha-grid sweep trains the
baseline once, LoRA trains adapters with noise, and the points of experiment=default_all fill
every section of the report."""

import json
from pathlib import Path

import pytest

from tests.support.pipeline_run import stage_dirs

pytestmark = pytest.mark.e2e


def test_alpha_grid_sweep_trains_the_baseline_once_and_tables_every_alpha(tiny_run):
    store = tiny_run.store
    result = tiny_run.run("sweep=alpha_grid", "logger=disabled")
    assert result.returncode == 0, result.stderr[-3000:]
    finetunes = [p.name for p in stage_dirs(store, "finetune")]
    assert len(finetunes) == 4 and sum("_base-" in name for name in finetunes) == 1
    results = store / "results" / "alpha_grid"
    assert len(list((results / "points").glob("*.json"))) == 4
    grid = (results / "noise_grid.md").read_text()
    for label in ("| base |", "| neft-uniform5 |", "| neft-uniform10 |", "| neft-uniform15 |"):
        assert label in grid
    table1 = (results / "table1.md").read_text()
    assert sum(line.startswith("| default | tiny-llama |") for line in table1.splitlines()) == 4


def test_lora_finetune_trains_adapters_with_noise_through_the_peft_wrapper(tiny_run):
    store = tiny_run.store
    result = tiny_run.run("finetune=lora_tiny", "logger=disabled")
    assert result.returncode == 0, result.stderr[-3000:]
    base, neft = (
        json.loads((p / "metrics.json").read_text()) for p in stage_dirs(store, "finetune")
    )
    for metrics in (base, neft):
        assert metrics["lora"] and not metrics["lora_4bit"]  # no GPU here: plain LoRA
        assert (
            0 < metrics["trainable_params"] < 20_000
        )  # adapters only (the tiny model has ~37k parameters)
    assert (
        base["train_loss"] != neft["train_loss"]
    )  # the noise reached the embeddings through the PEFT wrapper
    for ft in stage_dirs(store, "finetune"):
        assert (ft / "adapter" / "adapter_config.json").is_file()
        assert (ft / "model" / "model.safetensors").is_file()  # merged, loadable as a plain model
    assert len(stage_dirs(store, "generate")) == 2


def test_report_points_fill_every_section_of_the_report(tiny_run):
    """The points of experiment=default_all, on the tiny model: main (+ overfit, length
    control), a noise variant, LoRA."""
    store = tiny_run.store
    common = ["experiment.name=all", "logger=disabled"]
    for extra in (
        ["+point=all_main", "overfit=tiny", "length_control=tiny"],
        ["+point=all_gaussian5"],
        ["+point=all_lora", "finetune=lora_tiny"],
    ):
        done = tiny_run.run(*common, *extra)
        assert done.returncode == 0, done.stderr[-3000:]
    out = store / "results" / "all"
    report = (out / "REPORT.md").read_text()
    assert "Not covered" not in report
    for title in ("Table 1", "Table 3", "Table 4", "Table 5", "Table 6", "Figure 3", "Figures 4-5"):
        assert f"## {title}" in report
    assert "| transformers |" in report and "![overfit_loss.png](overfit_loss.png)" in report
    assert (out / "overfit_loss.png").stat().st_size > 0 and (
        out / "overfit_overlap.png"
    ).stat().st_size > 0

    _assert_table5_variants(store, out)
    _assert_one_overfit_stage_per_main_arm(store)

    # Table 6 has the baseline, uniform 5 and gaussian 5 rows; Table 3 the LoRA base and alpha 5.
    table6 = [row.split(",")[0] for row in (out / "table6.csv").read_text().splitlines()[1:]]
    assert table6 == ["base", "neft-uniform5", "neft-gaussian5"]
    table3 = (out / "table3.csv").read_text().splitlines()
    assert table3[1].startswith('tiny-llama / default,"ours, LoRA (plain base)"')
    assert len(stage_dirs(store, "openllm")) == 2  # only the main point runs the leaderboard tasks


def _assert_table5_variants(store: Path, out: Path) -> None:
    """Table 5: the variants come from the noise-off model; the forced one really is longer, the
    judge saw plain instructions."""
    plain = json.loads(
        (
            next(
                p
                for p in stage_dirs(store, "generate")
                if p.name.startswith("generate-tiny-llama_default_base-")
            )
            / "outputs.json"
        ).read_text()
    )
    forced = next(p for p in stage_dirs(store, "generate") if "_min_20_tokens-" in p.name)
    assert json.loads((forced / "metrics.json").read_text())["gen_min_new_tokens"] >= 20
    long_prompted = json.loads(
        (
            next(p for p in stage_dirs(store, "generate") if "_base_long-" in p.name)
            / "outputs.json"
        ).read_text()
    )
    assert [r["instruction"] for r in long_prompted] == [r["instruction"] for r in plain]
    table5 = (out / "table5.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in table5[1:]] == ["base", "long", "min_20_tokens", "+NEFT"]


def _assert_one_overfit_stage_per_main_arm(store: Path) -> None:
    """Figs 4-5: one overfit stage per arm of the main point, with sane numbers."""
    fitted = stage_dirs(store, "overfit")
    assert len(fitted) == 2
    for stage in fitted:
        m = json.loads((stage / "metrics.json").read_text())
        assert 0 < m["overfit_train_loss"] < 10 and 0 < m["overfit_heldout_loss"] < 10
        assert (
            0 <= m["overfit_rougeL"] <= 1
            and 0 <= m["overfit_bleu"] <= 100
            and m["overfit_n_generated"] == 6
        )
