"""The generated block of a hand-kept document: the benchmark scripts rewrite only the text between
their begin and end markers and keep the rest of the file."""

from __future__ import annotations

from pathlib import Path


def replace_block(path: Path, begin: str, end: str, block: str, heading: str = "") -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the text from
    ``begin`` to ``end`` in ``path``; append it (after ``heading``) when the file has no such block."""
    text = Path(path).read_text() if Path(path).exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + heading + block + "\n"
    Path(path).write_text(text)
