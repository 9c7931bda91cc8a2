"""Paper-shaped tables and REPORT.md from hand-made points: each number lands in its cell, beside the paper's."""

import csv
from pathlib import Path

from pipeline.results.tables import tables

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "paper_numbers.md"


def wr(x):
    return {"win_rate": x, "standard_error": 1.0}


def analysis(chars):
    return {"chars_mean": chars, "words_mean": chars / 6, "rep2_pct": 5.0, "log_diversity": 6.0, "n_kept": 3, "n_total": 4}


def overfit(train, heldout):
    return {"overfit_train_loss": train, "overfit_heldout_loss": heldout, "overfit_rougeL": 0.5, "overfit_bleu": 20.0,
            "overfit_n_train": 2, "overfit_n_heldout": 2, "overfit_n_generated": 2, "overfit_heldout": "pkg:x.json",
            "train_loss": [train, train], "heldout_loss": [heldout, heldout], "rougeL": [0.4, 0.6], "bleu": [10.0, 30.0]}


def point(name, noise, alpha, neft_wr, lora=False, length_control=None, with_overfit=False, openllm=None):
    return {
        "id": f"point-{name}", "dataset": "default", "model": "m", "judge": "j", "reference": "r", "alpha": alpha,
        "noise": noise, "cutoff": 50, "base": wr(40.0), "neft": wr(neft_wr), "head_to_head": wr(55.0), "train": analysis(300),
        "base_analysis": analysis(250.0), "neft_analysis": analysis(333.0), "base_lengths": [200, 300], "neft_lengths": [300, 366],
        "openllm_config": "local_cpu" if openllm else "none", "openllm_task_set": "local" if openllm else None,
        "openllm_shots": {}, "openllm_limit": None, "base_openllm": openllm, "neft_openllm": openllm,
        "lora": lora, "lora_4bit": False, "n_train": 10, "n_eval": 4,
        "base_overfit": overfit(1.0, 2.0) if with_overfit else None, "neft_overfit": overfit(1.5, 1.9) if with_overfit else None,
        "length_control": length_control, "overrides": [f"+report_point={name}"], "choices": {"generate": "cpu"},
        "config": {"finetune": {"epochs": 1, "learning_rate": 1e-4, "per_device_batch_size": 4, "gradient_accumulation_steps": 2}},
    }


def rows(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open()))


def test_tables_and_report_from_points(tmp_path):
    scores = {f"openllm_{t}": 0.5 for t in ("arc", "hellaswag", "mmlu", "truthfulqa")} | {"openllm_average": 0.5}
    variant = {"instruction_suffix": " Give a long answer.", "min_new_tokens": 0, "max_new_tokens": None, "win_rate": 45.0,
               "standard_error": 1.0, "chars_mean": 400.0, "words_mean": 70.0, "mean_new_tokens": 90.0}
    pts = [point("main", "neft-uniform5", 5, 60.0, length_control={"long": variant}, with_overfit=True, openllm=scores),
           point("gaussian5", "neft-gaussian5", 5, 52.0),
           point("lora", "neft-uniform5", 5, 47.0, lora=True)]
    for p in pts:
        out = tables(p, "exp", tmp_path, PAPER)

    t5 = rows(out / "table5.csv")
    assert [r[0] for r in t5[1:]] == ["base", "long", "+NEFT"]
    assert t5[2][2:4] == ["45.00 ± 1.00", "400.0"] and t5[2][5] == "44.84"  # ours, then the paper's "Long" row
    assert t5[3][2:4] == ["60.00 ± 1.00", "333.0"] and t5[3][5:] == ["61.99", "1058"]

    t6 = rows(out / "table6.csv")
    assert [r[0] for r in t6[1:]] == ["base", "neft-uniform5", "neft-gaussian5"]  # the LoRA point is not here
    assert t6[3][1] == "52.00 ± 1.00 / 333.0" and t6[3][2].startswith("60.93 / 65.09 / 59.13")

    t3 = rows(out / "table3.csv")
    assert t3[1][:5] == ["m / default", "ours, LoRA (plain base)", "40.00 ± 1.00", "47.00 ± 1.00", "–"]
    assert t3[2][:3] == ["LLaMA-2-7B Alpaca", "paper, QLoRA", "26.71"]

    t1 = rows(out / "table1.csv")
    assert sum(r[0] == "default" for r in t1) == 2  # main and gaussian5; the LoRA point goes to Table 3 only

    fit = rows(out / "overfit.csv")
    assert fit[1][2:6] == ["1.0000", "2.0000", "0.5000", "20.00"] and fit[2][1:4] == ["neft-uniform5", "1.5000", "1.9000"]

    report = (out / "REPORT.md").read_text()
    assert "Not covered" not in report and report.count("**Where our setting differs from the paper's.**") == 7
    assert "`python -m pipeline.run +report_point=lora`" in report and "| transformers |" in report
    assert report.index("## Versions") < report.index("## Table 1")


def test_sections_without_points_say_so(tmp_path):
    out = tables(point("only", "neft-uniform5", 5, 50.0), "exp", tmp_path, PAPER)
    report = (out / "REPORT.md").read_text()
    assert report.count("Not covered by this experiment") == 4  # Tables 3 and 5, Figure 3, Figures 4-5
    assert not (out / "table3.csv").exists()
