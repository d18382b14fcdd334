"""Cells from user data (class names, labels, file names) made safe for the files we write.

CSV: a spreadsheet runs a cell that starts with = + - @ (or tab / carriage return) as a formula, so
such text cells get a leading single quote (OWASP's advice); a text cell that starts with a quote
gets one too, so `csv_unescape` restores every value exactly. Markdown: `|` would split a table
cell and a line break would end the row. Console lines: a line break in a file name would forge a
line, a terminal escape or bidi control would rewrite what is shown.
"""

from __future__ import annotations

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_escape(value: object) -> object:
    """A text cell prefixed with ' where a spreadsheet would read a formula; other values unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def csv_unescape(text: str) -> str:
    """The original text of a cell written through csv_escape."""
    return text[1:] if text.startswith("'") else text


def md_cell(value: object) -> str:
    """Text for one markdown table cell: pipes escaped, line breaks as spaces."""
    return " ".join(str(value).replace("|", "\\|").splitlines())


def one_line(value: object) -> str:
    """Text for one line of console output: every character that is not printable (line breaks, terminal
    escapes, bidi controls, the \\udcXX of an undecodable file name) written as its Python escape, e.g. \\n."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(value))
