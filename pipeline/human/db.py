"""Votes of a human study in a real database through SQLAlchemy Core: SQLite (WAL) by default,
PostgreSQL (or any SQLAlchemy URL) for a shared deployment.

Annotators are invited, never self-declared: the study owner creates one invite per annotator
(`python -m pipeline.human invite`), which holds a label (a name for the report, not an identity)
and the SHA-256 hash of the link's secret token. Only a live token starts a session; a vote belongs
to the invite (annotator_id), so a second browser with a made-up name has nothing to log in with.

Schema (tables prefixed human_ so they can share a database with other data):
  human_annotators  id, study, name (the label), created_at, token_hash (of the invite link's
                    token; NULL once revoked), invited_at (when that link was made), revoked_at,
                    legacy (a self-declared name of a database from before invites)
                                                                unique (study, name), (token_hash)
  human_sessions    id, annotator_id, token_hash, created_at, invite_hash
                    one per redeemed link; valid while invite_hash is the annotator's token_hash
  human_nonces      nonce_hash, session_id, pair_id, issued_at, used_at   one per vote page shown
  human_votes       annotator_id, pair_id, preference, choice, swapped, longer, n_changes,
                    updated_at                                   primary key (annotator_id, pair_id)
  human_vote_events id, annotator_id, pair_id, preference, choice, swapped, longer, nonce_hash,
                    created_at                                   append-only history of every vote
Secrets (invite tokens, session tokens, nonces) are stored only as SHA-256 hashes. A database made
before invites is migrated on open (columns added, its annotators marked legacy, votes kept).
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
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    true,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import CreateColumn

META = MetaData()
ANNOTATORS = Table(
    "human_annotators",
    META,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study", String(200), nullable=False),
    Column("name", String(64), nullable=False),  # the invite's label: shown, never trusted
    Column("created_at", Float, nullable=False),
    Column("token_hash", String(64), nullable=True),  # sha256 of the live link's token
    Column("invited_at", Float, nullable=True),  # when the live (or last) link was made
    Column("revoked_at", Float, nullable=True),
    # A name typed on the start page before invites. Default true so that the migration's
    # ADD COLUMN marks every existing row legacy in that one statement; new rows say False.
    Column("legacy", Boolean, nullable=False, server_default=true()),
    UniqueConstraint("study", "name"),
)
# An index, not a column constraint: the migration can add an index to an existing table on
# SQLite, not a UNIQUE column. NULLs (revoked, legacy) do not collide in SQLite or PostgreSQL.
Index("ix_human_annotators_token_hash", ANNOTATORS.c.token_hash, unique=True)
SESSIONS = Table(
    "human_sessions",
    META,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("annotator_id", Integer, ForeignKey("human_annotators.id"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    # The invite token's hash the session was started with: a revoked or replaced link (or a
    # session from before invites, NULL) no longer matches, so its sessions end with it.
    Column("invite_hash", String(64), nullable=True),
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


MAX_LABEL = 64  # the column's width


class VoteRejected(Exception):
    """A vote (or a login) that must not be stored; `status` is the HTTP status that says why,
    `title` the heading of the page that says it."""

    def __init__(self, status: int, message: str, title: str = "Vote not stored"):
        super().__init__(message)
        self.status, self.message, self.title = status, message, title


class InviteError(ValueError):
    """The owner's invite command cannot be done (a taken or unknown label); says how to fix it."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


def clean_label(label: str) -> str:
    """An invite's label with its whitespace collapsed; InviteError if empty, too long or not
    printable (it is shown on pages and in the report)."""
    label = " ".join(str(label).split())
    if not label or len(label) > MAX_LABEL or not label.isprintable():
        raise InviteError(f"an invite label is 1 to {MAX_LABEL} printable characters: {label!r}")
    return label


def _taken(label: str, row) -> str:
    if row.legacy and row.invited_at is None:
        return (
            f"{label!r} is a name typed on the start page before invites: pass --new-link to "
            f"give that annotator a link (its votes stay its own), or choose another label"
        )
    state = "revoked" if row.token_hash is None else "live"
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.invited_at or row.created_at))
    return (
        f"an invite labelled {label!r} exists (link made {made}, {state}): pass --new-link to "
        f"replace its link (the old one stops working, its votes stay), or choose another label"
    )


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; FULL: a commit is on disk before the HTTP answer, so
    # an acknowledged vote survives kill -9 and power loss alike.
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000", "foreign_keys=ON"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _migrate(engine) -> None:
    """Bring a database made by an older version up to META: add its missing columns (with the
    defaults META gives them) and indexes. Idempotent: a current database is left as it is.
    The only older layout is the one before invites, whose annotators become legacy ones
    (ANNOTATORS.legacy defaults true) and whose sessions end (no invite_hash)."""
    with engine.begin() as conn:
        found = inspect(conn)
        for table in META.sorted_tables:
            have = {c["name"] for c in found.get_columns(table.name)}
            for col in table.columns:
                if col.name not in have:
                    ddl = CreateColumn(col).compile(dialect=conn.dialect)
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
            for index in table.indexes:
                index.create(conn, checkfirst=True)


class VoteDB:
    """The votes of one study in the database at `url` (tables are created if missing, an
    older layout is migrated)."""

    def __init__(self, url: str, study: str):
        self.url, self.study = url, study
        self.engine = create_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        META.create_all(self.engine)
        _migrate(self.engine)

    def journal_mode(self) -> str | None:
        if self.engine.dialect.name != "sqlite":
            return None
        with self.engine.connect() as conn:
            return conn.exec_driver_sql("PRAGMA journal_mode").scalar()

    # -- invites (the study owner's command line) --

    def _by_label(self, conn, label: str):
        q = select(ANNOTATORS).where(ANNOTATORS.c.study == self.study, ANNOTATORS.c.name == label)
        return conn.execute(q).first()

    def create_invite(self, label: str, new_link: bool = False) -> tuple[dict, str]:
        """A new annotator labelled `label` and the secret token of its link (returned once,
        stored only hashed). With `new_link`, an existing label (a legacy annotator, a revoked
        or lost link) gets a fresh token instead: its votes stay its own, and its previous link
        and that link's sessions stop working."""
        label, token, now = clean_label(label), secrets.token_urlsafe(32), time.time()
        link = {"token_hash": digest(token), "invited_at": now, "revoked_at": None}
        try:
            with self.engine.begin() as conn:
                row = self._by_label(conn, label)
                if row is None:
                    conn.execute(
                        ANNOTATORS.insert().values(
                            study=self.study, name=label, created_at=now, legacy=False, **link
                        )
                    )
                elif not new_link:
                    raise InviteError(_taken(label, row))
                else:
                    conn.execute(update(ANNOTATORS).where(ANNOTATORS.c.id == row.id).values(**link))
        except IntegrityError as err:  # the same label created by a concurrent command
            raise InviteError(f"an invite labelled {label!r} was just created: run again") from err
        return self._invite(label), token

    def revoke_invite(self, label: str) -> dict:
        """End the link of the annotator labelled `label` and its sessions; its votes stay."""
        label = clean_label(label)
        with self.engine.begin() as conn:
            row = self._by_label(conn, label)
            if row is None:
                raise InviteError(
                    f"no invite labelled {label!r} in study {self.study}: "
                    f"`python -m pipeline.human invites` lists them"
                )
            if row.token_hash is not None:
                conn.execute(
                    update(ANNOTATORS)
                    .where(ANNOTATORS.c.id == row.id)
                    .values(token_hash=None, revoked_at=time.time())
                )
        return self._invite(label)

    def _invite(self, label: str) -> dict:
        return next(a for a in self.annotators() if a["label"] == label)

    def invite_label(self, token: str | None) -> str | None:
        """The label of the live invite whose link carries `token`, None if unknown or revoked."""
        if not token:
            return None
        q = select(ANNOTATORS.c.name).where(
            ANNOTATORS.c.study == self.study, ANNOTATORS.c.token_hash == digest(token)
        )
        with self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def annotators(self) -> list[dict]:
        """Every annotator of the study, oldest first, with where its votes came from: {"id",
        "label", "legacy", "created_at", "invited_at", "revoked_at", "link" (live, revoked,
        none), "sessions" (started with a link), "votes", "changes", "last_vote_at"}; never a
        token or its hash."""
        a, v, s = ANNOTATORS, VOTES, SESSIONS
        votes = (
            select(
                v.c.annotator_id,
                func.count().label("votes"),
                func.sum(v.c.n_changes).label("changes"),
                func.max(v.c.updated_at).label("last_vote_at"),
            )
            .group_by(v.c.annotator_id)
            .subquery()
        )
        sessions = (  # started with a link: sessions of typed names (before invites) do not count
            select(s.c.annotator_id, func.count().label("sessions"))
            .where(s.c.invite_hash.is_not(None))
            .group_by(s.c.annotator_id)
            .subquery()
        )
        q = (
            select(
                a.c.id,
                a.c.name,
                a.c.legacy,
                a.c.created_at,
                a.c.invited_at,
                a.c.revoked_at,
                a.c.token_hash.is_not(None).label("live"),
                votes.c.votes,
                votes.c.changes,
                votes.c.last_vote_at,
                sessions.c.sessions,
            )
            .outerjoin(votes, votes.c.annotator_id == a.c.id)
            .outerjoin(sessions, sessions.c.annotator_id == a.c.id)
            .where(a.c.study == self.study)
            .order_by(a.c.id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [
            {
                "id": r.id,
                "label": r.name,
                "legacy": bool(r.legacy),
                "created_at": r.created_at,
                "invited_at": r.invited_at,
                "revoked_at": r.revoked_at,
                "link": "live" if r.live else ("revoked" if r.revoked_at else "none"),
                "sessions": r.sessions or 0,
                "votes": r.votes or 0,
                "changes": r.changes or 0,
                "last_vote_at": r.last_vote_at,
            }
            for r in rows
        ]

    # -- sessions and votes (the web page) --

    def start_session(self, invite_token: str) -> str:
        """Redeem an invite link's token: a new secret session token of its annotator. Raises
        VoteRejected(403) for a token that is unknown or revoked: no token, no session."""
        invite_hash, token, now = digest(invite_token or ""), secrets.token_urlsafe(32), time.time()
        with self.engine.begin() as conn:
            aid = conn.execute(
                select(ANNOTATORS.c.id).where(
                    ANNOTATORS.c.study == self.study, ANNOTATORS.c.token_hash == invite_hash
                )
            ).scalar()
            if aid is None:
                raise VoteRejected(
                    403,
                    "this invitation is unknown or was revoked: open the personal link the "
                    "study owner sent you, or ask them for a new one",
                    title="Invitation not accepted",
                )
            conn.execute(
                SESSIONS.insert().values(
                    annotator_id=aid,
                    token_hash=digest(token),
                    created_at=now,
                    invite_hash=invite_hash,
                )
            )
        return token

    def session(self, token: str | None) -> dict | None:
        """{"session_id", "annotator_id", "name"} of a session token; None if unknown, or if the
        invite it was started with is revoked or replaced (name: the invite's label)."""
        if not token:
            return None
        q = (
            select(SESSIONS.c.id, SESSIONS.c.annotator_id, ANNOTATORS.c.name)
            .join(ANNOTATORS, ANNOTATORS.c.id == SESSIONS.c.annotator_id)
            .where(
                SESSIONS.c.token_hash == digest(token),
                ANNOTATORS.c.study == self.study,
                # NULL on either side (revoked link, session from before invites) never matches.
                SESSIONS.c.invite_hash == ANNOTATORS.c.token_hash,
            )
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
                # sessions of one invite racing would hit the primary key and roll back (a 500).
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
            select(
                table,
                ANNOTATORS.c.name.label("annotator"),
                ANNOTATORS.c.legacy.label("legacy_annotator"),
            )
            .join(ANNOTATORS, ANNOTATORS.c.id == table.c.annotator_id)
            .where(ANNOTATORS.c.study == self.study)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def current_votes(self) -> list[dict]:
        """Every annotator's latest vote per pair, with the annotator's label ("annotator") and
        whether it is a legacy self-declared name ("legacy_annotator")."""
        return sorted(self._rows(VOTES), key=lambda r: (r["pair_id"], r["annotator"]))

    def history(self) -> list[dict]:
        """Every vote ever cast (changes included), oldest first."""
        return sorted(self._rows(EVENTS), key=lambda r: r["id"])

    def dispose(self) -> None:
        self.engine.dispose()
