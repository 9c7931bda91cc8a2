"""The blind pairwise-preference web page of a human study (Flask).

An annotator is invited: the study owner's `python -m pipeline.human invite` prints a personal
link /invite/<token>; its page posts the token to /start, which gives a secret session token in an
HttpOnly, SameSite=Strict cookie (both stored only hashed). There is no other way in: a made-up
name or token gets 403, a revoked link ends its sessions. Every state-changing request (POST)
must come from this site (Origin, else Referer, names this host) and carry the form's CSRF token.
Every vote page carries a single-use nonce bound to that session and that pair; a POST is stored
only with an unspent nonce of its own session and pair, in one transaction that commits before
the answer is sent. A replayed page (spent nonce) gets 409, a forged one 403, an unknown pair
404, a body over MAX_BODY 413. Changing a vote means opening that pair again (a fresh nonce);
the history keeps every vote.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from flask import (
    Flask,
    abort,
    make_response,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from werkzeug.exceptions import HTTPException

from pipeline.human.db import VoteDB, VoteRejected
from pipeline.human.study import Study, sequence_for

MAX_BODY = 16 * 1024  # a vote is a few short fields; anything bigger is not from our page
COOKIE_AGE = 60 * 60 * 24 * 30  # a month: a study runs for days to weeks
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # the only ones that change nothing
CHOICES = ("A", "B", "tie")
LONGER = ("A", "B", "same")


def _preference(choice: str, swapped: bool) -> float:
    """The shown choice in study terms: 1 = base wins, 2 = +NEFT wins, 1.5 = tie."""
    if choice == "tie":
        return 1.5
    return 2.0 if (choice == "A") == swapped else 1.0


def _longer(answer: str | None, swapped: bool) -> str | None:
    if answer in (None, "", "same"):
        return answer or None
    return "neft" if (answer == "A") == swapped else "base"


def csrf_token(secret: str) -> str:
    """The CSRF token of forms shown to the holder of the cookie `secret`.

    Written here because flask-wtf is not a dependency and this is all it would do for us: an
    HMAC of a secret only our HttpOnly, SameSite=Strict cookie carries (the session token; before
    login, a random login cookie). A page of another site can read neither the cookie nor our
    pages, so it cannot forge the token; derived, not stored, it survives a server restart."""
    return hmac.new(secret.encode(), b"neftune-human-csrf", hashlib.sha256).hexdigest()


def invite_token(text: str) -> str:
    """The token of what an annotator pasted: the code itself or the whole /invite/ link."""
    text = text.strip()
    return text.rsplit("/invite/", 1)[-1].strip("/") if "/invite/" in text else text


def _same_site() -> None:
    """403 unless a browser's POST comes from a page of this host: Origin if the browser sent
    one, else Referer. Host and port only, not the scheme, so that a TLS proxy in front (https
    outside, http here) still matches. A client that sends neither (curl, the test client) is
    left to the CSRF token, which it cannot have without our cookie and page."""
    origin = request.headers.get("Origin")
    source = origin if origin is not None else request.headers.get("Referer")
    if source is not None and urlsplit(source).netloc != request.host:
        abort(
            403,
            f"a cross-site request ({'Origin' if origin is not None else 'Referer'} "
            f"{source!r}) may not change anything here: nothing was stored",
        )


class _Pages:
    """The study's pages: one object per app, holding the study, its votes and its cookie."""

    def __init__(self, study: Study, db: VoteDB, report_dir: Path | None) -> None:
        self.study, self.db, self.report_dir = study, db, report_dir
        self.cookie = f"neft_{study.id[-12:]}"  # per study: two studies on one host keep logins
        self.login_cookie = f"{self.cookie}_login"  # the CSRF secret of the start page's form

    def current(self) -> dict | None:
        return self.db.session(request.cookies.get(self.cookie))

    def guard(self):
        """Before every request: a state-changing one must come from this site and carry the
        CSRF token of its form (the session's for votes, the login cookie's for /start)."""
        if request.method in SAFE_METHODS:
            return None
        _same_site()
        name = self.login_cookie if request.endpoint == "login" else self.cookie
        secret = request.cookies.get(name)
        sent = request.form.get("csrf", "").encode()  # bytes: compare_digest refuses non-ASCII str
        if not secret or not hmac.compare_digest(sent, csrf_token(secret).encode()):
            abort(
                403,
                "this form did not come from this study's page (missing or wrong CSRF token): "
                "reload the page and submit again; nothing was stored",
            )
        return None

    def _start_page(self, token: str | None = None, label: str | None = None):
        secret = request.cookies.get(self.login_cookie) or secrets.token_urlsafe(32)
        resp = make_response(
            render_template(
                "start.html",
                session=self.current(),
                n_pairs=len(self.study.pairs),
                csrf=csrf_token(secret),
                token=token,
                label=label,
            )
        )
        if request.cookies.get(self.login_cookie) != secret:
            resp.set_cookie(
                self.login_cookie, secret, max_age=COOKIE_AGE, httponly=True, samesite="Strict"
            )
        return resp

    def progress(self, sess: dict) -> tuple[list[tuple[int, bool]], dict[int, dict], int | None]:
        seq = sequence_for(self.study, sess["name"])
        votes = self.db.votes_of(sess["annotator_id"])
        nxt = next((i for i, (pid, _) in enumerate(seq) if pid not in votes), None)
        return seq, votes, nxt

    def start(self):
        return self._start_page()

    def invite(self, token: str):
        """An invite link's page: whom it invites and a Start button. A GET changes nothing (a
        link preview or prefetch must not log anyone in); the button posts the token."""
        label = self.db.invite_label(token)
        if label is None:
            raise VoteRejected(
                403,
                "this invite link is unknown or was revoked: ask the study owner for a new one",
                title="Invitation not accepted",
            )
        return self._start_page(token, label)

    def login(self):
        token = self.db.start_session(invite_token(request.form.get("token", "")))
        resp = make_response(redirect(url_for("vote"), code=303))
        resp.set_cookie(self.cookie, token, max_age=COOKIE_AGE, httponly=True, samesite="Strict")
        return resp

    def vote(self):
        sess = self.current()
        if sess is None:
            return redirect(url_for("start"))
        seq, votes, nxt = self.progress(sess)
        pos = request.args.get("pos", type=int)
        if pos is None:
            if nxt is None:
                return redirect(url_for("done"))
            pos = nxt + 1
        if not 1 <= pos <= len(seq) or (seq[pos - 1][0] not in votes and pos - 1 != nxt):
            return redirect(url_for("vote"))  # only earlier votes can be reopened
        pid, swapped = seq[pos - 1]
        pair = self.study.pairs[pid]
        answers = (
            (pair["output_2"], pair["output_1"])
            if swapped
            else (pair["output_1"], pair["output_2"])
        )
        return render_template(
            "vote.html",
            pair=pair,
            pos=pos,
            total=len(seq),
            answers=answers,
            nonce=self.db.issue_nonce(sess["session_id"], pid),
            csrf=csrf_token(request.cookies[self.cookie]),
            name=sess["name"],
            current=votes.get(pid),
            n_voted=len(votes),
        )

    def cast(self):
        sess = self.current()
        if sess is None:
            abort(403, "no annotator session: start at the start page")
        try:
            pid = int(request.form.get("pair", ""))
        except ValueError:
            abort(400, "the vote names no pair")
        choice, longer = request.form.get("choice"), request.form.get("longer") or None
        if choice not in CHOICES or longer not in (None, *LONGER):
            abort(400, f"choice must be one of {CHOICES}, longer one of {LONGER} or empty")
        if self.study.pair(pid) is None:
            abort(404, f"no pair {pid} in this study")
        swapped = dict(sequence_for(self.study, sess["name"]))[pid]
        self.db.record_vote(
            sess,
            pid,
            request.form.get("nonce", ""),
            {
                "preference": _preference(choice, swapped),
                "choice": choice,
                "swapped": swapped,
                "longer": _longer(longer, swapped),
            },
        )
        return redirect(url_for("vote"), code=303)

    def done(self):
        sess = self.current()
        if sess is None:
            return redirect(url_for("start"))
        seq, votes, nxt = self.progress(sess)
        if nxt is not None:
            return redirect(url_for("vote"))
        return render_template("done.html", name=sess["name"], total=len(seq))

    def _local_only(self) -> None:
        if not ipaddress.ip_address(request.remote_addr or "0.0.0.0").is_loopback:
            abort(403, "the report is shown only on the machine that runs the study")
        if self.report_dir is None:
            abort(404, "no report directory")

    def report(self):
        self._local_only()
        from pipeline.human.report_section import human_report_section, markdown_html

        text = human_report_section(self.report_dir, self.study.store, db_url=self.db.url)
        body = markdown_html(text or "No study with votes yet.", img_prefix="report/")
        return render_template("report.html", body=body)

    def figure(self, name: str):
        self._local_only()
        path = Path(self.report_dir) / f"{name}.png"
        if not name.replace("_", "").isalnum() or not path.is_file():
            abort(404)
        return send_file(path, mimetype="image/png")

    def healthz(self):
        return {"study": self.study.id, "pairs": len(self.study.pairs)}


def _headers(resp):
    resp.headers["Cache-Control"] = "no-store"  # a back button refetches: fresh nonce
    resp.headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with our
    # own form posts, which the same-site check must refuse; other sites still get nothing.
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:"
    return resp


def _rejected(err: VoteRejected):
    return render_template("message.html", title=err.title, message=err.message), err.status


def _http_error(err: HTTPException):
    messages = {413: f"request too large (at most {MAX_BODY} bytes): nothing was stored"}
    text = messages.get(err.code, err.description)
    return render_template("message.html", title=f"{err.code} {err.name}", message=text), err.code


ROUTES = (  # (rule, endpoint, methods)
    ("/", "start", ["GET"]),
    ("/invite/<token>", "invite", ["GET"]),
    ("/start", "login", ["POST"]),
    ("/vote", "vote", ["GET"]),
    ("/vote", "cast", ["POST"]),
    ("/done", "done", ["GET"]),
    ("/report", "report", ["GET"]),
    ("/report/<name>.png", "figure", ["GET"]),
    ("/healthz", "healthz", ["GET"]),
)


def create_app(study: Study, db: VoteDB, report_dir: Path | None = None) -> Flask:
    """The Flask app serving `study` with votes in `db`; /report (from `report_dir`) is only
    answered to this machine (loopback), so annotators elsewhere never see the running tally."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    pages = _Pages(study, db, report_dir)
    for rule, endpoint, methods in ROUTES:
        app.add_url_rule(rule, endpoint, getattr(pages, endpoint), methods=methods)
    app.before_request(pages.guard)
    app.after_request(_headers)
    app.register_error_handler(VoteRejected, _rejected)
    app.register_error_handler(HTTPException, _http_error)
    return app
