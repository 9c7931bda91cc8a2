"""Annotator names are data, never markup (issue 19, item 6): a name matplotlib would read as
mathtext (`$\\undefinedmacro$`) must not break the figure, /report or pipeline.report; a name
holding HTML must reach REPORT.md and /report escaped. Names are invite labels now (issue 26),
and legacy names typed by anyone before invites are shown the same way."""

from pipeline.human.db import VoteDB
from pipeline.human.report_section import human_report_section, markdown_html
from tests.support.human import cast_votes

NAMES = ("$\\undefinedmacro$", "<script>alert(1)</script>")


def _vote(study, names) -> None:  # noqa: F811
    db = VoteDB(study.default_db_url, study.id)
    for name in names:  # invite labels, typed by the study owner
        cast_votes(db, name, [2.0 if pid < 5 else 1.0 for pid in range(len(study.pairs))])
    db.dispose()


def test_names_are_escaped_in_the_report_and_drawn_literally(study, tmp_path):  # noqa: F811
    _vote(study, NAMES)
    results_dir = tmp_path / "results" / "exp"
    text = human_report_section(results_dir)  # draws human_study.png: no mathtext error
    assert (results_dir / "human_study.png").stat().st_size > 1000
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "$\\undefinedmacro$" not in text  # escaped: no Markdown/MathJax reads it
    page = markdown_html(text)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "$\\undefinedmacro$" in page  # shown as typed


def test_the_report_page_serves_with_such_names(study, tmp_path):  # noqa: F811
    from pipeline.human.app import create_app

    _vote(study, NAMES)
    db = VoteDB(study.default_db_url, study.id)
    try:
        app = create_app(study, db, report_dir=tmp_path / "results" / "exp")
        got = app.test_client().get("/report")
    finally:
        db.dispose()
    assert got.status_code == 200
    assert b"<script>alert" not in got.data
