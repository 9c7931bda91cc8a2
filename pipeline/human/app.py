"""The blind pairwise-preference web page of a human study (Flask).

An annotator logs in with a name on the start page and gets a secret session token in an
HttpOnly, SameSite=Strict cookie (stored only hashed). Every vote page carries a single-use nonce
bound to that session and that pair; a POST is stored only with an unspent nonce of its own
session and pair, in one transaction that commits before the answer is sent. A replayed page
(spent nonce) gets 409, a forged one 403, an unknown pair 404, a body over MAX_BODY 413.
Changing a vote means opening that pair again (a fresh nonce); the history keeps every vote.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

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
MAX_NAME = 64
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


class _Pages:
    """The study's pages: one object per app, holding the study, its votes and its cookie."""

    def __init__(self, study: Study, db: VoteDB, report_dir: Path | None) -> None:
        self.study, self.db, self.report_dir = study, db, report_dir
        self.cookie = f"neft_{study.id[-12:]}"  # per study: two studies on one host keep logins

    def current(self) -> dict | None:
        return self.db.session(request.cookies.get(self.cookie))

    def progress(self, sess: dict) -> tuple[list[tuple[int, bool]], dict[int, dict], int | None]:
        seq = sequence_for(self.study, sess["name"])
        votes = self.db.votes_of(sess["annotator_id"])
        nxt = next((i for i, (pid, _) in enumerate(seq) if pid not in votes), None)
        return seq, votes, nxt

    def start(self):
        return render_template("start.html", session=self.current(), n_pairs=len(self.study.pairs))

    def login(self):
        name = " ".join(request.form.get("name", "").split())
        if not name or len(name) > MAX_NAME or not name.isprintable():
            abort(400, f"give a name or token of 1 to {MAX_NAME} printable characters")
        resp = make_response(redirect(url_for("vote"), code=303))
        resp.set_cookie(
            self.cookie,
            self.db.start_session(name),
            max_age=60 * 60 * 24 * 30,
            httponly=True,
            samesite="Strict",
        )
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
        from pipeline.human.report import human_report_section, markdown_html

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
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:"
    return resp


def _rejected(err: VoteRejected):
    return render_template("message.html", title="Vote not stored", message=err.message), err.status


def _http_error(err: HTTPException):
    messages = {413: f"request too large (at most {MAX_BODY} bytes): nothing was stored"}
    text = messages.get(err.code, err.description)
    return render_template("message.html", title=f"{err.code} {err.name}", message=text), err.code


ROUTES = (  # (rule, endpoint, methods)
    ("/", "start", ["GET"]),
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
    app.after_request(_headers)
    app.register_error_handler(VoteRejected, _rejected)
    app.register_error_handler(HTTPException, _http_error)
    return app
