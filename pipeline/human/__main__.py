"""CLI of the human study: serve the voting page, export the votes, print the numbers.

python -m pipeline.human invite experiment=NAME --label alice [--base-url URL] [--new-link]
python -m pipeline.human invites experiment=NAME          (who is invited; never the tokens)
python -m pipeline.human revoke experiment=NAME --label alice
python -m pipeline.human serve experiment=NAME [--host 127.0.0.1] [--port 8765] [--db URL]
python -m pipeline.human export experiment=NAME [--out FILE]
python -m pipeline.human report experiment=NAME
Annotators are invited: `invite` prints a personal link (shown once, stored only hashed) for the
owner to send; only such a link lets anyone vote, and `revoke` ends it.
Common: --results DIR (default results), --store DIR (the point's store moved), --point ID,
--arm NAME (default: the first point and its first non-baseline arm).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from pipeline.human.study import StudyError, ensure_dir, load_study

DEFAULT_BASE_URL = "http://127.0.0.1:8765"  # serve's default host and port


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("overrides", nargs="*", help="experiment=NAME (default: default)")
    common.add_argument("--results", default="results", help="results root (default: results)")
    common.add_argument("--store", default=None, help="stage store, if not the point's own")
    common.add_argument("--point", default=None, help="point id (default: the first point)")
    common.add_argument("--arm", default=None, help="+NEFT arm name (default: the first)")
    common.add_argument(
        "--db",
        default=None,
        help="SQLAlchemy URL, e.g. postgresql+psycopg://"
        "user@host/db (default: votes.sqlite in the study directory)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.human",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    invite = sub.add_parser("invite", parents=[common], help="create an annotator's link")
    invite.add_argument(
        "--label", required=True, help="the annotator's name in the report (not a password)"
    )
    invite.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        help=f"where annotators reach `serve` (default {DEFAULT_BASE_URL})",
    )
    invite.add_argument(
        "--new-link",
        action="store_true",
        help="give an existing label (legacy, revoked or lost link) a new link; votes stay",
    )
    sub.add_parser("invites", parents=[common], help="list the annotators and their links")
    revoke = sub.add_parser("revoke", parents=[common], help="end an annotator's link")
    revoke.add_argument("--label", required=True)
    serve = sub.add_parser("serve", parents=[common], help="run the voting web page")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 shares it on the LAN)",
    )
    serve.add_argument("--port", type=int, default=8765)
    export = sub.add_parser("export", parents=[common], help="write alpaca_eval annotations")
    export.add_argument(
        "--out", default=None, help="output JSON (default: human_annotations.json in the study dir)"
    )
    sub.add_parser("report", parents=[common], help="print the study's numbers")
    return parser


def _experiment(overrides: list[str]) -> str:
    experiment = "default"
    for item in overrides:
        key, sep, value = item.partition("=")
        if key != "experiment" or not sep or not value:
            raise StudyError(f"unknown argument {item!r}: only experiment=NAME is understood")
        experiment = value
    return experiment


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pipeline.human.db import VoteDB, redacted

    try:
        experiment = _experiment(args.overrides)
        study = load_study(
            Path(args.results),
            experiment,
            args.point,
            args.arm,
            Path(args.store) if args.store else None,
        )
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ensure_dir(study)
    db = VoteDB(args.db or study.default_db_url, study.id)
    if args.command in ("invite", "invites", "revoke"):
        try:
            return _owner(study, db, args)
        finally:
            db.dispose()
    if args.command == "serve":
        return _serve(study, db, args, Path(args.results) / experiment, redacted)
    from pipeline.human.export import annotations, links, summarize

    if args.command == "export":
        from pipeline.store.store import write_json_atomic

        anns = annotations(study, db.current_votes())
        out = Path(args.out) if args.out else study.dir / "human_annotations.json"
        write_json_atomic(out, anns)
        k = links(db.annotators())
        print(
            f"{len(anns)} annotations (output_1 = base, output_2 = +NEFT) from "
            f"{k['n_annotators']} annotators ({k['n_links_used']} of {k['n_links_made']} invite "
            f"links used, {k['n_legacy']} legacy names with {k['n_legacy_votes']} votes) -> {out}"
        )
        return 0
    from pipeline.human.report_section import study_markdown

    summary = summarize(study, db.current_votes(), db.annotators())
    print(study_markdown(study, summary, figure=None))
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _when(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _owner(study, db, args) -> int:
    """The study owner's commands: invite, invites, revoke."""
    from pipeline.human.db import InviteError

    try:
        if args.command == "invite":
            who, token = db.create_invite(args.label, new_link=args.new_link)
            url = f"{args.base_url.rstrip('/')}/invite/{token}"
            print(f"invite #{who['id']} {who['label']!r} (link made {_when(who['invited_at'])}):")
            print(url)
            print(
                "Send this link to that annotator only: it is shown once (only its hash is "
                "stored) and anyone holding it votes as them. End it with: python -m "
                f"pipeline.human revoke experiment={study.experiment} --label "
                f"{json.dumps(who['label'])}",
                file=sys.stderr,
            )
        elif args.command == "revoke":
            who = db.revoke_invite(args.label)
            print(f"invite #{who['id']} {who['label']!r}: link revoked, {who['votes']} votes kept")
        else:
            print(_invites_table(db.annotators()))
    except InviteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _invites_table(annotators: list[dict]) -> str:
    rows = ["id  label  source  link  link made  sessions  votes"]
    for a in annotators:
        source = "legacy (self-declared name)" if a["legacy"] else "invite"
        rows.append(
            f"{a['id']}  {a['label']!r}  {source}  {a['link']}  {_when(a['invited_at'])}  "
            f"{a['sessions']}  {a['votes']}"
        )
    return "\n".join(rows) if annotators else "no annotators yet: create links with `invite`"


def _request_handler():
    from werkzeug.serving import WSGIRequestHandler

    class TokenlessLog(WSGIRequestHandler):
        """The access log with invite tokens cut out: a token is a password, and the log is
        printed and kept."""

        def log_request(self, code="-", size="-") -> None:
            path = self.path
            self.path = re.sub(r"^/invite/[^?#]*", "/invite/<token>", path)
            try:
                super().log_request(code, size)
            finally:
                self.path = path

    return TokenlessLog


def _serve(study, db, args, report_dir: Path, redacted) -> int:
    from werkzeug.serving import make_server

    from pipeline.human.app import create_app

    app = create_app(study, db, report_dir=report_dir)
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=_request_handler()
    )
    print(
        f"[human] study {study.id}: {len(study.pairs)} pairs, votes in {redacted(db.url)}",
        flush=True,
    )
    live = sum(a["link"] == "live" for a in db.annotators())
    print(
        f"[human] {live} live invite links; create one per annotator with: python -m "
        f"pipeline.human invite experiment={study.experiment} --label NAME "
        f"--base-url http://<this host>:{args.port}",
        flush=True,
    )
    where = "this machine only" if args.host in ("127.0.0.1", "localhost", "::1") else "network"
    print(
        f"[human] serving on http://{args.host}:{server.port}/ ({where}); Ctrl-C stops", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
