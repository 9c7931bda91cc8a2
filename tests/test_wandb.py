"""W&B as a researcher reads it: every run holds the identity of what it measured under the same
config keys (pipeline/tracking/identity.py), so a workspace plots any summary metric against
`noise.alpha` per seed from configs and summaries alone; the aggregation's run holds every table
and figure of results/<experiment>/, the findings and the answers side by side; a finetune with
noise logs its loss without noise beside the noisy one. Read back from the records wandb wrote
(tests/support/wandb_offline.py)."""

import csv
import json
import re
import sys
import types
from pathlib import Path

import pytest

from pipeline.store.store import Store
from pipeline.tracking.identity import IDENTITY_KEYS
from pipeline.tracking.tracker import Tracker
from tests.support.composed import SMOKE
from tests.support.pipeline_run import run_pipeline, stage_dirs
from tests.support.wandb_offline import read_run

POINT = dict(experiment="grid", point="point-x", model="tiny", data="default", judge="local")


def _runs(wandb_dir: Path) -> list[dict]:
    """Every offline run under a logger.dir, oldest first (their directories are timestamped)."""
    return [read_run(d) for d in sorted((wandb_dir / "wandb").glob("offline-run-*"))]


def _computed(metrics: dict):
    def compute(work: Path) -> dict:
        (work / "out.txt").write_text("x")
        return metrics

    return compute


def test_every_run_holds_the_identity_declared_around_it_under_the_same_keys(
    tmp_path, capfd, monkeypatch
):
    # As after an API judge ran in this process: W&B then suggested Weave on the console.
    monkeypatch.setitem(sys.modules, "openai", types.ModuleType("openai"))
    monkeypatch.delenv("WANDB_DISABLE_WEAVE", raising=False)
    tracker = Tracker("offline", "p", "grid", str(tmp_path / "wandb"))
    store = Store(tmp_path / "store", tracker=tracker)
    with tracker.identity(**POINT):
        for alpha, name in ((0.0, "base"), (5.0, "neft-uniform5")):
            noise = {"kind": "none"} if alpha == 0 else {"kind": "uniform", "alpha": alpha}
            with tracker.identity(arm=name, noise={**noise, "length": "per_example"}, seed=7):
                with tracker.identity(step="alpaca_eval"):
                    store.materialize(
                        f"alpaca_eval-{name}-000000000000",
                        _computed({"win_rate": 40.0 + alpha}),
                        config={"judge": {"name": "local", "both_orders": True}},
                    )
        store.materialize("analysis-train-000000000000", _computed({"chars_mean": 3.0}))
    store.materialize("compare-outside-000000000000", _computed({"n": 1}))  # nothing declared

    runs = {r["name"]: r for r in _runs(tmp_path / "wandb")}
    assert len(runs) == 4
    for run in runs.values():
        assert set(IDENTITY_KEYS) <= set(run["config"]), run["name"]  # the same keys everywhere
        assert run["config"]["stage_key"] == run["name"]
        assert set(run["config"]["noise"]) >= {"kind", "alpha", "length"}
    base = runs["alpaca_eval-base-000000000000"]
    neft = runs["alpaca_eval-neft-uniform5-000000000000"]
    # what an alpha plot needs, from the config and the summary alone
    series = {r["config"]["noise"]["alpha"]: r["summary"]["win_rate"] for r in (base, neft)}
    assert series == {0.0: 40.0, 5.0: 45.0}
    assert base["config"]["noise"] == {"kind": "none", "alpha": 0.0, "length": None}
    assert neft["config"]["noise"] == {"kind": "uniform", "alpha": 5.0, "length": "per_example"}
    for run in (base, neft):
        assert {k: run["config"][k] for k in POINT} == POINT
        assert (run["config"]["seed"], run["config"]["step"]) == (7, "alpaca_eval")
        assert run["config"]["params"] == {"judge": {"name": "local", "both_orders": True}}
        assert run["job_type"] == "alpaca_eval" and run["group"] == "grid"
    point_level = runs["analysis-train-000000000000"]["config"]
    assert point_level["experiment"] == "grid" and point_level["arm"] is None
    assert point_level["noise"]["alpha"] is None and point_level["seed"] is None
    outside = runs["compare-outside-000000000000"]["config"]
    assert all(outside[k] is None for k in POINT)  # the declaration ended with its block
    # no banner, no sync hint: W&B prints nothing of its own
    out, err = capfd.readouterr()
    assert "wandb" not in (out + err).lower()


def test_an_unknown_identity_field_is_named():
    with pytest.raises(TypeError, match=r"unknown field\(s\) \['alpah'\]"):
        with Tracker.identity(alpah=5):
            pass


def test_offline_runs_end_with_one_hint_where_they_are():
    tracker = Tracker("offline", "p", "grid", "/x/wandb")
    assert tracker.closing_lines() == [
        "W&B: offline runs in /x/wandb/wandb; upload: wandb sync /x/wandb/wandb/offline-run-*"
    ]
    assert Tracker("disabled", "p", "grid", "/x").closing_lines() == []


def test_the_tables_run_logs_each_table_each_figure_and_the_extra_tables(tmp_path):
    from PIL import Image

    from pipeline.results.wandb_rows import TableRows

    out = tmp_path / "results"
    out.mkdir()
    (out / "table1.csv").write_text("a,b\n1,2\n3,4\n")
    (out / "noise_grid.csv").write_text("a\n1\n")
    for name in ("winrate", "human_study_vote"):
        Image.new("RGB", (8, 8)).save(out / f"{name}.png")
    extra = {
        "findings": TableRows(["measure", "diff", "between_seed_sd"], [["chars", 1.5, None]]),
        "generations": TableRows(["prompt", "base vs reference"], [["q", None], ["r", 100.0]]),
    }
    tracker = Tracker("offline", "p", "grid", str(tmp_path / "wandb"))
    tracker.log_tables(out, extra)
    (run,) = _runs(tmp_path / "wandb")
    assert run["job_type"] == "tables" and run["config"]["experiment"] == "grid"
    assert logged_tables(run) == {"table1": 2, "noise_grid": 1, "findings": 1, "generations": 2}
    assert logged_images(run) == {"figure/winrate", "figure/human_study_vote"}


def logged_tables(run: dict) -> dict[str, int]:
    """name -> rows of every wandb.Table a run logged."""
    return {
        k[: -len("/_type")]: row[k[: -len("/_type")] + "/nrows"]
        for row in run["history"]
        for k in row
        if k.endswith("/_type") and row[k] == "table-file"
    }


def logged_images(run: dict) -> set[str]:
    return {
        k[: -len("/_type")]
        for row in run["history"]
        for k in row
        if k.endswith("/_type") and row[k] == "image-file"
    }


def test_the_clean_loss_is_the_noise_free_loss_of_a_fixed_subset_and_draws_nothing(tmp_path):
    """clean_loss_callback: with NEFTune attached and the model training, a measurement is the
    mean loss per response token of the first CLEAN_SUBSET examples with the noise off; it
    draws no random number (the Trainer's RNG, which a resumed run restores, is untouched),
    leaves the model training, and a resumed run keeps the entries up to its checkpoint."""
    from types import SimpleNamespace

    import torch

    from pipeline.data.loading import load_train, pad_batch, tokenize_examples
    from pipeline.models.loading import base_model_dir, load_model_and_tokenizer
    from pipeline.train.noise import attach_neftune
    from pipeline.train.training import CLEAN_LOSS_LOG, CLEAN_SUBSET, clean_loss_callback
    from tests.support.composed import composed

    cfg = composed(*SMOKE)
    base = base_model_dir(cfg.model, Store(tmp_path / "cache"))
    model, tok = load_model_and_tokenizer(base, "float32")
    records = load_train(cfg.data.train, cfg.data.train_limit)
    examples, _ = tokenize_examples(records, tok, cfg.finetune.max_length)
    work = tmp_path / "work"
    work.mkdir()
    earlier = [{"step": s, "clean_loss": 1.0, "loss": 2.0} for s in (2, 4, 6, 8)]
    (work / CLEAN_LOSS_LOG).write_text(json.dumps(earlier))  # a killed run got to step 8
    run = SimpleNamespace(work=work, examples=examples, tok=tok, rank=0)
    assert clean_loss_callback(run, {"kind": "none"}, 0) is None  # no noise: the loss is clean

    clean = clean_loss_callback(run, {"kind": "uniform"}, resumed_step=4)  # resumed at 4
    assert [e["step"] for e in clean.entries] == [2, 4]
    handle = attach_neftune(model, 5.0, "uniform", "per_example")
    model.train()
    rng = torch.get_rng_state()
    args = SimpleNamespace(
        per_device_train_batch_size=3, device=torch.device("cpu"), report_to=[], bf16=False
    )
    state = SimpleNamespace(global_step=6, is_world_process_zero=True)
    clean.on_log(args, state, None, model=model, logs={"loss": 6.5})
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    logged = json.loads((work / CLEAN_LOSS_LOG).read_text())
    assert [e["step"] for e in logged] == [2, 4, 6] and logged[-1]["loss"] == 6.5

    handle.remove()  # the same loss, example by example, with no noise hook at all
    model.eval()
    total = tokens = 0
    with torch.no_grad():
        for example in examples[:CLEAN_SUBSET]:
            batch = pad_batch([example], tok.pad_token_id)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total, tokens = total + float(model(**batch).loss) * n, tokens + n
    assert logged[-1]["clean_loss"] == pytest.approx(total / tokens, rel=1e-5)


# --- the tiny alpha grid, end to end ------------------------------------------------------------

GRID = [
    "sweep=alpha_grid",
    *SMOKE,
    "openllm=none",  # 40-90 s an arm on this CPU, and no part of what W&B must hold
    "calibration.n_pairs=10",
    "experiment.name=grid",
]


def _effect_lines(report: Path) -> int:
    """The measured effects in a REPORT's Findings: the lines under each '- **<arm> vs base**'
    (not its head-to-head line, not the dose-response lines)."""
    heading, n = "", 0
    for line in report.read_text(encoding="utf-8").splitlines():
        if line.startswith("- **"):
            heading = line.split("**")[1]
        elif line.startswith("  - ") and re.fullmatch(r"\S+ vs \S+", heading):
            n += "head to head" not in line
    return n


def _cell_number(cell: str) -> float:
    return float(cell.split(" ± ")[0])


@pytest.mark.e2e
def test_alpha_grid_series_from_run_configs_and_summaries_equal_the_tables(tmp_path):
    store = tmp_path / "store"
    done = run_pipeline(store, *GRID)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _runs(store / "wandb")
    results = store / "results" / "grid"

    # (seed, alpha) -> win rate, LC win rate (alpaca_eval runs against the reference) and mean
    # characters (analysis runs of the arms), from the runs' configs and summaries alone
    series: dict[tuple, dict] = {}
    for run in runs:
        c, s = run["config"], run["summary"]
        if c["step"] not in ("alpaca_eval", "analysis") or c["variant"] is not None:
            continue
        assert c["experiment"] == "grid" and c["model"] == "tiny-llama" and c["seed"] == 42
        point = series.setdefault((c["seed"], c["noise"]["alpha"]), {"keys": set()})
        point["keys"].add(c["stage_key"])
        if c["step"] == "alpaca_eval":
            point.update(win_rate=s["win_rate"], lc=s["lc_win_rate"])
        else:
            point.update(chars=s["chars_mean"])
    assert sorted(series) == [(42, 0.0), (42, 5.0), (42, 10.0), (42, 15.0)]

    # ... equal to table6 (win rate, LC, mean chars per noise setting, each with its stage key)
    rows = list(csv.DictReader((results / "table6.csv").open(encoding="utf-8")))
    ours = next(c for c in rows[0] if c.startswith("ours:") and c.endswith("— win rate"))
    column = ours[: -len(" — win rate")]
    alpha_of = {"base": 0.0, "neft-uniform5": 5.0, "neft-uniform10": 10.0, "neft-uniform15": 15.0}
    table = {alpha_of[r["noise"]]: r for r in rows if r["noise"] in alpha_of}
    assert sorted(table) == [0.0, 5.0, 10.0, 15.0]
    for alpha, row in table.items():
        got, cell = series[(42, alpha)], {m: row[f"{column} — {m}"] for m in ("win rate", "LC")}
        assert _cell_number(cell["win rate"]) == pytest.approx(got["win_rate"], abs=0.005)
        assert _cell_number(cell["LC"]) == pytest.approx(got["lc"], abs=0.005)
        assert _cell_number(row[f"{column} — mean chars"]) == pytest.approx(got["chars"], abs=0.05)
        keys = {row[f"{column} — {m} — stage key"] for m in ("win rate", "LC", "mean chars")}
        assert keys == got["keys"]  # the very stages the table cites

    # the last aggregation's run: every table and figure of the results directory, the findings
    # (one row per measured effect) and the answers side by side (3 alphas x 6 prompts)
    tables_run = [r for r in runs if r["job_type"] == "tables"][-1]
    logged = logged_tables(tables_run)
    csvs = {p.stem: p for p in results.glob("*.csv")}
    assert set(logged) == set(csvs) | {"findings", "generations"}
    for name, path in csvs.items():
        assert logged[name] == len(list(csv.reader(path.open(encoding="utf-8")))) - 1, name
    assert logged_images(tables_run) == {f"figure/{p.stem}" for p in results.glob("*.png")}
    assert logged["generations"] == 3 * 6
    assert logged["findings"] == _effect_lines(results / "REPORT.md") > 0

    # every finetune with noise holds both curves: the Trainer's loss and the loss without noise
    finetunes = {r["name"]: r for r in runs if r["job_type"] == "finetune"}
    assert len(finetunes) == 4
    for ft in stage_dirs(store, "finetune"):
        history = finetunes[ft.name]["history"]
        noisy = [row["train/loss"] for row in history if "train/loss" in row]
        clean = [row["train/clean_loss"] for row in history if "train/clean_loss" in row]
        assert len(noisy) == 12
        if "_base-" in ft.name:
            assert clean == [] and not (ft / "clean_loss_log.json").exists()
            continue
        log = json.loads((ft / "clean_loss_log.json").read_text())
        assert [e["step"] for e in log] == list(range(2, 25, 2))
        assert clean == pytest.approx([e["clean_loss"] for e in log])
        assert [e["loss"] for e in log] == pytest.approx(noisy)
        assert all(0 < v < 10 for v in clean)
