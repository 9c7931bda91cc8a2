"""Every table of the report, declared once: what it covers, how it is built, its figures, its
title and the paper's setting it is compared with. Adding a table: one TableSpec here, with a
builder (model_tables.arm_metrics for any per-arm stage's metrics, or a function in
winrate_tables.py / model_tables.py) and, to compare, its paper numbers in
pipeline/assets/paper_numbers.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.results import figures, model_tables, trend, winrate_tables
from pipeline.results.cells import Table
from pipeline.results.points import Point

FULL_FT = "3 epochs, lr 5e-5, batch 128, full finetune"


def _full(p: Point) -> bool:
    return not p.setting["lora"]  # LoRA points have their own table (3)


@dataclass(frozen=True)
class TableSpec:
    stem: str  # results/<experiment>/<stem>.md and .csv
    title: str  # its REPORT.md section
    covers: Callable[[Point], bool]  # which points it is built from
    build: Callable[[list[Point], dict], Table]  # (points, paper numbers) -> Table
    figures: tuple[Callable, ...] = ()  # function(points, out_dir) -> the PNG names it wrote
    paper_setting: str = ""  # the paper's setting, for "where ours differs"
    in_report: bool = True  # a REPORT.md section (else only the files)


TABLES = (
    TableSpec("table1", "Table 1 — AlpacaEval win rate, base vs +NEFT", _full,
              winrate_tables.table1, (figures.winrate_figure,),
              f"model llama2-7b, judge alpaca_eval_gpt4, {FULL_FT}"),
    TableSpec("table3", "Table 3 — (Q)LoRA", lambda p: p.setting["lora"], winrate_tables.table3,
              (), "model llama2-7b/13b, llama1-30b, judge chatgpt_fn, QLoRA, 1 epoch, 4-bit base"),
    TableSpec("table4", "Table 4 — length and diversity of the answers", _full,
              model_tables.table4, (figures.lengths_figure,),
              f"model llama2-7b, {FULL_FT}"),
    TableSpec("table5", "Table 5 — length is (not) all you need",
              lambda p: _full(p) and bool(p.variants), winrate_tables.table5, (),
              f"model llama1-7b, judge alpaca_eval_gpt4, {FULL_FT}"),
    TableSpec("table6", "Table 6 — uniform vs Gaussian noise", _full, winrate_tables.table6, (),
              f"model llama2-7b, judge chatgpt_fn, {FULL_FT}"),
    TableSpec("dose_response", "Dose-response — every measure against the noise strength alpha",
              _full, trend.trend_table,
              (figures.dose_response_figure,),
              f"model llama2-7b, judge chatgpt_fn, uniform alpha 5/10/15 (Table 6), {FULL_FT}"),
    TableSpec("figure3", "Figure 3 — OpenLLM leaderboard tasks",
              lambda p: _full(p) and any("openllm" in a.stages for a in p.arms),
              model_tables.figure3, (figures.openllm_figure,),
              f"model llama2-7b, llama1-7b, {FULL_FT}"),
    TableSpec("overfit", "Figures 4-5 — overfitting: noise-off losses and overlap with the "
              "training responses", lambda p: any("overfit" in a.stages for a in p.arms),
              model_tables.overfit, (figures.overfit_figures,),
              f"model llama2-7b, {FULL_FT}"),
    TableSpec("noise_family", "Noise family — each regulariser against the same baseline",
              _full, winrate_tables.noise_family, (figures.noise_family_figure,),
              "NEFTune: model llama2-7b, Alpaca, judge alpaca_eval_gpt4, uniform alpha 5, "
              f"{FULL_FT}; FreeLB, R3F and NoisyTune were published on GLUE-style "
              "classification (RoBERTa, ALBERT, BERT), not instruction tuning"),
    TableSpec("noise_grid", "Every noise arm", _full, winrate_tables.noise_grid, (), "",
              in_report=False),
)
