"""The /report page's HTML (pipeline.human.report_section.markdown_html, markdown-it-py): names
and labels are data, shown as typed (escaped by escape_md, raw HTML off), and the section's
tables, code, image and paragraphs all reach the page."""

import re

import pytest

from pipeline.human.db import VoteDB
from pipeline.human.report_section import human_report_section, markdown_html
from pipeline.markup import escape_md
from tests.support.human import cast_votes

MARKUP_NAMES = ("**bold**", "`code`", "_under_", "a|b", "[link](http://x)", "# head", "a & b")


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_a_name_that_looks_like_markdown_is_shown_as_typed(name):
    """In a paragraph and in a table cell: no bold, code, emphasis or link made of the name."""
    cell = escape_md(name)
    text = f"Votes per annotator: {cell}: 8.\n\n| annotator |\n|---|\n| {cell} |"
    page = markdown_html(text)
    assert not re.search(r"<(b|strong|code|em|a|h1)\b", page), page
    shown = name.replace("&", "&amp;")
    assert f"<p>Votes per annotator: {shown}: 8.</p>" in page
    assert f"<td>{shown}</td>" in page


def test_raw_html_in_the_markdown_is_escaped_not_passed_through():
    page = markdown_html(
        "<script>alert(1)</script>\n\nhi <img src=x onerror=alert(1)>\n\n![a](javascript:alert(1))"
    )
    assert "<script" not in page and "<img" not in page  # the image's URL is refused: text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "hi &lt;img src=x onerror=alert(1)&gt;" in page


def test_the_real_section_keeps_its_tables_code_image_and_paragraphs(study, tmp_path):
    db = VoteDB(study.default_db_url, study.id)
    for name in ("alice", "bob"):
        cast_votes(db, name, [2.0 if pid < 6 else 1.0 for pid in range(len(study.pairs))])
    db.dispose()
    text = human_report_section(tmp_path / "results" / "exp")
    page = markdown_html(text, img_prefix="report/")
    assert page.startswith("<h2>Human study — blind pairwise preference, base vs +NEFT</h2>")
    assert page.count("<table>") == 3  # humans vs paper, annotators and links, judges
    assert "<th>annotator</th>" in page and "<td>alice</td>" in page
    assert "<td>head_to_head (tiny_neft-uniform5_vs_base_local)</td>" in page  # \_ undone
    assert "<code>python -m pipeline.human serve experiment=exp</code>" in page
    assert (
        '<img alt="Human study: +NEFT win rate, humans vs judges vs paper" '
        'src="report/human_study.png" />'
    ) in page
    # Every line of prose of the section is a paragraph of the page, with its text intact.
    prose = [p for p in text.split("\n\n") if p[0] not in "#|!"]
    assert page.count("<p>") == len(prose) + 1  # + the image's paragraph
    assert "(1 − |judge − human|, a tie against" in page  # a | in prose is no table
