"""Text that is data (annotator names, file names, error messages) put into markup: REPORT.md
(Markdown with HTML) and matplotlib figures (whose text `$...$` is drawn as mathtext)."""

from __future__ import annotations

import html
import re

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~$<>])")


def escape_md(text) -> str:
    """`text` shown literally in Markdown: HTML entities for &, < and >, a backslash before
    every other character Markdown would read as markup (not for use inside code spans)."""
    text = html.escape(str(text), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("\n", " ")


def escape_mathtext(text) -> str:
    """`text` drawn literally by matplotlib: a `$` would start mathtext (and a bad macro inside
    it makes the whole figure fail)."""
    return str(text).replace("$", r"\$")
