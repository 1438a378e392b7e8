"""Interactive Plotly charts for the HTML report (zoom, pan, hover), like freqtrade's plot-dataframe.

The PNG charts of ``charts.py`` stay what the Dagster UI shows as metadata; these are the
report's. Each function returns a ``plotly.graph_objects.Figure``; ``report.py`` embeds them with
plotly.js inline, so the file works offline.

Sizes: a candlestick chart draws at most ``MAX_CANDLES`` candles. Longer backtests are shown with
candles merged ``k`` at a time (``k`` the smallest whole number that fits; open of the first,
highest high, lowest low, close of the last, summed volume; indicators at each group's last
bar) and the chart title says so; trade markers stay at their exact fill time and price. Line
charts keep at most ``charts.MAX_POINTS`` points per line with ``charts.downsample`` (each
bucket's min and max survive).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from atlas_pipeline.research.charts import LOSS, NEUTRAL, WIN, downsample
from atlas_pipeline.research.engine.indicators import PRICE_PANEL
from atlas_pipeline.research.metrics import drawdown_series

MAX_CANDLES = 10_000
"""A year of 1h candles is drawn candle by candle; more are merged (module doc)."""
COLORS = ("#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#1f77b4", "#7f7f7f")
_LAYOUT = dict(template="plotly_white", hovermode="x unified", margin=dict(l=60, r=20, t=60, b=40),
               legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0))


def merge_candles(candles: pd.DataFrame, indicators: pd.DataFrame, max_candles: int = MAX_CANDLES
                  ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """``candles`` (time-indexed open/high/low/close/volume) and ``indicators`` merged ``k`` bars
    at a time so at most ``max_candles`` remain; returns both and ``k`` (1: unchanged)."""
    k = max(1, -(-len(candles) // max_candles))
    if k == 1:
        return candles, indicators, 1
    group = np.arange(len(candles)) // k
    merged = candles.groupby(group).agg(
        time=("time", "first"), open=("open", "first"), high=("high", "max"), low=("low", "min"),
        close=("close", "last"), volume=("volume", "sum"),
    )
    last = indicators.reset_index(drop=True).groupby(group).last() if len(indicators.columns) else pd.DataFrame(index=merged.index)
    return merged.reset_index(drop=True), last.set_axis(merged["time"]), k


def price_figure(
    candles: pd.DataFrame | None,
    close: pd.Series,
    indicators: pd.DataFrame,
    panels: Mapping[str, str],
    orders: pd.DataFrame,
    trades: pd.DataFrame,
    title: str,
    max_candles: int = MAX_CANDLES,
) -> go.Figure:
    """Candlesticks (volume below) with the strategy's price-panel indicators, every fill (buy
    triangles up, sell triangles down, hover: size, price, fee) and every closed trade as a
    dotted line from entry to exit (green win, red loss; hover: net pnl and return); below, one
    panel per other indicator. ``candles`` are the stored candles of the result's bars (columns
    ``timestamp`` ms, ``open``...``volume``); None draws the result's ``close`` as a line."""
    own_panels = list(dict.fromkeys(p for p in panels.values() if p != PRICE_PANEL))
    has_volume = candles is not None
    rows = 1 + has_volume + len(own_panels)
    heights = [0.6] + [0.12] * has_volume + [0.28 / max(len(own_panels), 1)] * len(own_panels)
    figure = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.03, row_heights=heights)
    merged_by = 1
    if candles is not None:
        frame = candles.assign(time=pd.to_datetime(candles["timestamp"], unit="ms", utc=True)).reset_index(drop=True)
        indicators = indicators.reindex(pd.DatetimeIndex(frame["time"], name="time"))  # one row per candle
        frame, indicators, merged_by = merge_candles(frame, indicators, max_candles)
        figure.add_trace(go.Candlestick(
            x=frame["time"], open=frame["open"], high=frame["high"], low=frame["low"], close=frame["close"],
            name="candles", increasing_line_color=WIN, decreasing_line_color=LOSS,
        ), row=1, col=1)
        figure.add_trace(go.Bar(x=frame["time"], y=frame["volume"], name="volume", marker_color="#9aa5b1",
                                showlegend=False), row=2, col=1)
        figure.update_yaxes(title_text="volume", row=2, col=1)
    else:
        points = downsample(close)
        figure.add_trace(go.Scatter(x=points.index, y=points.to_numpy(float), name="close", mode="lines",
                                    line=dict(color="#555555", width=1)), row=1, col=1)
    for number, column in enumerate(indicators.columns):
        panel = panels.get(column, PRICE_PANEL)
        row = 1 if panel == PRICE_PANEL else 2 + has_volume + own_panels.index(panel)
        figure.add_trace(go.Scatter(x=indicators.index, y=indicators[column].to_numpy(float), name=column,
                                    mode="lines", line=dict(color=COLORS[number % len(COLORS)], width=1.2)),
                         row=row, col=1)
        if panel != PRICE_PANEL:
            figure.update_yaxes(title_text=panel, row=row, col=1)
    _add_fills(figure, orders)
    _add_trades(figure, trades)
    merged = f" (each candle merges {merged_by} bars; zoom keeps that resolution)" if merged_by > 1 else ""
    figure.update_layout(title=f"{title}: candles, indicators and trades{merged}", height=520 + 160 * len(own_panels),
                         xaxis_rangeslider_visible=False, **_LAYOUT)
    figure.update_yaxes(title_text="price", row=1, col=1)
    return figure


def _add_fills(figure: go.Figure, orders: pd.DataFrame) -> None:
    fills = orders[orders["status"] == "completed"]
    for side, symbol, color in (("buy", "triangle-up", WIN), ("sell", "triangle-down", LOSS)):
        chosen = fills[fills["side"] == side]
        if chosen.empty:
            continue
        text = [f"{side} {size:.6g} @ {price:.6g}<br>fee {fee:.4g}"
                for size, price, fee in zip(chosen["size"], chosen["price"], chosen["fee"])]
        figure.add_trace(go.Scatter(
            x=chosen["executed_time"], y=chosen["price"].to_numpy(float), mode="markers", name=f"{side} fills",
            marker=dict(symbol=symbol, size=11, color=color, line=dict(color="black", width=0.6)),
            text=text, hovertemplate="%{text}<extra></extra>",
        ), row=1, col=1)


def _add_trades(figure: go.Figure, trades: pd.DataFrame) -> None:
    """Each closed trade as a dotted segment entry -> exit; one trace per outcome (gaps between)."""
    won = trades["net_pnl"].to_numpy(float) > 0
    for mask, name, color in ((won, "winning trades", WIN), (~won, "losing trades", LOSS)):
        chosen = trades[mask]
        if chosen.empty:
            continue
        xs, ys, texts = [], [], []
        for row in chosen.itertuples():
            text = f"{row.side} trade: net pnl {row.net_pnl:.4g} ({row.return_pct * 100:.2f} %), {row.bars_held} bars"
            xs += [row.entry_time, row.exit_time, None]
            ys += [row.entry_price, row.exit_price, None]
            texts += [text, text, None]
        figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, line=dict(color=color, width=1.5, dash="dot"),
                                    text=texts, hovertemplate="%{text}<extra></extra>"), row=1, col=1)


def equity_figure(equity: pd.DataFrame, close: pd.Series | None, title: str) -> go.Figure:
    """Equity (and buy-and-hold of the same market scaled to the starting equity) above the
    drawdown in % of the running peak."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.05, row_heights=[0.7, 0.3])
    values = equity["equity"].dropna().astype(float)
    _line(figure, values, "strategy", NEUTRAL, 1)
    if close is not None and len(close.dropna()) and len(values):
        closes = close.dropna().astype(float)
        _line(figure, closes / closes.iloc[0] * float(values.iloc[0]), "buy and hold", "#7f7f7f", 1)
    drawdown = downsample(drawdown_series(values)) * 100 if len(values) else pd.Series(dtype=float)
    figure.add_trace(go.Scatter(x=drawdown.index, y=drawdown.to_numpy(float), name="drawdown %", fill="tozeroy",
                                mode="lines", line=dict(color=LOSS, width=0.8)), row=2, col=1)
    figure.update_yaxes(title_text="equity", row=1, col=1)
    figure.update_yaxes(title_text="drawdown %", row=2, col=1)
    figure.update_layout(title=f"{title}: equity and drawdown", height=520, **_LAYOUT)
    return figure


def _line(figure: go.Figure, series: pd.Series, name: str, color: str, row: int) -> None:
    points = downsample(series)
    figure.add_trace(go.Scatter(x=points.index, y=points.to_numpy(float), name=name, mode="lines",
                                line=dict(color=color, width=1.3)), row=row, col=1)


def swept_params(table: pd.DataFrame) -> list[str]:
    """The sweep table's params that take more than one value, in grid order (``param_`` dropped)."""
    return [c.removeprefix("param_") for c in table.columns if c.startswith("param_") and table[c].nunique(dropna=False) > 1]


def sweep_figure(table: pd.DataFrame, metric: str, higher_is_better: bool, title: str) -> go.Figure | None:
    """The objective over the first two swept params as a heatmap (other swept params held at
    the chosen candidate's values; the chosen cell starred, rejected cells' reasons on hover),
    or over the one swept param as a line; None when nothing varies."""
    params = swept_params(table)
    if not params:
        return None
    chosen = table[table["chosen"]]
    if len(params) >= 3 and len(chosen):
        fixed = {p: chosen[f"param_{p}"].iloc[0] for p in params[2:]}
        for name, value in fixed.items():
            table = table[table[f"param_{name}"] == value]
        held = ", ".join(f"{k}={v}" for k, v in fixed.items())
        note = f" ({held} as chosen)"
    else:
        note = ""
    hover = [f"candidate {i}: {metric}={o:.4g}" + (f"<br>rejected: {r}" if r else "")
             for i, o, r in zip(table["candidate"], table["objective"].astype(float), table["rejected"])]
    scale = "RdYlGn" if higher_is_better else "RdYlGn_r"
    if len(params) == 1:
        x = f"param_{params[0]}"
        ordered = table.sort_values(x)
        figure = go.Figure(go.Scatter(x=ordered[x], y=ordered["objective"].astype(float), mode="lines+markers",
                                      name=metric, text=[hover[table.index.get_loc(i)] for i in ordered.index],
                                      hovertemplate="%{text}<extra></extra>"))
        figure.update_xaxes(title_text=params[0])
        figure.update_yaxes(title_text=metric)
    else:
        xs, ys = (sorted(table[f"param_{p}"].unique()) for p in params[:2])
        z = np.full((len(ys), len(xs)), np.nan)
        text = np.full((len(ys), len(xs)), "", dtype=object)
        for position, row in enumerate(table.itertuples()):
            i, j = ys.index(getattr(row, f"param_{params[1]}")), xs.index(getattr(row, f"param_{params[0]}"))
            z[i, j], text[i, j] = float(row.objective), hover[position]
        figure = go.Figure(go.Heatmap(x=[str(v) for v in xs], y=[str(v) for v in ys], z=z, text=text,
                                      colorscale=scale, colorbar=dict(title=metric), name=metric,
                                      hovertemplate=f"{params[0]}=%{{x}} {params[1]}=%{{y}}<br>%{{text}}<extra></extra>"))
        figure.update_xaxes(title_text=params[0], type="category")
        figure.update_yaxes(title_text=params[1], type="category")
    if len(chosen):
        best = chosen.iloc[0]
        y = best["objective"] if len(params) == 1 else str(best[f"param_{params[1]}"])
        x = best[f"param_{params[0]}"] if len(params) == 1 else str(best[f"param_{params[0]}"])
        figure.add_trace(go.Scatter(x=[x], y=[y], mode="markers", name="chosen", hoverinfo="skip",
                                    marker=dict(symbol="star", size=18, color="white", line=dict(color="black", width=1.5))))
    figure.update_layout(title=f"{title}: {metric} per candidate{note}", height=480, template="plotly_white",
                         margin=_LAYOUT["margin"], showlegend=False)
    return figure


def walkforward_figure(windows: pd.DataFrame, oos_equity: pd.DataFrame, metric: str, title: str) -> go.Figure:
    """Stitched out-of-sample equity with each test window shaded and labelled by its winner;
    below, per window, the winner's in-sample vs out-of-sample objective."""
    figure = make_subplots(rows=2, cols=1, vertical_spacing=0.12, row_heights=[0.65, 0.35],
                           subplot_titles=("out-of-sample equity, stitched (test windows shaded)",
                                           f"{metric} per window: in-sample vs out-of-sample"))
    for row in windows.itertuples():
        figure.add_vrect(x0=row.test_start, x1=row.test_end, fillcolor="#dddddd" if row.index % 2 else "#f2f2f2",
                         line_width=0, layer="below", row=1, col=1)
    _line(figure, oos_equity["equity"].astype(float), "out-of-sample equity", NEUTRAL, 1)
    labels = [f"{row.index}: {winner_label(row.params)}" for row in windows.itertuples()]
    for column, name, color in (("is_objective", "in-sample", "#7f7f7f"), ("oos_objective", "out-of-sample", NEUTRAL)):
        values = windows[column].astype(float).replace([np.inf, -np.inf], np.nan)
        figure.add_trace(go.Bar(x=labels, y=values.to_numpy(), name=name, marker_color=color), row=2, col=1)
    figure.update_yaxes(title_text="equity", row=1, col=1)
    figure.update_yaxes(title_text=metric, row=2, col=1)
    figure.update_layout(title=f"{title}: walk-forward", height=640, barmode="group", **_LAYOUT)
    return figure


def winner_label(params: object) -> str:
    """``fast=10, slow=40`` from a walk-forward window's params JSON; ``no winner`` for NA."""
    if params is None or pd.isna(params):
        return "no winner"
    return format_params(json.loads(str(params)))


def format_params(params: Mapping[str, object] | Sequence[tuple[str, object]]) -> str:
    """``fast=10, slow=40``: params as a reader writes them."""
    items = params.items() if isinstance(params, Mapping) else params
    return ", ".join(f"{k}={v}" for k, v in items) or "defaults"
