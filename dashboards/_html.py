"""A self-contained static report of a study: one HTML file, plotly.js inlined, no server."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_report(
    path: Path,
    *,
    title: str,
    facts: Mapping[str, Any],
    front_columns: Sequence[str],
    front_rows: Sequence[Mapping[str, Any]],
    plots: Mapping[str, str],
) -> Path:
    """Write `path` atomically: the study's facts, its front as a table, and every plot
    (`plots`: name -> plotly HTML fragment without plotly.js)."""
    from plotly.offline import get_plotlyjs

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return html.escape(str(value))

    fact_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{cell(v)}</td></tr>" for k, v in facts.items()
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in front_columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(row.get(c, ''))}</td>" for c in front_columns) + "</tr>"
        for row in front_rows
    )
    sections = "".join(
        f'<section id="{html.escape(name)}"><h2>{html.escape(name.replace("_", " "))}</h2>'
        f"{div}</section>"
        for name, div in plots.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccd; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f3f5f8; }}
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
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
