"""Backtest charts as PNG bytes, drawn headless.

Figures are built with ``matplotlib.figure.Figure`` and rendered by ``FigureCanvasAgg`` directly,
never through pyplot: no global backend (``import backtrader.plot`` switches pyplot to TkAgg),
no figure registry to leak, safe in threads. Long series are reduced to at most ``MAX_POINTS``
points per line by keeping each bucket's min and max, so a 500k-bar curve draws in well under a
second and its extremes (the deepest drawdown, the highest peak) are still drawn.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.dates import date2num
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from atlas_pipeline.research.metrics import drawdown_series

MAX_POINTS = 4_000
WIDTH_INCHES, DPI = 12.0, 100
WIN, LOSS, NEUTRAL = "#2ca02c", "#d62728", "#1f77b4"


def downsample(series: pd.Series, max_points: int = MAX_POINTS) -> pd.Series:
    """At most ``max_points`` rows of ``series`` (NaNs dropped), in time order: the first, the last,
    and the min and max of each of about ``max_points / 2`` equal buckets, so extremes survive."""
    series = series.dropna()
    if len(series) <= max_points:
        return series
    values = series.to_numpy(dtype=float)
    size = -(-len(values) // max((max_points - 2) // 2, 1))
    buckets = -(-len(values) // size)
    padded = np.concatenate([values, np.full(buckets * size - len(values), np.nan)]).reshape(buckets, size)
    starts = np.arange(buckets) * size
    ends = [0, len(values) - 1]  # the line starts and ends where the series does
    keep = np.concatenate([starts + np.nanargmin(padded, axis=1), starts + np.nanargmax(padded, axis=1), ends])
    return series.iloc[np.unique(keep)]


def equity_drawdown_chart(equity: pd.DataFrame, close: pd.Series | None, title: str) -> bytes:
    """Equity (with buy-and-hold of the same market scaled to the starting equity) on top, the
    drawdown below it in % of the running peak."""
    values = _require(equity["equity"], "equity")
    figure = Figure(figsize=(WIDTH_INCHES, 7.0), dpi=DPI, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    _line(top, values, "strategy", NEUTRAL, 1.2)
    if close is not None and len(close.dropna()):
        closes = close.dropna().astype(float)
        _line(top, closes / closes.iloc[0] * float(values.iloc[0]), "buy and hold", "#7f7f7f", 0.9)
    top.set_title(title)
    top.set_ylabel("equity (quote currency)")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    drawdown = downsample(drawdown_series(values))
    bottom.fill_between(_times(drawdown.index), drawdown.to_numpy() * 100, 0, color=LOSS, alpha=0.35, linewidth=0)
    bottom.plot(_times(drawdown.index), drawdown.to_numpy() * 100, color=LOSS, linewidth=0.8)
    bottom.set_ylabel("drawdown")
    bottom.yaxis.set_major_formatter(PercentFormatter())
    bottom.set_xlabel("time (UTC)")
    bottom.grid(alpha=0.3)
    return _png(figure)


def trades_chart(close: pd.Series, trades: pd.DataFrame, title: str) -> bytes:
    """Price with every closed trade: entries as triangles (up = long, down = short), exits as
    dots, joined by a line green for a net win and red for a loss."""
    closes = _require(close, "close")
    figure = Figure(figsize=(WIDTH_INCHES, 6.0), dpi=DPI, layout="constrained")
    axes = figure.subplots()
    _line(axes, closes, "close", "#555555", 0.8)
    if len(trades):
        entry_times = _times(pd.DatetimeIndex(trades["entry_time"]))
        exit_times = _times(pd.DatetimeIndex(trades["exit_time"]))
        colors = np.where(trades["net_pnl"].to_numpy(dtype=float) > 0, WIN, LOSS)
        segments = np.stack([
            np.column_stack([date2num(entry_times), trades["entry_price"].to_numpy(dtype=float)]),
            np.column_stack([date2num(exit_times), trades["exit_price"].to_numpy(dtype=float)]),
        ], axis=1)
        axes.add_collection(LineCollection(segments, colors=colors, linewidths=1.2, alpha=0.8))
        for color, label in ((WIN, "winning trade"), (LOSS, "losing trade")):
            axes.plot([], [], color=color, linewidth=1.2, label=label)  # legend entries for the segments
        long = (trades["side"] == "long").to_numpy()
        for mask, marker, label in ((long, "^", "long entry"), (~long, "v", "short entry")):
            if mask.any():
                axes.scatter(entry_times[mask], trades["entry_price"].to_numpy()[mask], marker=marker,
                             s=36, color=WIN if marker == "^" else LOSS, edgecolors="black",
                             linewidths=0.4, zorder=3, label=label)
        axes.scatter(exit_times, trades["exit_price"].to_numpy(), marker="o", s=16, color="white",
                     edgecolors="black", linewidths=0.6, zorder=3, label="exit")
        axes.legend(loc="upper left")
    else:
        axes.text(0.5, 0.95, "no closed trades", transform=axes.transAxes, ha="center", va="top")
    axes.set_title(f"{title}: {len(trades)} closed trades")
    axes.set_ylabel("price")
    axes.set_xlabel("time (UTC)")
    axes.grid(alpha=0.3)
    return _png(figure)


def png_markdown(png: bytes, alt: str) -> str:
    """A markdown image with the PNG inline as a data URI (Dagster's UI renders it in metadata)."""
    alt = alt.replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def _require(series: pd.Series, name: str) -> pd.Series:
    series = series.dropna().astype(float)
    if series.empty:
        raise ValueError(f"nothing to chart: {name} has no values")
    return series


def _line(axes, series: pd.Series, label: str, color: str, width: float) -> None:
    points = downsample(series)
    axes.plot(_times(points.index), points.to_numpy(dtype=float), label=label, color=color, linewidth=width)


def _times(index: pd.Index) -> np.ndarray:
    """UTC wall times as naive datetime64 (what matplotlib's date axis converts fastest)."""
    index = pd.DatetimeIndex(index)
    return (index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index).to_numpy()


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def walkforward_chart(result, title: str) -> bytes:
    """Stitched out-of-sample equity with each test window shaded (alternating) on top; below it,
    per window, the winner's in-sample vs out-of-sample objective, so decay is visible at a glance.

    ``result`` is a ``research.walkforward.WalkForwardResult`` (not imported: walkforward imports
    the sweep pool, which charts does not need)."""
    windows = result.windows
    metric = result.objective.metric
    figure = Figure(figsize=(WIDTH_INCHES, 7.5), dpi=DPI, layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 2])
    for i, row in enumerate(windows.itertuples()):
        top.axvspan(_times(pd.DatetimeIndex([row.test_start]))[0], _times(pd.DatetimeIndex([row.test_end]))[0],
                    color="#dddddd" if i % 2 else "#f2f2f2", linewidth=0, zorder=0)
    equity = result.oos_equity["equity"]
    if len(equity.dropna()):
        _line(top, equity.astype(float), "out-of-sample equity (stitched)", NEUTRAL, 1.2)
        top.legend(loc="upper left")
    else:
        top.text(0.5, 0.5, "no out-of-sample bars", transform=top.transAxes, ha="center")
    top.set_title(f"{title}: {len(windows)} walk-forward windows (test windows shaded)")
    top.set_ylabel("equity (quote currency)")
    top.set_xlabel("time (UTC)")
    top.grid(alpha=0.3)
    positions = windows["index"].to_numpy()
    for offset, column, label, color in ((-0.2, "is_objective", "in-sample", "#7f7f7f"),
                                         (0.2, "oos_objective", "out-of-sample", NEUTRAL)):
        values = windows[column].astype(float).replace([np.inf, -np.inf], np.nan).to_numpy()
        bottom.bar(positions + offset, np.nan_to_num(values), width=0.4, label=label, color=color)
    bottom.axhline(0, color="black", linewidth=0.6)
    bottom.set_xticks(positions)
    bottom.set_xlabel("window (n/a values drawn as 0)")
    bottom.set_ylabel(metric)
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3, axis="y")
    return _png(figure)
