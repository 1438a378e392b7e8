"""A single self-contained HTML report: warnings first, a summary across sections, then each
section's warnings, params, metrics, tables and interactive Plotly charts.

Offline by construction: plotly.js is embedded once, inline (``plotly.offline.get_plotlyjs``;
about 4.8 MB per report, the price of a file that opens anywhere without a network), the style
sheet is inline, and nothing is loaded from a URL. Each chart is its figure's JSON in a
``<script type="application/json" class="plotly-figure">`` element that one inline script hands
to ``Plotly.newPlot``, so the data is also easy to read back (the tests do). Every text is
escaped; ``<`` inside the JSON is written ``\\u003c`` so no string can close its script element.
"""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from atlas_pipeline.atomic_files import write_text_atomic
from atlas_pipeline.research.metrics import METRIC_DESCRIPTIONS, format_metric, metric_label

SUMMARY_METRICS = (
    "total_return", "cagr", "sharpe", "sortino", "max_drawdown", "exposure", "trade_count",
    "win_rate", "profit_factor", "buy_and_hold_return",
)
"""Columns of the summary table (those that at least one section has)."""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
td { white-space: nowrap; }
th { background: #f3f3f3; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.highlight td { background: #fff6cc; font-weight: 600; }
.scroll { max-height: 32em; overflow: auto; }
.chart { width: 100%; margin: 1em 0; }
.params { font-family: ui-monospace, monospace; }
.warnings { background: #fff3cd; border: 2px solid #d39e00; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.warnings strong { color: #8a5a00; }
.notes { white-space: pre-wrap; }
footer { color: #777; font-size: 0.85em; margin-top: 3em; }
"""
_DRAW = """
document.querySelectorAll("script.plotly-figure").forEach(function (spec) {
  var figure = JSON.parse(spec.textContent);
  Plotly.newPlot(spec.dataset.target, figure.data, figure.layout,
                 {responsive: true, displaylogo: false, scrollZoom: true});
});
"""


@dataclass
class ReportTable:
    """A table block: ``frame``'s columns as headers (a column named like a metric is formatted
    as that metric), ``highlight`` the row positions to mark (e.g. the chosen candidate)."""

    title: str
    frame: pd.DataFrame
    highlight: Sequence[int] = ()
    note: str = ""
    metric_of: Mapping[str, str] = field(default_factory=dict)
    """Column -> the metric its numbers are formatted as, for columns not named after one."""


@dataclass
class ReportChart:
    """An interactive chart block."""

    title: str
    figure: go.Figure


@dataclass
class ReportSection:
    """One part of a report, e.g. one market of a backtest, or its walk-forward."""

    heading: str
    metrics: Mapping[str, float | str] = field(default_factory=dict)
    blocks: Sequence[ReportTable | ReportChart] = ()
    notes: str = ""
    warnings: Sequence[str] = ()
    """Shown prominently at the top of the section and, with the heading, at the top of the report."""
    params: str = ""
    """The params the section's strategy ran with (``fast=10, slow=40``)."""


def write_html_report(path: Path, title: str, sections: Sequence[ReportSection], warnings: Sequence[str] = ()) -> Path:
    """Write the report to ``path`` through a temp file in the same folder and a rename, so a
    reader never sees half a report; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = render_html_report(title, sections, warnings)
    write_text_atomic(path, document)
    return path


def render_html_report(title: str, sections: Sequence[ReportSection], warnings: Sequence[str] = ()) -> str:
    """The report as one HTML string. ``warnings`` (e.g. thin data) head the report, followed by
    every section's own warnings prefixed with its heading."""
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    charts = _ChartIds()
    everything = [*warnings, *(f"{s.heading}: {w}" for s in sections for w in s.warnings)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_text(title)}</title><style>{_STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>',
        f"<h1>{_text(title)}</h1>",
        _warnings(everything, "Warnings"),
        _summary(sections),
        *(_section(index, section, charts) for index, section in enumerate(sections)),
        f"<footer>Generated {generated} by Atlas. Period metrics use daily returns, 365 periods a year; "
        "trade metrics use closed trades. Charts: drag to zoom, double-click to reset, hover for values.</footer>",
        f'<script type="text/javascript">{_DRAW}</script>',
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part)


class _ChartIds:
    def __init__(self) -> None:
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return f"chart-{self.count}"


def _warnings(warnings: Sequence[str], heading: str) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{_text(w)}</li>" for w in warnings)
    return f'<div class="warnings" role="alert"><strong>⚠ {_text(heading)}</strong><ul>{items}</ul></div>'


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
        if section.metrics
    ]
    return "\n".join(["<h2>Summary</h2>", f"<table><tr><th></th>{header}</tr>", *rows, "</table>"])


def _section(index: int, section: ReportSection, charts: _ChartIds) -> str:
    rows = [
        f"<tr><th{_tooltip(key)}>{_text(metric_label(key))}</th>{_cell(key, value)}</tr>"
        for key, value in section.metrics.items()
    ]
    params = f'<p>Params: <span class="params">{_text(section.params)}</span></p>' if section.params else ""
    notes = f'<p class="notes">{_text(section.notes)}</p>' if section.notes else ""
    return "\n".join([
        f'<section id="section-{index}"><h2>{_text(section.heading)}</h2>',
        _warnings(section.warnings, "Warning" if len(section.warnings) == 1 else "Warnings"),
        params,
        notes,
        *(["<table>", *rows, "</table>"] if rows else []),
        *(_block(block, charts) for block in section.blocks),
        "</section>",
    ])


def _block(block: ReportTable | ReportChart, charts: _ChartIds) -> str:
    if isinstance(block, ReportChart):
        target = charts.next()
        spec = pio.to_json(block.figure, validate=False).replace("<", "\\u003c")
        return (f'<h3>{_text(block.title)}</h3><div class="chart" id="{target}"></div>'
                f'<script type="application/json" class="plotly-figure" data-target="{target}">{spec}</script>')
    frame = block.frame
    header = "".join(f"<th{_tooltip(str(c))}>{_text(c)}</th>" for c in frame.columns)
    marked = set(block.highlight)
    rows = [
        ('<tr class="highlight">' if position in marked else "<tr>")
        + "".join(_cell(block.metric_of.get(str(column), str(column)), value)
                  for column, value in zip(frame.columns, values))
        + "</tr>"
        for position, values in enumerate(frame.itertuples(index=False))
    ]
    note = f"<p>{_text(block.note)}</p>" if block.note else ""
    return "\n".join([f"<h3>{_text(block.title)}</h3>", note, f'<div class="scroll"><table><tr>{header}</tr>',
                      *rows, "</table></div>"])


def _cell(key: str, value: object) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        text = ""
    elif isinstance(value, pd.Timestamp):
        text = value.strftime("%Y-%m-%d %H:%M") if (value.hour or value.minute) else value.strftime("%Y-%m-%d")
    elif isinstance(value, (bool, np.bool_)):
        text = "yes" if value else ""
    elif isinstance(value, numbers.Real) and key.removeprefix("is_").removeprefix("oos_") in METRIC_DESCRIPTIONS:
        text = format_metric(key.removeprefix("is_").removeprefix("oos_"), value)
    elif isinstance(value, float):
        text = "n/a" if math.isnan(value) else f"{value:.4g}"
    elif isinstance(value, numbers.Integral):
        text = str(int(value))
    else:
        text = format_metric(key, value) if isinstance(value, str) else str(value)
    return f'<td class="number">{_text(text)}</td>'


def _tooltip(key: str) -> str:
    description = METRIC_DESCRIPTIONS.get(key.removeprefix("is_").removeprefix("oos_"))
    return f' title="{_text(description)}"' if description else ""


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)
