"""A made-up human-study experiment (results dir, point file, both arms' outputs, a judge's
scores) for the human-study tests, and how those tests invite and log in annotators; the
`study` fixture built on it is in tests/conftest.py."""

import json
import re
from pathlib import Path

BASE_KEY = "generate-tiny_off-aaaaaaaaaaaa"
NEFT_KEY = "generate-tiny_neft-uniform5-bbbbbbbbbbbb"
JUDGE_KEY = "alpaca_eval-tiny_neft-uniform5_vs_base_local-cccccccccccc"


def instruction(i: int) -> str:
    return f"Instruction {i}: describe the number {i} in one sentence."


def make_experiment(
    root: Path,
    n_pairs: int = 8,
    experiment: str = "exp",
    records: list[tuple[str, str, str]] | None = None,
) -> Path:
    """A results dir with one point file and a store with both arms' outputs.json and a judge's
    scored.json (+NEFT wins odd pairs). `records`: (instruction, base answer, +NEFT answer);
    by default made up, the +NEFT answers the longer ones. Returns the results root (the
    experiment is results/<experiment>)."""
    store, results = root / "store", root / "results"
    records = records or [
        (
            instruction(i),
            f"The base answer about {i}.",
            " ".join([f"The neft answer about {i}."] * 4),
        )
        for i in range(n_pairs)
    ]
    for key, arm, col in ((BASE_KEY, "base", 1), (NEFT_KEY, "neft", 2)):
        (store / key).mkdir(parents=True)
        outs = [
            {"instruction": r[0], "generator": f"tiny_{arm}", "dataset": "demo", "output": r[col]}
            for r in records
        ]
        (store / key / "outputs.json").write_text(json.dumps(outs))
    (store / JUDGE_KEY).mkdir()
    scored = [
        {"instruction": r[0], "preference": 2.0 if i % 2 else 1.0} for i, r in enumerate(records)
    ]
    (store / JUDGE_KEY / "scored.json").write_text(json.dumps(scored))
    arms = [
        {
            "name": "off",
            "baseline": True,
            "seed": 0,
            "stages": {"generate": {"key": BASE_KEY, "metrics": {}}},
        },
        {
            "name": "neft-uniform5",
            "baseline": False,
            "seed": 0,
            "stages": {
                "generate": {"key": NEFT_KEY, "metrics": {}},
                "head_to_head": {"key": JUDGE_KEY, "metrics": {"win_rate": 50.0}},
            },
        },
    ]
    points = results / experiment / "points"
    points.mkdir(parents=True)
    point = {"id": "point-demo", "store": str(store), "arms": arms}
    (points / "point-demo.json").write_text(json.dumps(point))
    return results


def invite(db, label: str) -> str:
    """The secret token of a new invite labelled `label` in `db` (a VoteDB)."""
    return db.create_invite(label)[1]


def hidden_fields(html: str) -> dict[str, str]:
    """The hidden inputs of a page's form (csrf, token, pair, nonce), by name."""
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))


def login(app, db, label: str):
    """A Flask test client logged in as a new invite `label`, the way a browser does it: open
    the link's page, post its form (token and CSRF token)."""
    client = app.test_client()
    form = hidden_fields(client.get(f"/invite/{invite(db, label)}").get_data(as_text=True))
    assert client.post("/start", data=form).status_code == 303
    return client


def cast_votes(db, label: str, prefs: list[float]) -> None:
    """`label`'s votes (preference per pair id, shown as A with +NEFT as A), through the db."""
    sess = db.session(db.start_session(invite(db, label)))
    for pid, pref in enumerate(prefs):
        vote = {"preference": pref, "choice": "A", "swapped": True, "longer": "neft"}
        db.record_vote(sess, pid, db.issue_nonce(sess["session_id"], pid), vote)


DB_KINDS = ["sqlite", "postgresql"]  # the parameters of the tests that run on both databases


def fresh_db_url(kind: str, study) -> str:
    """A votes database for one test: the study's SQLite file, or the scratch PostgreSQL database
    of NEFTUNE_HUMAN_PG_URL with its human_* tables dropped first (skips where it is unset)."""
    if kind == "sqlite":
        return study.default_db_url
    from sqlalchemy import create_engine

    from pipeline.human.db import META
    from tests.support.skips import needs_postgres

    url = needs_postgres()
    engine = create_engine(url)
    META.drop_all(engine)
    engine.dispose()
    return url
