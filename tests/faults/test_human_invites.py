"""Annotators are invited, not self-declared (issue 26, item 4).

Before: any name typed on the start page was an annotator, so a second browser typing `alice` saw
and changed alice's votes, 30 made-up names cast 30 votes in 0.4 s, and a cross-origin
`POST /start` set a session cookie. Now only a live invite link's token starts a session (its
votes belong to the invite), every POST must come from the study's own pages with their CSRF
token, and a votes database made before invites opens with its votes kept as legacy ones.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import create_engine

from pipeline.human.app import create_app
from pipeline.human.db import EVENTS, SESSIONS, InviteError, VoteDB, digest
from pipeline.human.export import summarize
from pipeline.human.report_section import human_report_section
from pipeline.human.study import sequence_for
from tests.support.human import DB_KINDS, fresh_db_url, hidden_fields, invite, login

EVIL = "http://evil.example"


@pytest.fixture(params=DB_KINDS)
def served(request, study):
    db = VoteDB(fresh_db_url(request.param, study), study.id)
    yield study, db, create_app(study, db)
    db.dispose()


def rows(db, table) -> int:
    with db.engine.connect() as conn:
        return len(conn.execute(table.select()).all())


def start_form(client) -> dict:
    """The start page's form fields (its CSRF token), as a visitor without a link gets them."""
    return hidden_fields(client.get("/").get_data(as_text=True))


def vote_form(client, pos: int | None = None) -> dict:
    html = client.get("/vote" if pos is None else f"/vote?pos={pos}").get_data(as_text=True)
    return {**hidden_fields(html), "who": re.search(r'class="who">([^<]*)<', html).group(1)}


def session_cookie(resp) -> bool:
    return any(
        h.startswith("neft_") and "_login=" not in h for h in resp.headers.getlist("Set-Cookie")
    )


def test_made_up_names_cannot_log_in_or_vote(served):
    study, db, app = served
    for i in range(30):  # the 30 made-up names, each with the start page's own form
        client = app.test_client()
        form = {**start_form(client), "name": f"sock{i}", "token": f"sock{i}"}
        resp = client.post("/start", data=form)
        assert resp.status_code == 403, resp.get_data(as_text=True)
        assert not session_cookie(resp)
        assert client.get("/vote").headers["Location"].endswith("/")  # back to the start page
        resp = client.post("/vote", data={**form, "pair": 0, "nonce": "x", "choice": "A"})
        assert resp.status_code == 403
    assert rows(db, SESSIONS) == 0 and rows(db, EVENTS) == 0 and db.annotators() == []


def says_it_is_alice(app):
    """Another browser that types alice's name (or "alice" as a token): refused, no session."""
    other = app.test_client()
    for form in ({"name": "alice"}, {"token": "alice"}, {"name": "alice", "token": ""}):
        resp = other.post("/start", data={**start_form(other), **form})
        assert resp.status_code == 403 and not session_cookie(resp)
    return other


def test_a_second_browser_cannot_see_or_change_alices_votes(served):
    study, db, app = served
    says_it_is_alice(app)  # before alice was invited: the name is nobody's to take
    alice = login(app, db, "alice")
    first = vote_form(alice)
    assert first["who"] == "alice"
    assert alice.post("/vote", data={**first, "choice": "A"}).status_code == 303
    other = says_it_is_alice(app)
    assert "Continue as" not in other.get("/").get_data(as_text=True)
    assert other.get("/vote?pos=1").headers["Location"].endswith("/")  # sees nothing of hers
    again = vote_form(alice, pos=1)  # a fresh nonce of alice's: still not other's to spend
    assert other.post("/vote", data={**again, "choice": "B"}).status_code == 403
    assert [(v["annotator"], v["choice"]) for v in db.current_votes()] == [("alice", "A")]
    assert rows(db, EVENTS) == 1


def test_cross_origin_posts_are_refused_and_set_no_session(served):
    study, db, app = served
    victim = app.test_client()
    start = start_form(victim)  # the victim has the start page open: its cookie and CSRF token
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Referer": EVIL + "/page"}, {}):
        # Another site's page posting /start from the victim's browser: no CSRF token.
        resp = victim.post("/start", data={"name": "mallory"}, headers=headers)
        assert resp.status_code == 403, headers
        assert not session_cookie(resp)
    token = invite(db, "mallory")  # even a valid link may not be used from another site
    form = {**start, "name": "mallory", "token": token}
    refused = [  # (headers, form)
        ({"Origin": EVIL}, {"token": token}),
        ({"Origin": EVIL}, form),
        ({"Origin": "null"}, form),  # a sandboxed frame, a data: URL
        ({"Referer": EVIL + "/page"}, form),
        ({}, {"token": token}),
        ({}, {**form, "csrf": "0" * 64}),
        ({}, {**form, "csrf": "é" * 64}),
    ]
    for headers, data in refused:
        resp = victim.post("/start", data=data, headers=headers)
        assert resp.status_code == 403, (headers, data)
        assert not session_cookie(resp)
    assert rows(db, SESSIONS) == 0
    host = "http://localhost"  # the test client's own origin: the control case passes
    resp = victim.post("/start", data=form, headers={"Origin": host})
    assert resp.status_code == 303
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if "_login=" not in h)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = vote_form(victim)
    for headers, data in (({"Origin": EVIL}, page), ({}, {**page, "csrf": ""})):
        resp = victim.post("/vote", data={**data, "choice": "A"}, headers=headers)
        assert resp.status_code == 403
    assert rows(db, EVENTS) == 0
    resp = victim.post("/vote", data={**page, "choice": "A"}, headers={"Referer": host + "/vote"})
    assert resp.status_code == 303 and rows(db, EVENTS) == 1


def test_revoked_and_unknown_links_are_refused(served):
    study, db, app = served
    token = invite(db, "alice")
    alice = app.test_client()
    form = hidden_fields(alice.get(f"/invite/{token}").get_data(as_text=True))
    assert alice.post("/start", data=form).status_code == 303
    assert alice.post("/vote", data={**vote_form(alice), "choice": "A"}).status_code == 303
    assert app.test_client().get("/invite/not-a-token").status_code == 403
    db.revoke_invite("alice")
    assert alice.get("/vote").headers["Location"].endswith("/")  # the session ended with it
    assert alice.get(f"/invite/{token}").status_code == 403
    assert alice.post("/start", data=form).status_code == 403
    with pytest.raises(InviteError, match="--new-link"):
        db.create_invite("alice")
    new = db.create_invite("alice", new_link=True)[1]
    assert alice.post("/start", data={**form, "token": new}).status_code == 303
    assert vote_form(alice)["who"] == "alice"  # her votes stay hers: she goes on at pair 2
    assert "2 / 8" in alice.get("/vote").get_data(as_text=True)
    assert app.test_client().post("/start", data={**form, "token": token}).status_code == 403
    (row,) = db.annotators()
    assert (row["label"], row["link"], row["votes"], row["sessions"]) == ("alice", "live", 1, 2)


# The schema as the code before invites created it (SQLAlchemy's DDL on SQLite, from
# sqlite_master), copied so that this test keeps building an old database when db.py changes.
OLD_DDL = """
CREATE TABLE human_annotators (
	id INTEGER NOT NULL,
	study VARCHAR(200) NOT NULL,
	name VARCHAR(64) NOT NULL,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (study, name)
);
CREATE TABLE human_sessions (
	id INTEGER NOT NULL,
	annotator_id INTEGER NOT NULL,
	token_hash VARCHAR(64) NOT NULL,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(annotator_id) REFERENCES human_annotators (id),
	UNIQUE (token_hash)
);
CREATE TABLE human_votes (
	annotator_id INTEGER NOT NULL,
	pair_id INTEGER NOT NULL,
	preference FLOAT NOT NULL,
	choice VARCHAR(4) NOT NULL,
	swapped BOOLEAN NOT NULL,
	longer VARCHAR(8),
	n_changes INTEGER NOT NULL,
	updated_at FLOAT NOT NULL,
	PRIMARY KEY (annotator_id, pair_id),
	FOREIGN KEY(annotator_id) REFERENCES human_annotators (id)
);
CREATE TABLE human_vote_events (
	id INTEGER NOT NULL,
	annotator_id INTEGER NOT NULL,
	pair_id INTEGER NOT NULL,
	preference FLOAT NOT NULL,
	choice VARCHAR(4) NOT NULL,
	swapped BOOLEAN NOT NULL,
	longer VARCHAR(8),
	nonce_hash VARCHAR(64) NOT NULL,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(annotator_id) REFERENCES human_annotators (id)
);
CREATE TABLE human_nonces (
	nonce_hash VARCHAR(64) NOT NULL,
	session_id INTEGER NOT NULL,
	pair_id INTEGER NOT NULL,
	issued_at FLOAT NOT NULL,
	used_at FLOAT,
	PRIMARY KEY (nonce_hash),
	FOREIGN KEY(session_id) REFERENCES human_sessions (id)
);
"""


def old_votes_db(url: str, study) -> dict[str, dict[int, float]]:
    """A votes database as the code before invites left it: alice voted on the first 3 pairs of
    her sequence (one vote changed once), bob on all 8, each with a session of a typed name.
    Returns the votes: {name: {pair id: preference}}."""
    engine = create_engine(url)
    ddl, mark = OLD_DDL, "?"
    if engine.dialect.name == "postgresql":  # where SQLAlchemy spelt the autoincrement ids SERIAL
        ddl, mark = re.sub(r"^\tid INTEGER", "\tid SERIAL", ddl, flags=re.M), "%s"
    alice = [pid for pid, _ in sequence_for(study, "alice")[:3]]
    votes = {
        "alice": dict(zip(alice, [2.0, 1.0, 1.5])),
        "bob": dict(enumerate([2.0, 2.0, 1.0, 2.0, 1.5, 2.0, 1.0, 2.0])),
    }
    with engine.begin() as conn:
        for statement in filter(str.strip, ddl.split(";")):
            conn.exec_driver_sql(statement)
        for name, prefs in votes.items():
            conn.exec_driver_sql(
                "INSERT INTO human_annotators (study, name, created_at) "
                f"VALUES ({mark}, {mark}, 1.0e9)",
                (study.id, name),
            )
            aid = conn.exec_driver_sql(
                f"SELECT id FROM human_annotators WHERE name = {mark}", (name,)
            ).scalar()
            conn.exec_driver_sql(
                "INSERT INTO human_sessions (annotator_id, token_hash, created_at) "
                f"VALUES ({mark}, {mark}, 1.0e9)",
                (aid, digest(f"cookie-{name}")),
            )
            for n, (pid, pref) in enumerate(prefs.items()):
                vote = (aid, pid, pref, "A", True, None)
                conn.exec_driver_sql(
                    "INSERT INTO human_votes (annotator_id, pair_id, preference, choice, "
                    "swapped, longer, n_changes, updated_at) VALUES "
                    f"({', '.join([mark] * 6)}, {int(n == 0)}, 1.0e9)",
                    vote,
                )
                conn.exec_driver_sql(
                    "INSERT INTO human_vote_events (annotator_id, pair_id, preference, choice, "
                    "swapped, longer, nonce_hash, created_at) VALUES "
                    f"({', '.join([mark] * 6)}, 'n{name}{pid}', 1.0e9)",
                    vote,
                )
    engine.dispose()
    return votes


@pytest.mark.parametrize("kind", DB_KINDS)
def test_a_votes_db_from_before_invites_opens_with_its_votes(kind, study, tmp_path):
    url = fresh_db_url(kind, study)
    old = old_votes_db(url, study)
    db = VoteDB(url, study.id)  # migrates
    try:
        got = {(v["annotator"], v["pair_id"]): v["preference"] for v in db.current_votes()}
        assert got == {(n, i): p for n, prefs in old.items() for i, p in prefs.items()}
        assert sum(v["n_changes"] for v in db.current_votes()) == 2
        assert all(v["legacy_annotator"] for v in db.current_votes())
        assert [(a["label"], a["legacy"], a["link"], a["votes"]) for a in db.annotators()] == [
            ("alice", True, "none", 3),
            ("bob", True, "none", 8),
        ]
        assert db.session("cookie-alice") is None  # a typed name's session is over
        # The old way in stays shut; the owner can give a legacy annotator a link to go on.
        app = create_app(study, db)
        client = app.test_client()
        resp = client.post("/start", data={**start_form(client), "name": "alice"})
        assert resp.status_code == 403
        with pytest.raises(InviteError, match="typed on the start page before invites"):
            db.create_invite("alice")
        token = db.create_invite("alice", new_link=True)[1]
        form = hidden_fields(client.get(f"/invite/{token}").get_data(as_text=True))
        assert client.post("/start", data=form).status_code == 303
        seq = sequence_for(study, "alice")  # her order, where she left it: 4th of 8
        html = client.get("/vote").get_data(as_text=True)
        assert "4 / 8" in html and f'data-pair="{seq[3][0]}"' in html
        login(app, db, "carol")
        s = summarize(study, db.current_votes(), db.annotators())
        assert s["n_votes"] == 11 and s["annotators"] == {"alice": 3, "bob": 8}
        assert {k: s["links"][k] for k in ("n_links_made", "n_links_used", "n_legacy")} == {
            "n_links_made": 2,
            "n_links_used": 2,
            "n_legacy": 2,
        }
        assert s["links"]["n_legacy_votes"] == 11
        assert len(db.history()) == 11
    finally:
        db.dispose()
    VoteDB(url, study.id).dispose()  # opening a migrated database again changes nothing
    if kind == "sqlite":
        text = human_report_section(tmp_path / "results" / "exp")
        assert "2 legacy annotators (names typed on the start page before invites" in text
        assert "| bob | legacy name | – | none | 8 |" in text
        assert "| alice | legacy name, then invite #1 |" in text
        assert token not in text
