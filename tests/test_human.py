"""Human study (pipeline.human): study files, the vote database, the web page's rejections
through Flask's test client, the alpaca_eval export, kappa and the REPORT.md section."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from sqlalchemy import select

from pipeline.human.__main__ import main
from pipeline.human.app import create_app
from pipeline.human.db import ANNOTATORS, EVENTS, VoteDB
from pipeline.human.export import annotations, cohen_kappa, fleiss_kappa, majority, summarize
from pipeline.human.report_section import human_report_section, markdown_html
from pipeline.human.study import StudyError, load_study, sequence_for
from tests.support.human import (
    DB_KINDS,
    NEFT_KEY,
    cast_votes,
    fresh_db_url,
    hidden_fields,
    invite,
    login,
    make_experiment,
)


@pytest.fixture(params=DB_KINDS)
def served(request, study):
    """(study, db, app) on the default SQLite file, and on PostgreSQL when NEFTUNE_HUMAN_PG_URL
    names a scratch database (its human_* tables are dropped first)."""
    db = VoteDB(fresh_db_url(request.param, study), study.id)
    app = create_app(study, db)
    yield study, db, app
    db.dispose()


def page(client, pos: int | None = None) -> dict:
    """The vote page's form (pair id, nonce, CSRF token) and progress text."""
    html = client.get("/vote" if pos is None else f"/vote?pos={pos}").get_data(as_text=True)
    form = hidden_fields(html)
    return {
        "pair": int(form["pair"]),
        "nonce": form["nonce"],
        "csrf": form["csrf"],
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
    sess = db.session(db.start_session(invite(db, "alice")))
    for pref in (1.0, 2.0):
        vote = {"preference": pref, "choice": "A", "swapped": pref == 2.0, "longer": None}
        db.record_vote(sess, 0, db.issue_nonce(sess["session_id"], 0), vote)
    current = db.current_votes()
    assert len(current) == 1 and current[0]["preference"] == 2.0
    assert current[0]["n_changes"] == 1
    assert [e["preference"] for e in db.history()] == [1.0, 2.0]


def test_rejections_store_nothing(served):
    study, db, app = served
    alice, bob = login(app, db, "alice"), login(app, db, "bob")
    p = page(alice)
    other = (p["pair"] + 1) % len(study.pairs)
    vote = {**p, "choice": "A"}  # alice's own form, right as it is
    cases = [  # (client, form, status)
        (alice, {**vote, "pair": 99}, 404),
        (alice, {**vote, "nonce": "forged"}, 403),
        (alice, {**vote, "pair": other}, 403),
        (bob, {**vote, "csrf": page(bob)["csrf"]}, 403),  # bob's CSRF token, alice's nonce
        (app.test_client(), vote, 403),
        (alice, {**vote, "choice": "maybe"}, 400),
        (alice, {**vote, "pad": "x" * 20000}, 413),
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
    alice = login(app, db, "alice")
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
    alice = login(app, db, "alice")
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
        cast_votes(db, name, [2.0 if pid < 6 else 1.0 for pid in range(len(study.pairs))])
    db.dispose()
    text = human_report_section(results_dir)
    assert text.startswith("## Human study")
    assert "| +NEFT win rate, draws count ½ (%) | 75.00 ±" in text
    assert "Cohen's kappa 1.00 over 8 pairs" in text
    assert "74.6" in text and "88 / 22 / 30" in text
    # Who voted, through which link: counts, then per annotator its label and link, no token.
    assert "Annotators: 2 with 16 votes; invite links: 2 made, 2 used, 0 revoked." in text
    made = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
    assert re.search(rf"\| alice \| invite #1 \| {made} \| live \| 8 \|", text)
    assert re.search(rf"\| bob \| invite #2 \| {made} \| live \| 8 \|", text)
    assert "| head\\_to\\_head (" in text and "![" in text  # names escaped for Markdown
    assert (results_dir / "human_study.png").stat().st_size > 1000
    html = markdown_html(text)
    assert "<table>" in html and '<img alt="Human study' in html


def test_invite_command_prints_a_link_and_stores_only_its_hash(study, tmp_path, capsys):
    common = ["experiment=exp", "--results", str(tmp_path / "results")]
    assert main(["invite", *common, "--label", " alice ", "--base-url", "http://lab:8765/"]) == 0
    out = capsys.readouterr()
    token = re.fullmatch(r"http://lab:8765/invite/([\w-]{43})", out.out.splitlines()[1]).group(1)
    assert 'revoke experiment=exp --label "alice"' in out.err
    assert main(["invite", *common, "--label", "alice"]) == 2  # a label is one annotator
    assert "--new-link" in capsys.readouterr().err
    db = VoteDB(study.default_db_url, study.id)
    try:
        with db.engine.connect() as conn:
            stored = conn.execute(select(ANNOTATORS.c.token_hash)).scalars().all()
        assert stored == [hashlib.sha256(token.encode()).hexdigest()]
        assert db.invite_label(token) == "alice" and db.invite_label(token[:-1]) is None
    finally:
        db.dispose()
    assert not any(token.encode() in f.read_bytes() for f in study.dir.glob("votes.sqlite*"))
    assert main(["invites", *common]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^1  'alice'  invite  live  .*  0  0$", listing, flags=re.M)
    assert token not in listing
    assert main(["revoke", *common, "--label", "alice"]) == 0
    assert "link revoked, 0 votes kept" in capsys.readouterr().out
    assert main(["revoke", *common, "--label", "zoe"]) == 2
    assert "no invite labelled 'zoe'" in capsys.readouterr().err


def test_cli_fails_clearly_without_points(tmp_path, capsys):
    assert main(["report", "experiment=nothing", "--results", str(tmp_path)]) == 2
    assert "no point files in" in capsys.readouterr().err
