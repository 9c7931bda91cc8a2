"""The aggregation under damaged inputs (issue 19, items 3 and 7): point files that are no point
(`[]`, `null`, a string, empty or string metrics), two files with one point id, hidden files,
temp files of figures left by a kill. Each is named and skipped with a warning in REPORT.md; the
other points are still aggregated, as one generation; no temp file is taken for a result."""

import json
from pathlib import Path

import pytest

from pipeline.results.aggregate import write_results
from pipeline.store.store import write_json_atomic
from pipeline.tracking.tracker import Tracker
from tests.support.points import point

DAMAGED = {
    "list": [],
    "null": None,
    "string": "a point",
    "empty_metrics": "{}",
    "string_metrics": "'x'",
}


def _experiment(tmp_path: Path) -> Path:
    (tmp_path / "points").mkdir()
    for p in (
        point("main", "neft-uniform5", 5, 60.0, main=True),
        point("gaussian5", "neft-gaussian5", 5, 52.0, kind="gaussian"),
    ):
        write_json_atomic(tmp_path / "points" / f"{p.id}.json", p.to_json())
    return tmp_path


def _damaged(kind: str) -> object:
    if kind in ("empty_metrics", "string_metrics"):
        data = point("bad", "neft-uniform5", 5, 90.0).to_json()
        data["arms"][1]["stages"]["alpaca_eval"]["metrics"] = {} if kind == "empty_metrics" else "x"
        return data
    return DAMAGED[kind]


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_damaged_point_file_is_named_skipped_and_the_rest_aggregated(tmp_path, kind, caplog):
    out = _experiment(tmp_path)
    write_results(out)
    before = (out / "table1.md").read_text()
    (out / "points" / "zz-damaged.json").write_text(json.dumps(_damaged(kind)))
    write_results(out)  # must not raise: every later run of the experiment ends here
    assert f"skipped point file {out / 'points' / 'zz-damaged.json'}" in caplog.text
    report = (out / "REPORT.md").read_text()
    assert "point files skipped" in report and "zz-damaged.json" in report
    assert (out / "table1.md").read_text() == before  # the good points, as before
    assert "90.0" not in (out / "table1.md").read_text()


def test_a_second_file_with_the_same_point_id_is_refused_not_a_second_row(tmp_path, caplog):
    out = _experiment(tmp_path)
    write_results(out)
    before = (out / "table1.md").read_text()
    copy = json.loads((out / "points" / "point-main.json").read_text())
    (out / "points" / "copy-of-main.json").write_text(json.dumps(copy))
    (out / "points" / ".point-main.json").write_text(json.dumps(copy))  # hidden: no point at all
    write_results(out)
    assert (out / "table1.md").read_text() == before
    said = caplog.text
    assert "copy-of-main.json: repeats point id point-main" in said
    assert ".point-main.json" not in said


def test_a_failed_aggregation_leaves_the_previous_generation_whole(tmp_path, monkeypatch):
    out = _experiment(tmp_path)
    write_results(out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    new = point("alpha10", "neft-uniform10", 10, 70.0)  # a new generation would differ
    write_json_atomic(out / "points" / f"{new.id}.json", new.to_json())
    import pipeline.results.aggregate as aggregate

    def broken(*args, **kwargs):
        raise RuntimeError("killed while writing the report")

    monkeypatch.setattr(aggregate, "write_report", broken)
    with pytest.raises(RuntimeError, match="killed while writing"):
        write_results(out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # table1 and the rest not rewritten by half a generation
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_figure_temp_file_left_by_a_kill_is_no_result(tmp_path, monkeypatch):
    out = _experiment(tmp_path)
    write_results(out)
    (out / ".winrate.0123456789abcdef.png").write_bytes(b"")  # what a kill in savefig left
    logged = []

    class FakeRun:
        def log(self, entry):
            logged.extend(entry)

    class FakeWandb:
        Table = staticmethod(lambda columns, data: (columns, data))

        @staticmethod
        def Image(path):
            from PIL import Image

            Image.open(path).verify()  # what wandb.Image does: fails on a 0-byte PNG
            return path

    import contextlib
    import sys

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    tracker = Tracker("offline", "p", "exp", str(tmp_path / "wandb"))
    monkeypatch.setattr(
        Tracker, "stage_run", lambda self, key, cfg: contextlib.nullcontext(FakeRun())
    )
    tracker.log_tables(out)
    assert "figure/winrate" in logged and not any(".winrate" in k for k in logged)


def test_figures_are_saved_under_a_temp_name_no_png_glob_matches(tmp_path, monkeypatch):
    import pipeline.results.figures as figures

    seen = []
    plt = figures._plt()
    fig = plt.figure()
    real = fig.savefig
    monkeypatch.setattr(
        fig, "savefig", lambda path, **kw: (seen.append(Path(path)), real(path, **kw))
    )
    figures._save(fig, tmp_path / "winrate.png")
    assert [p.name for p in tmp_path.glob("*.png")] == ["winrate.png"]
    assert seen and not seen[0].name.endswith(".png") and seen[0].name.startswith(".")
