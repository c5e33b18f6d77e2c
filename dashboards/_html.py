"""A self-contained static report of a study: one HTML file, plotly.js inlined, no server."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote


@dataclass(frozen=True)
class Link:
    """A table cell that links elsewhere: `href` relative to the report (a trial's
    folder, `trials/4/`), so the report still works when the study folder is moved."""

    text: str
    href: str


def write_report(
    path: Path,
    *,
    title: str,
    facts: Mapping[str, Any],
    front_columns: Sequence[str],
    front_rows: Sequence[Mapping[str, Any]],
    plots: Mapping[str, str],
    column_titles: Mapping[str, str] | None = None,
) -> Path:
    """Write `path` atomically: the study's facts, its front as a table (a `Link` value
    becomes a link; `column_titles` renames headers), and every plot (`plots`: name ->
    plotly HTML fragment without plotly.js)."""
    from plotly.offline import get_plotlyjs

    titles = column_titles or {}

    def cell(value: Any) -> str:
        if isinstance(value, Link):
            href = html.escape(quote(value.href, safe="/:#?=&%"), quote=True)
            return f'<a href="{href}">{html.escape(value.text)}</a>'
        if isinstance(value, float):
            return f"{value:.4g}"
        return html.escape(str(value))

    fact_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in facts.items()
    )
    head = "".join(f"<th>{html.escape(titles.get(c, c))}</th>" for c in front_columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(row.get(c, ''))}</td>" for c in front_columns) + "</tr>"
        for row in front_rows
    )
    sections = "".join(
        f'<section id="{html.escape(name)}"><h2>{html.escape(name.replace("_", " ").capitalize())}</h2>'
        f"{div}</section>"
        for name, div in plots.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1280px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccd; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f3f5f8; }}
#front td {{ vertical-align: top; }}
#front a {{ color: #0b6bcb; }}
section {{ overflow-x: auto; }} /* a wide parallel-coordinates plot scrolls, not squeezes */
</style>
<script>{get_plotlyjs()}</script></head>
<body>
<h1>{html.escape(title)}</h1>
<table class="facts">{fact_rows}</table>
<h2>Pareto front</h2>
<table id="front"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{sections}
</body></html>
"""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
