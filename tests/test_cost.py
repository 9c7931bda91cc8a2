"""The cost section: per stage the compute from its own record (the COMPLETE marker the store now
writes, or the runtime in its metrics.json), an API judge's bill from annotations.json, and the
experiment's total with shared stages counted once."""

import json

import pytest

from pipeline.results.cost import cost_section, stage_costs
from pipeline.results.points import Arm, Point, StageRef
from pipeline.store.store import Store


def test_the_store_records_wall_time_and_device_in_complete(tmp_path):
    store = Store(tmp_path)
    result = store.materialize("stage-x-000000000000", lambda work: {"v": 1})
    marker = json.loads((result.path / "COMPLETE").read_text())
    assert marker["key"] == "stage-x-000000000000"
    assert marker["wall_s"] >= 0 and marker["finished_at"] >= marker["started_at"]
    assert marker["device"]["kind"] in ("cpu", "cuda")
    assert store.lookup("stage-x-000000000000").metrics == {"v": 1}  # checks unchanged


def _point(store, judge_kind: str) -> Point:
    def arm(name, alpha):
        stages = {
            "finetune": StageRef(key=f"finetune-{name}-0", metrics={"train_runtime_s": 100.0}),
            "alpaca_eval": StageRef(key=f"alpaca_eval-{name}-0", metrics={"n_total": 3.0}),
        }
        noise = {"kind": "none"} if alpha == 0 else {"kind": "uniform", "alpha": alpha}
        return Arm(name=name, baseline=alpha == 0, seed=42, noise=noise, stages=stages)

    return Point(
        id=f"p-{judge_kind}",
        name=None,
        experiment="e",
        store=str(store),
        model="m",
        dataset="d",
        judge="j",
        reference="r",
        setting={},
        arms=[arm("base", 0), arm("neft", 5)],
        choices={"finetune": "cpu"},
        config={"judge": {"kind": judge_kind}},
    )


def test_costs_trace_to_complete_markers_metrics_and_annotations(tmp_path):
    (tmp_path / "finetune-neft-0").mkdir()
    (tmp_path / "finetune-neft-0" / "COMPLETE").write_text(
        json.dumps(
            {"key": "finetune-neft-0", "wall_s": 40.0, "device": {"kind": "cuda", "count": 2}}
        )
    )
    (tmp_path / "alpaca_eval-neft-0").mkdir()
    (tmp_path / "alpaca_eval-neft-0" / "annotations.json").write_text(
        json.dumps([{"preference": 2.0, "price_per_example": 0.01}] * 3)
    )
    api, local = _point(tmp_path, "api"), _point(tmp_path, "local")
    costs = {c.key: c for c in stage_costs([api])}
    assert costs["finetune-neft-0"].gpu_s == 80.0 and costs["finetune-neft-0"].device == "2 x cuda"
    assert costs["finetune-neft-0"].source == "COMPLETE wall_s"
    assert costs["finetune-base-0"].cpu_s == 100.0
    assert costs["finetune-base-0"].source == "metrics.json train_runtime_s"
    assert costs["alpaca_eval-neft-0"].price == pytest.approx(0.03)
    assert costs["alpaca_eval-neft-0"].verdicts == 3
    assert costs["alpaca_eval-base-0"].price is None  # an API judge's annotations not here
    assert stage_costs([local])[1].price == 0.0  # a local judge bills nothing
    # the second point shares every stage with the first: counted once
    text = "\n".join(cost_section([api, local]))
    assert "## Cost" in text and "over 4 stages (each counted once)" in text
    assert "100.0 CPU seconds, 80.0 GPU seconds" in text and "billed $0.03" in text
    assert "(+ 1 judged stages whose price is not readable here)" in text
