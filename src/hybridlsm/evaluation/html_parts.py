"""The HTML pieces every report section uses: numbers, tables and embedded figures (no JAX)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["fmt", "img_html", "table_html"]


def fmt(v, digits: int = 3) -> str:
    """A table cell: integers as they are, floats to ``digits`` decimals ("–" when not finite), text escaped."""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "–" if not math.isfinite(v) else f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{v:.{digits}f}"
    return html.escape(str(v))


def table_html(df: pd.DataFrame) -> str:
    """A plain table of ``df`` (text cells left-aligned)."""
    if df.empty:
        return "<p class='note'>nothing to show</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = "".join(f"<td class='txt'>{fmt(v)}</td>" if isinstance(v, str) else f"<td>{fmt(v)}</td>" for v in r)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def img_html(path: Path, alt: str) -> str:
    """A PNG embedded in the page (the report is one self-contained file); its title names the file."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = html.escape(f"{Path(path).parent.name}/{Path(path).name}")
    return f"<img alt='{html.escape(alt)}' title='{name}' src='data:image/png;base64,{data}'>"
