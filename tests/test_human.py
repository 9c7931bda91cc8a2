"""Human study (pipeline.human): study files, the vote database, the web page's rejections
through Flask's test client, the alpaca_eval export, kappa and the REPORT.md section."""

from __future__ import annotations

import json
import re

import pytest

from pipeline.human.__main__ import main
from pipeline.human.app import create_app
from pipeline.human.db import EVENTS, VoteDB
from pipeline.human.export import annotations, cohen_kappa, fleiss_kappa, majority, summarize
from pipeline.human.report import human_report_section, markdown_html
from pipeline.human.study import StudyError, load_study, sequence_for
from tests.support.human import NEFT_KEY, make_experiment
from tests.support.skips import needs_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request, study):
    """(study, db, app) on the default SQLite file, and on PostgreSQL when NEFTUNE_HUMAN_PG_URL
    names a scratch database (its human_* tables are dropped first)."""
    if request.param == "postgresql":
        pg_url = needs_postgres()
        from sqlalchemy import create_engine

        from pipeline.human.db import META

        engine = create_engine(pg_url)
        META.drop_all(engine)
        engine.dispose()
    db = VoteDB(pg_url if request.param == "postgresql" else study.default_db_url, study.id)
    app = create_app(study, db)
    yield study, db, app
    db.dispose()


def login(app, name: str):
    client = app.test_client()
    assert client.post("/start", data={"name": name}).status_code == 303
    return client


def page(client, pos: int | None = None) -> dict:
    """The vote page's pair id, nonce and progress text."""
    html = client.get("/vote" if pos is None else f"/vote?pos={pos}").get_data(as_text=True)
    return {
        "pair": int(re.search(r'name="pair" value="(\d+)"', html).group(1)),
        "nonce": re.search(r'name="nonce" value="([^"]+)"', html).group(1),
        "progress": re.search(r'id="progress"[^>]*>([^<]+)<', html).group(1),
    }


def n_events(db) -> int:
    with db.engine.connect() as conn:
        return len(conn.execute(EVENTS.select()).all())


def test_study_pairs_dir_and_sequence(study):
    assert re.fullmatch(r"human_study-tiny_neft-uniform5-[0-9a-f]{12}", study.id)
    saved = json.loads((study.dir / "study.json").read_text())
    assert saved["pairs"][3]["output_1"].startswith("The base answer")
    assert saved["pairs"][3]["output_2"].startswith("The neft answer")
    alice = sequence_for(study, "alice")
    assert alice == sequence_for(study, "alice")  # a reload shows the same sequence
    assert sorted(p for p, _ in alice) == list(range(8))
    assert alice != sequence_for(study, "bob")


def test_study_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(StudyError, match=r"no point files in .*points.*pipeline\.run"):
        load_study(tmp_path / "results", "exp")
    results = make_experiment(tmp_path)
    outputs = tmp_path / "store" / NEFT_KEY / "outputs.json"
    records = json.loads(outputs.read_text())
    outputs.write_text(json.dumps(records[::-1]))
    with pytest.raises(StudyError, match=r"do not hold the same instructions.*regenerate"):
        load_study(results, "exp")
    outputs.unlink()
    outputs.parent.rmdir()
    with pytest.raises(StudyError, match=rf"{NEFT_KEY}/outputs.json is missing.*--store"):
        load_study(results, "exp")


def test_database_wal_one_vote_per_pair_and_history(served):
    study, db, _ = served
    assert db.journal_mode() == ("wal" if db.engine.dialect.name == "sqlite" else None)
    sess = db.session(db.start_session("alice"))
    for pref in (1.0, 2.0):
        vote = {"preference": pref, "choice": "A", "swapped": pref == 2.0, "longer": None}
        db.record_vote(sess, 0, db.issue_nonce(sess["session_id"], 0), vote)
    current = db.current_votes()
    assert len(current) == 1 and current[0]["preference"] == 2.0
    assert current[0]["n_changes"] == 1
    assert [e["preference"] for e in db.history()] == [1.0, 2.0]


def test_rejections_store_nothing(served):
    study, db, app = served
    alice, bob = login(app, "alice"), login(app, "bob")
    p = page(alice)
    other = (p["pair"] + 1) % len(study.pairs)
    cases = [  # (client, form, status)
        (alice, {"pair": 99, "nonce": p["nonce"], "choice": "A"}, 404),
        (alice, {"pair": p["pair"], "nonce": "forged", "choice": "A"}, 403),
        (alice, {"pair": other, "nonce": p["nonce"], "choice": "A"}, 403),
        (bob, {"pair": p["pair"], "nonce": p["nonce"], "choice": "A"}, 403),
        (app.test_client(), {"pair": p["pair"], "nonce": p["nonce"], "choice": "A"}, 403),
        (alice, {"pair": p["pair"], "nonce": p["nonce"], "choice": "maybe"}, 400),
        (alice, {"pair": p["pair"], "nonce": p["nonce"], "choice": "A", "pad": "x" * 20000}, 413),
    ]
    for client, form, status in cases:
        resp = client.post("/vote", data=form)
        assert resp.status_code == status, (form, resp.get_data(as_text=True))
        assert n_events(db) == 0
    assert alice.post("/vote", data={**p, "choice": "A"}).status_code == 303
    # The same page posted again, even with another vote, is a replay.
    replay = alice.post("/vote", data={**p, "choice": "B"})
    assert replay.status_code == 409 and "already submitted" in replay.get_data(as_text=True)
    assert n_events(db) == 1


def test_change_from_the_page_and_reload(served):
    study, db, app = served
    alice = login(app, "alice")
    first = page(alice)
    assert first["progress"] == "1 / 8" and page(alice)["pair"] == first["pair"]  # reload
    assert alice.post("/vote", data={**first, "choice": "A"}).status_code == 303
    assert page(alice)["progress"] == "2 / 8"
    again = page(alice, pos=1)  # reopened to change the vote: a fresh nonce
    assert again["pair"] == first["pair"] and again["nonce"] != first["nonce"]
    assert alice.post("/vote", data={**again, "choice": "tie"}).status_code == 303
    assert [v["choice"] for v in db.current_votes()] == ["tie"]
    assert [e["choice"] for e in db.history()] == ["A", "tie"]
    assert alice.get("/vote?pos=5").headers["Location"].endswith("/vote")  # no skipping ahead


def test_export_is_base_vs_neft_whatever_was_shown(served, tmp_path):
    study, db, app = served
    alice = login(app, "alice")
    shown = dict(sequence_for(study, "alice"))
    for _ in study.pairs:
        p = page(alice)
        assert alice.post("/vote", data={**p, "choice": "A"}).status_code == 303
    assert alice.get("/vote").headers["Location"].endswith("/done")
    anns = annotations(study, db.current_votes())
    assert {k for k in anns[0]} >= {
        "instruction",
        "output_1",
        "output_2",
        "generator_1",
        "generator_2",
        "preference",
        "annotator",
    }
    for a in anns:  # "A" is +NEFT exactly where the pair was shown swapped
        assert a["preference"] == (2.0 if shown[a["pair_id"]] else 1.0)
        assert a["output_1"].startswith("The base") and a["generator_2"] == "tiny_neft"
    out = tmp_path / "ann.json"
    assert (
        main(
            [
                "export",
                "experiment=exp",
                "--results",
                str(tmp_path / "results"),
                "--out",
                str(out),
                "--db",
                db.url,
            ]
        )
        == 0
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(anns))


def votes_of(table: dict[str, list[float]]) -> list[dict]:
    return [
        {"annotator": name, "pair_id": i, "preference": p}
        for name, prefs in table.items()
        for i, p in enumerate(prefs)
    ]


def test_kappa_and_majority_by_hand(study):
    anns = annotations(study, votes_of({"alice": [1, 2, 2, 1.5], "bob": [1, 2, 1, 1.5]}))
    # p_o = 3/4, p_e = 1/4*2/4 + 1/4*1/4 + 2/4*1/4 = 5/16: kappa = (12 - 5) / (16 - 5) = 7/11
    assert cohen_kappa(anns, "alice", "bob")["kappa"] == pytest.approx(7 / 11)
    assert majority(anns) == {0: 1.0, 1: 2.0, 2: 1.5, 3: 1.5}
    three = annotations(
        study, votes_of({"a": [1, 2, 1, 1.5], "b": [1, 2, 2, 1.5], "c": [1, 2, 2, 1.5]})
    )
    # P_i = 1, 1, 1/3, 1; p_j = 4/12, 3/12, 5/12: kappa = (10/12 - 50/144) / (1 - 50/144)
    assert fleiss_kappa(three)["kappa"] == pytest.approx((10 / 12 - 50 / 144) / (94 / 144))
    assert majority(three)[2] == 2.0


def test_summary_win_rate_and_judge_agreement(study):
    prefs = [2, 2, 1, 1.5, 2, 2, 1, 2]
    s = summarize(study, votes_of({"alice": prefs, "bob": prefs}))
    expected = 100 * sum(p - 1 for p in prefs) / len(prefs)
    assert s["human"]["win_rate"] == pytest.approx(expected)
    assert s["human"]["ci"]["ci_low"] <= expected <= s["human"]["ci"]["ci_high"]
    assert s["inter_annotator"]["kappa"] == pytest.approx(1.0)
    judge = s["judges"][0]  # the judge says +NEFT on odd pairs, base on even ones
    same = [(p == 2) == bool(i % 2) and p != 1.5 for i, p in enumerate(prefs)]
    assert judge["exact"] == pytest.approx(100 * sum(same) / len(same))


def test_report_section(study, tmp_path):
    results_dir = tmp_path / "results" / "exp"
    empty = tmp_path / "other"
    (empty / "points").mkdir(parents=True)
    assert human_report_section(empty) is None
    db = VoteDB(study.default_db_url, study.id)
    for name in ("alice", "bob"):
        sess = db.session(db.start_session(name))
        for pid in range(len(study.pairs)):
            vote = {
                "preference": 2.0 if pid < 6 else 1.0,
                "choice": "A",
                "swapped": True,
                "longer": "neft",
            }
            db.record_vote(sess, pid, db.issue_nonce(sess["session_id"], pid), vote)
    db.dispose()
    text = human_report_section(results_dir)
    assert text.startswith("## Human study")
    assert "| +NEFT win rate, draws count ½ (%) | 75.00 ±" in text
    assert "Cohen's kappa 1.00 over 8 pairs" in text
    assert "74.6" in text and "88 / 22 / 30" in text
    assert "| head\\_to\\_head (" in text and "![" in text  # names escaped for Markdown
    assert (results_dir / "human_study.png").stat().st_size > 1000
    html = markdown_html(text)
    assert "<table>" in html and '<img alt="Human study' in html


def test_cli_fails_clearly_without_points(tmp_path, capsys):
    assert main(["report", "experiment=nothing", "--results", str(tmp_path)]) == 2
    assert "no point files in" in capsys.readouterr().err
