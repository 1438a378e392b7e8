"""A single self-contained HTML report: a summary across sections, then each section's metrics
and charts. Charts are inlined as base64 PNGs and the style sheet is inline, so the file can be
mailed or opened offline; every text is escaped."""

from __future__ import annotations

import base64
import html
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from atlas_pipeline.research.metrics import METRIC_DESCRIPTIONS, format_metric, metric_label

SUMMARY_METRICS = (
    "total_return", "cagr", "sharpe", "sortino", "max_drawdown", "exposure", "trade_count",
    "win_rate", "profit_factor", "buy_and_hold_return",
)
"""Columns of the summary table (those that at least one section has)."""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #f3f3f3; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 1em 0; }
.notes { white-space: pre-wrap; }
footer { color: #777; font-size: 0.85em; margin-top: 3em; }
"""


@dataclass
class ReportSection:
    """One part of a report, e.g. one market of a backtest."""

    heading: str
    metrics: Mapping[str, float | str]
    charts: Mapping[str, bytes]
    """Chart name -> PNG bytes."""
    notes: str = ""


def write_html_report(path: Path, title: str, sections: Sequence[ReportSection]) -> Path:
    """Write the report to ``path`` through a temp file in the same folder and a rename, so a
    reader never sees half a report; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = render_html_report(title, sections)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(document)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def render_html_report(title: str, sections: Sequence[ReportSection]) -> str:
    """The report as one HTML string."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_text(title)}</h1>",
        _summary(sections),
        *(_section(index, section) for index, section in enumerate(sections)),
        f"<footer>Generated {generated} by Atlas. Period metrics use daily returns, 365 periods a year; "
        "trade metrics use closed trades.</footer>",
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part)


def _summary(sections: Sequence[ReportSection]) -> str:
    keys = [key for key in SUMMARY_METRICS if any(key in section.metrics for section in sections)]
    if not sections or not keys:
        return ""
    header = "".join(f"<th{_tooltip(key)}>{_text(metric_label(key))}</th>" for key in keys)
    rows = [
        f'<tr><td><a href="#section-{index}">{_text(section.heading)}</a></td>'
        + "".join(_cell(key, section.metrics.get(key)) for key in keys)
        + "</tr>"
        for index, section in enumerate(sections)
    ]
    return "\n".join(["<h2>Summary</h2>", f"<table><tr><th></th>{header}</tr>", *rows, "</table>"])


def _section(index: int, section: ReportSection) -> str:
    rows = [
        f"<tr><th{_tooltip(key)}>{_text(metric_label(key))}</th>{_cell(key, value)}</tr>"
        for key, value in section.metrics.items()
    ]
    charts = [
        f'<img alt="{_text(name)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        for name, png in section.charts.items()
    ]
    notes = f'<p class="notes">{_text(section.notes)}</p>' if section.notes else ""
    return "\n".join([
        f'<section id="section-{index}"><h2>{_text(section.heading)}</h2>',
        notes,
        "<table>", *rows, "</table>",
        *charts,
        "</section>",
    ])


def _cell(key: str, value: float | str | None) -> str:
    text = "" if value is None else format_metric(key, value)
    return f'<td class="number">{_text(text)}</td>'


def _tooltip(key: str) -> str:
    description = METRIC_DESCRIPTIONS.get(key)
    return f' title="{_text(description)}"' if description else ""


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)
