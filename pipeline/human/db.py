"""Votes of a human study in a real database through SQLAlchemy Core: SQLite (WAL) by default,
PostgreSQL (or any SQLAlchemy URL) for a shared deployment.

Schema (tables prefixed human_ so they can share a database with other data):
  human_annotators  id, study, name, created_at                 unique (study, name)
  human_sessions    id, annotator_id, token_hash, created_at    one per start-page login
  human_nonces      nonce_hash, session_id, pair_id, issued_at, used_at   one per vote page shown
  human_votes       annotator_id, pair_id, preference, choice, swapped, longer, n_changes,
                    updated_at                                   primary key (annotator_id, pair_id)
  human_vote_events id, annotator_id, pair_id, preference, choice, swapped, longer, nonce_hash,
                    created_at                                   append-only history of every vote
Secrets (session tokens, nonces) are stored only as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

META = MetaData()
ANNOTATORS = Table(
    "human_annotators",
    META,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study", String(200), nullable=False),
    Column("name", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("study", "name"),
)
SESSIONS = Table(
    "human_sessions",
    META,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("annotator_id", Integer, ForeignKey("human_annotators.id"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)
NONCES = Table(
    "human_nonces",
    META,
    Column("nonce_hash", String(64), primary_key=True),
    Column("session_id", Integer, ForeignKey("human_sessions.id"), nullable=False),
    Column("pair_id", Integer, nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)


def _vote_columns() -> list[Column]:
    # A Column belongs to one table, so votes and their history each get fresh ones.
    return [
        Column("preference", Float, nullable=False),  # 1 base, 2 +NEFT, 1.5 tie
        Column("choice", String(4), nullable=False),  # as shown: A, B or tie
        Column("swapped", Boolean, nullable=False),  # +NEFT was shown as A
        Column("longer", String(8), nullable=True),
    ]  # blind check: base, neft, same, None


VOTES = Table(
    "human_votes",
    META,
    Column("annotator_id", Integer, ForeignKey("human_annotators.id"), primary_key=True),
    Column("pair_id", Integer, primary_key=True),
    *_vote_columns(),
    Column("n_changes", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)
EVENTS = Table(
    "human_vote_events",
    META,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("annotator_id", Integer, ForeignKey("human_annotators.id"), nullable=False),
    Column("pair_id", Integer, nullable=False),
    *_vote_columns(),
    Column("nonce_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
)


class VoteRejected(Exception):
    """A vote that must not be stored; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; FULL: a commit is on disk before the HTTP answer, so
    # an acknowledged vote survives kill -9 and power loss alike.
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000", "foreign_keys=ON"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


class VoteDB:
    """The votes of one study in the database at `url` (tables are created if missing)."""

    def __init__(self, url: str, study: str):
        self.url, self.study = url, study
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        META.create_all(self.engine)

    def journal_mode(self) -> str | None:
        if self.engine.dialect.name != "sqlite":
            return None
        with self.engine.connect() as conn:
            return conn.exec_driver_sql("PRAGMA journal_mode").scalar()

    def start_session(self, name: str) -> str:
        """Log `name` in (creating the annotator); returns a new secret session token."""
        token, now = secrets.token_urlsafe(32), time.time()
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    aid = self._annotator_id(conn, name)
                    if aid is None:
                        conn.execute(
                            ANNOTATORS.insert().values(study=self.study, name=name, created_at=now)
                        )
                        aid = self._annotator_id(conn, name)
                    conn.execute(
                        SESSIONS.insert().values(
                            annotator_id=aid, token_hash=digest(token), created_at=now
                        )
                    )
                return token
            except IntegrityError:
                if attempt:  # the name was created by a concurrent login: retried once
                    raise
        raise AssertionError("unreachable")

    def _annotator_id(self, conn, name: str) -> int | None:
        q = select(ANNOTATORS.c.id).where(
            ANNOTATORS.c.study == self.study, ANNOTATORS.c.name == name
        )
        return conn.execute(q).scalar()

    def session(self, token: str | None) -> dict | None:
        """{"session_id", "annotator_id", "name"} of a session token, None if unknown."""
        if not token:
            return None
        q = (
            select(SESSIONS.c.id, SESSIONS.c.annotator_id, ANNOTATORS.c.name)
            .join(ANNOTATORS, ANNOTATORS.c.id == SESSIONS.c.annotator_id)
            .where(SESSIONS.c.token_hash == digest(token), ANNOTATORS.c.study == self.study)
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return (
            None if row is None else {"session_id": row[0], "annotator_id": row[1], "name": row[2]}
        )

    def issue_nonce(self, session_id: int, pair_id: int) -> str:
        """A single-use nonce for one vote on `pair_id` by this session."""
        nonce = secrets.token_urlsafe(24)
        with self.engine.begin() as conn:
            conn.execute(
                NONCES.insert().values(
                    nonce_hash=digest(nonce),
                    session_id=session_id,
                    pair_id=pair_id,
                    issued_at=time.time(),
                )
            )
        return nonce

    def record_vote(self, sess: dict, pair_id: int, nonce: str, vote: dict) -> None:
        """Store a vote ({"preference", "choice", "swapped", "longer"}) in one transaction,
        committed on return; raises VoteRejected (nothing stored) for a forged or replayed nonce."""
        h, now = digest(nonce or ""), time.time()
        with self.engine.begin() as conn:
            # Spend the nonce first: the write takes SQLite's lock at once (no read-then-upgrade
            # race) and a concurrent replay waits on the row in PostgreSQL, then matches nothing.
            spent = conn.execute(
                update(NONCES)
                .where(
                    NONCES.c.nonce_hash == h,
                    NONCES.c.used_at.is_(None),
                    NONCES.c.session_id == sess["session_id"],
                    NONCES.c.pair_id == pair_id,
                )
                .values(used_at=now)
            )
            if spent.rowcount != 1:
                row = conn.execute(select(NONCES).where(NONCES.c.nonce_hash == h)).first()
                if row is None or row.session_id != sess["session_id"] or row.pair_id != pair_id:
                    raise VoteRejected(
                        403,
                        "this vote was not issued by the server for this "
                        "annotator and pair: reload the page",
                    )
                raise VoteRejected(
                    409,
                    "this page was already submitted: reload it to vote "
                    "again or to change your vote",
                )
            aid = sess["annotator_id"]
            conn.execute(
                EVENTS.insert().values(
                    annotator_id=aid, pair_id=pair_id, nonce_hash=h, created_at=now, **vote
                )
            )
            key = (VOTES.c.annotator_id == aid) & (VOTES.c.pair_id == pair_id)
            changed = conn.execute(
                update(VOTES)
                .where(key)
                .values(n_changes=VOTES.c.n_changes + 1, updated_at=now, **vote)
            )
            if changed.rowcount == 0:
                # The spent nonce serialises this annotator's votes on the pair per session; two
                # sessions of one name racing would hit the primary key and roll back (a 500).
                conn.execute(
                    VOTES.insert().values(
                        annotator_id=aid, pair_id=pair_id, n_changes=0, updated_at=now, **vote
                    )
                )

    def votes_of(self, annotator_id: int) -> dict[int, dict]:
        """The current vote of one annotator per pair id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(VOTES).where(VOTES.c.annotator_id == annotator_id))
            return {r.pair_id: dict(r._mapping) for r in rows}

    def _rows(self, table) -> list[dict]:
        q = (
            select(table, ANNOTATORS.c.name.label("annotator"))
            .join(ANNOTATORS, ANNOTATORS.c.id == table.c.annotator_id)
            .where(ANNOTATORS.c.study == self.study)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def current_votes(self) -> list[dict]:
        """Every annotator's latest vote per pair, with the annotator's name."""
        return sorted(self._rows(VOTES), key=lambda r: (r["pair_id"], r["annotator"]))

    def history(self) -> list[dict]:
        """Every vote ever cast (changes included), oldest first."""
        return sorted(self._rows(EVENTS), key=lambda r: r["id"])

    def dispose(self) -> None:
        self.engine.dispose()
