"""CLI of the human study: serve the voting page, export the votes, print the numbers.

python -m pipeline.human serve experiment=NAME [--host 127.0.0.1] [--port 8765] [--db URL]
python -m pipeline.human export experiment=NAME [--out FILE]
python -m pipeline.human report experiment=NAME
Common: --results DIR (default results), --store DIR (the point's store moved), --point ID,
--arm NAME (default: the first point and its first non-baseline arm).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.human.study import StudyError, ensure_dir, load_study


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
    if args.command == "serve":
        return _serve(study, db, args, Path(args.results) / experiment, redacted)
    from pipeline.human.export import annotations, summarize

    if args.command == "export":
        from pipeline.store.store import write_json_atomic

        anns = annotations(study, db.current_votes())
        out = Path(args.out) if args.out else study.dir / "human_annotations.json"
        write_json_atomic(out, anns)
        print(f"{len(anns)} annotations (output_1 = base, output_2 = +NEFT) -> {out}")
        return 0
    from pipeline.human.report import study_markdown

    summary = summarize(study, db.current_votes())
    print(study_markdown(study, summary, figure=None))
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _serve(study, db, args, report_dir: Path, redacted) -> int:
    from werkzeug.serving import make_server

    from pipeline.human.app import create_app

    app = create_app(study, db, report_dir=report_dir)
    server = make_server(args.host, args.port, app, threaded=True)
    print(
        f"[human] study {study.id}: {len(study.pairs)} pairs, votes in {redacted(db.url)}",
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
