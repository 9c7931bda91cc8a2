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


def create_app(study: Study, db: VoteDB, report_dir: Path | None = None) -> Flask:
    """The Flask app serving `study` with votes in `db`; /report (from `report_dir`) is only
    answered to this machine (loopback), so annotators elsewhere never see the running tally."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    cookie = f"neft_{study.id[-12:]}"  # per study: two studies on one host keep their logins

    def current() -> dict | None:
        return db.session(request.cookies.get(cookie))

    def progress(sess: dict) -> tuple[list[tuple[int, bool]], dict[int, dict], int | None]:
        seq = sequence_for(study, sess["name"])
        votes = db.votes_of(sess["annotator_id"])
        nxt = next((i for i, (pid, _) in enumerate(seq) if pid not in votes), None)
        return seq, votes, nxt

    @app.after_request
    def headers(resp):
        resp.headers["Cache-Control"] = "no-store"  # a back button refetches: fresh nonce
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:"
        return resp

    @app.errorhandler(VoteRejected)
    def rejected(err: VoteRejected):
        return render_template("message.html", title="Vote not stored",
                               message=err.message), err.status

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        messages = {413: f"request too large (at most {MAX_BODY} bytes): nothing was stored"}
        text = messages.get(err.code, err.description)
        return render_template("message.html", title=f"{err.code} {err.name}",
                               message=text), err.code

    @app.get("/")
    def start():
        return render_template("start.html", session=current(), n_pairs=len(study.pairs))

    @app.post("/start")
    def login():
        name = " ".join(request.form.get("name", "").split())
        if not name or len(name) > MAX_NAME or not name.isprintable():
            abort(400, f"give a name or token of 1 to {MAX_NAME} printable characters")
        resp = make_response(redirect(url_for("vote"), code=303))
        resp.set_cookie(cookie, db.start_session(name), max_age=60 * 60 * 24 * 30,
                        httponly=True, samesite="Strict")
        return resp

    @app.get("/vote")
    def vote():
        sess = current()
        if sess is None:
            return redirect(url_for("start"))
        seq, votes, nxt = progress(sess)
        pos = request.args.get("pos", type=int)
        if pos is None:
            if nxt is None:
                return redirect(url_for("done"))
            pos = nxt + 1
        if not 1 <= pos <= len(seq) or (seq[pos - 1][0] not in votes and pos - 1 != nxt):
            return redirect(url_for("vote"))  # only earlier votes can be reopened
        pid, swapped = seq[pos - 1]
        pair = study.pairs[pid]
        answers = (pair["output_2"], pair["output_1"]) if swapped else (pair["output_1"],
                                                                          pair["output_2"])
        return render_template(
            "vote.html", pair=pair, pos=pos, total=len(seq), answers=answers,
            nonce=db.issue_nonce(sess["session_id"], pid), name=sess["name"],
            current=votes.get(pid), n_voted=len(votes))

    @app.post("/vote")
    def cast():
        sess = current()
        if sess is None:
            abort(403, "no annotator session: start at the start page")
        try:
            pid = int(request.form.get("pair", ""))
        except ValueError:
            abort(400, "the vote names no pair")
        choice, longer = request.form.get("choice"), request.form.get("longer") or None
        if choice not in CHOICES or longer not in (None, *LONGER):
            abort(400, f"choice must be one of {CHOICES}, longer one of {LONGER} or empty")
        if study.pair(pid) is None:
            abort(404, f"no pair {pid} in this study")
        swapped = dict(sequence_for(study, sess["name"]))[pid]
        db.record_vote(sess, pid, request.form.get("nonce", ""), {
            "preference": _preference(choice, swapped), "choice": choice, "swapped": swapped,
            "longer": _longer(longer, swapped)})
        return redirect(url_for("vote"), code=303)

    @app.get("/done")
    def done():
        sess = current()
        if sess is None:
            return redirect(url_for("start"))
        seq, votes, nxt = progress(sess)
        if nxt is not None:
            return redirect(url_for("vote"))
        return render_template("done.html", name=sess["name"], total=len(seq))

    def local_only():
        if not ipaddress.ip_address(request.remote_addr or "0.0.0.0").is_loopback:
            abort(403, "the report is shown only on the machine that runs the study")
        if report_dir is None:
            abort(404, "no report directory")

    @app.get("/report")
    def report():
        local_only()
        from pipeline.human.report import human_report_section, markdown_html

        text = human_report_section(report_dir, study.store, db_url=db.url)
        body = markdown_html(text or "No study with votes yet.", img_prefix="report/")
        return render_template("report.html", body=body)

    @app.get("/report/<name>.png")
    def figure(name: str):
        local_only()
        path = Path(report_dir) / f"{name}.png"
        if not name.replace("_", "").isalnum() or not path.is_file():
            abort(404)
        return send_file(path, mimetype="image/png")

    @app.get("/healthz")
    def healthz():
        return {"study": study.id, "pairs": len(study.pairs)}

    return app
