"""Paper-shaped tables and REPORT.md from hand-made typed points: each number lands in its cell,
beside the paper's, and carries the key of the stage it was read from."""

import csv
import json
import re
from pathlib import Path

import pytest

from pipeline.results.aggregate import write_results
from pipeline.results.cells import KEY_SUFFIX
from pipeline.results.points import Point, Variant, read_points
from pipeline.store.store import write_json_atomic
from tests.support.points import analysis, point, ref
from tests.support.skips import needs_shared_data


def raw(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open(encoding="utf-8")))


def rows(path: Path) -> list[list[str]]:
    """The table's cells without its stage-key columns."""
    table = raw(path)
    keep = [i for i, name in enumerate(table[0]) if not name.endswith(KEY_SUFFIX)]
    return [[r[i] for i in keep] for r in table]


@pytest.fixture
def experiment(tmp_path):
    long = Variant(
        name="long",
        seed=42,
        setting={
            "instruction_suffix": " Give a long answer.",
            "min_new_tokens": 0,
            "max_new_tokens": None,
        },
        stages={
            "generate": ref("generate", "long", gen_n_outputs=4),
            "alpaca_eval": ref("alpaca_eval", "long", win_rate=45.0, standard_error=1.0),
            "analysis": analysis("long", 400.0),
        },
    )
    points = [
        point("main", "neft-uniform5", 5, 60.0, variants=[long], main=True),
        point("gaussian5", "neft-gaussian5", 5, 52.0, kind="gaussian"),
        point("lora", "neft-uniform5", 5, 47.0, lora=True),
    ]
    (tmp_path / "points").mkdir()
    for p in points:
        write_json_atomic(tmp_path / "points" / f"{p.id}.json", p.to_json())
    return tmp_path, points


def test_points_round_trip_through_json(experiment):
    out, points = experiment
    assert [p.id for p in read_points(out / "points")] == sorted(p.id for p in points)
    again = Point.from_json(json.loads(json.dumps(points[0].to_json())))
    assert again == points[0]


def test_every_table_from_typed_points_with_keys_beside_numbers(experiment):
    from pipeline.results.registry import TABLES

    out, points = experiment
    write_results(out)
    t1 = raw(out / "table1.csv")
    base_col, key_col = t1[0].index("ours: base"), t1[0].index("ours: base" + KEY_SUFFIX)
    main = next(r for r in t1 if "60.00 ± 1.00" in r)
    assert main[base_col] == "40.00 ± 1.00"
    assert main[key_col] == "alpaca_eval-main_base-000000000000"
    lc_col = t1[0].index("ours: +NEFT, LC")
    assert main[lc_col] == "50.00" and "LC (minimal GLM)" in (out / "table1.md").read_text()
    assert "Judge j: not calibrated here" in (out / "table1.md").read_text()
    t1 = rows(out / "table1.csv")
    assert sum(r[0] == "default" for r in t1) == 2  # main and gaussian5; LoRA goes to Table 3
    assert any(r[0] == "Alpaca (paper only)" and "29.79" in r for r in t1)

    t5 = rows(out / "table5.csv")
    assert [r[0] for r in t5[1:]] == ["base", "long", "+NEFT"]
    wr = t5[0].index("ours: win rate")
    assert t5[2][wr] == "45.00 ± 1.00" and t5[2][-2:] == ["44.84", "–"]  # the paper's "Long"
    assert t5[3][wr] == "60.00 ± 1.00" and t5[3][-2:] == ["61.99", "1058"]

    t6 = rows(out / "table6.csv")
    assert [r[0] for r in t6[1:]] == ["base", "neft-uniform5", "neft-gaussian5"]
    assert t6[3][1] == "52.00 ± 1.00" and t6[3][-1] == "60.93 / 65.09 / 59.13"

    t3 = rows(out / "table3.csv")
    assert t3[1][0] == "m / default" and t3[1][1] == "ours, LoRA (plain base)"
    assert t3[1][2] == "40.00 ± 1.00" and "47.00 ± 1.00" in t3[1]
    assert ["LLaMA-2-7B Alpaca", "paper, QLoRA", "26.71", "31.43", "28.57", "29.01"] + [
        "–"
    ] * 4 in t3

    fit = rows(out / "overfit.csv")
    assert fit[1][2:6] == ["1.0000", "2.0000", "0.5000", "20.00"] and fit[2][1] == "neft-uniform5"
    t4 = (out / "table4.md").read_text()
    assert "| training data, characters | 300.00 [" in t4 and "arithmetic: paper" in t4
    fig3 = (out / "figure3.md").read_text()
    assert "| ours | m, default | +NEFT | 50.0 [" in fig3

    report = (out / "REPORT.md").read_text()
    assert "Not covered" not in report
    # every section these points cover says where its setting differs from the paper's
    covered = [t for t in TABLES if t.in_report and any(t.covers(p) for p in points)]
    assert report.count("**Where our setting differs from the paper's.**") == len(covered) >= 8
    assert "No noise kind of this experiment has two or more strengths" in report
    assert "`python -m pipeline.run +point=all_lora`" in report and "| transformers |" in report
    assert report.index("## Versions") < report.index("## Table 1")
    assert "`alpaca_eval-main_base-000000000000`" in report


def test_sections_without_points_say_so(tmp_path):
    from pipeline.results.registry import TABLES

    p = point("only", "neft-uniform5", 5, 50.0)
    (tmp_path / "points").mkdir()
    write_json_atomic(tmp_path / "points" / f"{p.id}.json", p.to_json())
    report = (write_results(tmp_path) / "REPORT.md").read_text()
    missing = [t.title for t in TABLES if t.in_report and not t.covers(p)]
    assert {"Table 3 — (Q)LoRA", "Table 5 — length is (not) all you need"} <= set(missing)
    assert report.count("Not covered by this experiment") == len(missing)
    assert not (tmp_path / "table3.csv").exists()


def test_a_point_file_of_another_schema_is_refused_with_the_fix(tmp_path, caplog):
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "old.json").write_text(json.dumps({"id": "x", "base": {}}))
    with pytest.raises(RuntimeError, match="no usable point files"):
        write_results(tmp_path)
    assert re.search("skipped point file .*old.json.*rerun its point", caplog.text)


def test_a_point_file_of_the_schema_before_point_stages_is_read(tmp_path):
    """Schema 1 called the point's own stages `extra`; its files (results/default_all's among
    them) are read as they are, not refused. The sample is results/default's point as schema 1
    wrote it, kept in tests/support/ so that rebuilding the committed studies cannot remove it."""
    from pipeline.results.points import SCHEMA, read_points

    old = Path(__file__).resolve().parent / "support" / "point_schema1.json"
    data = json.loads(old.read_text(encoding="utf-8"))
    assert data["schema"] == 1 and "extra" in data  # as schema 1 wrote it
    (tmp_path / old.name).write_text(json.dumps(data), encoding="utf-8")
    (point,) = read_points(tmp_path)
    assert point.schema == SCHEMA == 2
    assert set(point.point_stages) == {"train_analysis", "judge_calibration"}
    assert (
        point.point_stages["judge_calibration"].metrics
        == data["extra"]["judge_calibration"]["metrics"]
    )


SHARED_PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper_numbers.md"


def _leaves(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node


@needs_shared_data("paper_numbers.md")
def test_shipped_paper_numbers_are_the_papers():
    """Every number of the structured file appears in the shared transcription, and back."""
    import re

    from pipeline.results.aggregate import load_paper

    paper = load_paper("pkg:paper_numbers.yaml")
    text = SHARED_PAPER.read_text(encoding="utf-8")
    quoted = {float(x) for x in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", text)}
    ours = {
        float(x)
        for key in (
            "table1",
            "table2",
            "figure2",
            "table3",
            "figure3",
            "table4",
            "table5",
            "table6",
            "table6_gaussian5_chars",
        )
        for x in _leaves(paper[key])
    }
    assert ours <= quoted, sorted(ours - quoted)
    assert paper["table1"]["alpaca"] == {"base": 29.79, "neft": 64.69, "alpha": 5}
    assert paper["table4"]["+NEFT, log-diversity"] == [16.41, 10.77, 8.60, 9.64]
    assert paper["table6"]["gaussian5"]["open-platypus"] == 59.13


def test_a_new_stage_gets_a_table_from_one_table_spec():
    """arm_metrics builds any per-arm stage's table; each cell keeps the stage key it came from."""
    from pipeline.results.model_tables import arm_metrics, has_stage

    p = point("main", "neft-uniform5", 5, 47.0)
    table = arm_metrics("alpaca_eval", ("win_rate", "n_total"), "caption")([p], {})
    assert table.header == ["model, data", "arm", "win_rate", "n_total"]
    assert [r[:2] for r in table.rows] == [["m, default", "base"], ["m, default", "neft-uniform5"]]
    assert [r[2].text for r in table.rows] == ["40.00", "47.00"]
    assert table.rows[1][2].keys == (p.arms[1].stages["alpaca_eval"].key,)
    assert has_stage("alpaca_eval")(p) and not has_stage("overfit")(p)
