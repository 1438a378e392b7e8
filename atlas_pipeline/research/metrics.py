"""Performance metrics of one backtest, from its equity curve, closed trades and close prices.

Conventions (``docs/metrics.md`` has every formula and edge case):

- Period statistics (volatility, Sharpe, Sortino) use **daily** returns: the last equity of each
  UTC calendar day, days without bars carried forward, 365 periods a year (crypto trades 24/7).
  Risk-free rate 0.
- Total return, CAGR, max drawdown and its duration use the **bar-level** equity, so an
  intraday drawdown that recovers before midnight still counts.
- ``max_drawdown`` is a **positive** fraction (0.25 = the equity fell 25 % below its peak).
- Trade statistics come from closed trades only (the ``trades`` frame holds nothing else).
- A statistic that is undefined is NaN (no trades -> win rate NaN; fewer than two daily returns
  -> Sharpe NaN). A reward/risk ratio whose risk is exactly 0 is +inf when the reward is positive,
  -inf when negative and NaN when it is 0 (flat equity -> Sharpe NaN; only winning trades ->
  profit factor inf), so it still sorts above every finite value.

Every value is a float except ``start`` and ``end`` (ISO 8601 UTC strings), so numeric metadata
consumers filter on ``isinstance(value, float)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

PERIODS_PER_YEAR = 365
"""Daily returns, 24/7 markets."""

SECONDS_PER_DAY = 86_400.0

METRIC_DESCRIPTIONS: dict[str, str] = {
    "start": "Open time of the first bar after warm-up (UTC).",
    "end": "Open time of the last bar (UTC).",
    "final_equity": "Equity at the last bar's close, in quote currency.",
    "total_return": "Last equity / first equity - 1 (bar level).",
    "cagr": "Compound annual growth rate over the calendar time between first and last bar (365-day years).",
    "annual_volatility": "Standard deviation of daily returns (ddof=1) x sqrt(365).",
    "sharpe": "Mean / standard deviation (ddof=1) of daily returns x sqrt(365); risk-free rate 0.",
    "sortino": "Mean daily return / downside deviation sqrt(mean(min(r, 0)^2)) x sqrt(365).",
    "calmar": "CAGR / max drawdown.",
    "max_drawdown": "Largest fall of bar-level equity below its running peak, as a positive fraction of the peak.",
    "max_drawdown_duration_days": "Longest time from an equity peak to its recovery (or to the last bar if not recovered), in days.",
    "exposure": "Fraction of bars with an open position.",
    "trade_count": "Number of closed trades.",
    "win_rate": "Fraction of closed trades with net pnl > 0.",
    "profit_factor": "Sum of winning trades' net pnl / |sum of losing trades' net pnl|.",
    "expectancy": "Mean net pnl per closed trade, in quote currency (after fees).",
    "avg_trade_return": "Mean net return per closed trade (net pnl / entry value).",
    "best_trade_return": "Highest net return of a closed trade.",
    "worst_trade_return": "Lowest net return of a closed trade.",
    "buy_and_hold_return": "Last close / first close - 1 over the same bars.",
}

_LABELS = {
    "start": "Start (UTC)",
    "end": "End (UTC)",
    "final_equity": "Final equity",
    "total_return": "Total return",
    "cagr": "CAGR",
    "annual_volatility": "Annual volatility",
    "sharpe": "Sharpe ratio",
    "sortino": "Sortino ratio",
    "calmar": "Calmar ratio",
    "max_drawdown": "Max drawdown",
    "max_drawdown_duration_days": "Max drawdown duration",
    "exposure": "Exposure (time in market)",
    "trade_count": "Closed trades",
    "win_rate": "Win rate",
    "profit_factor": "Profit factor",
    "expectancy": "Expectancy (per trade)",
    "avg_trade_return": "Average trade return",
    "best_trade_return": "Best trade return",
    "worst_trade_return": "Worst trade return",
    "buy_and_hold_return": "Buy and hold return",
    # portfolios (research/portfolio_metrics.py)
    "turnover": "Turnover (x mean equity)",
    "annual_turnover": "Turnover per year",
    "contribution_return": "Contribution to return",
    "contribution_drawdown": "Contribution to max drawdown",
    "traded_value": "Traded value",
}
_PERCENT = {
    "total_return", "cagr", "annual_volatility", "max_drawdown", "exposure", "win_rate",
    "avg_trade_return", "best_trade_return", "worst_trade_return", "buy_and_hold_return",
    "contribution_return", "contribution_drawdown",
}


def compute_metrics(equity: pd.DataFrame, trades: pd.DataFrame, close: pd.Series) -> dict[str, float | str]:
    """Every metric of one backtest; keys and order as in ``METRIC_DESCRIPTIONS``."""
    if equity.empty:
        raise ValueError("equity is empty: the backtest has no bars after warm-up")
    values = equity["equity"].astype(float)
    values.index = _utc(values.index)
    first, last = float(values.iloc[0]), float(values.iloc[-1])
    daily = daily_returns(values)
    mean = float(daily.mean()) if len(daily) >= 2 else math.nan
    std = float(daily.std(ddof=1)) if len(daily) >= 2 else math.nan
    downside = float(np.sqrt(np.mean(np.minimum(daily.to_numpy(), 0.0) ** 2))) if len(daily) >= 2 else math.nan
    drawdown, duration = max_drawdown(values)
    cagr = _cagr(first, last, values.index[-1] - values.index[0])
    closes = close.astype(float)
    return assemble_metrics(
        values.index[0].isoformat(), values.index[-1].isoformat(), first, last, cagr, mean, std, downside, drawdown,
        duration, float(equity["in_market"].astype(bool).mean()), trade_metrics(trades),
        float(closes.iloc[-1] / closes.iloc[0] - 1.0) if len(closes) else math.nan,
    )


def assemble_metrics(
    start: str, end: str, first: float, last: float, cagr: float, mean: float, std: float, downside: float,
    drawdown: float, duration: float, exposure: float, trades: dict[str, float], buy_and_hold: float,
) -> dict[str, float | str]:
    """The metrics dict (``METRIC_DESCRIPTIONS`` order) from its parts; the twins' screen
    (``research/vector/fast_metrics.py``) computes the parts from arrays and shares this."""
    annual = math.sqrt(PERIODS_PER_YEAR)
    return {
        "start": start,
        "end": end,
        "final_equity": last,
        "total_return": last / first - 1.0,
        "cagr": cagr,
        "annual_volatility": std * annual,
        "sharpe": ratio(mean, std) * annual,
        "sortino": ratio(mean, downside) * annual,
        "calmar": ratio(cagr, drawdown),
        "max_drawdown": drawdown,
        "max_drawdown_duration_days": duration,
        "exposure": exposure,
        **trades,
        "buy_and_hold_return": buy_and_hold,
    }


def daily_returns(equity: pd.Series) -> pd.Series:
    """Returns between the last equities of consecutive UTC days; days without bars carry the
    previous day's equity (a 0 return), so a year is always 365 periods."""
    closes = equity.resample("1D").last().ffill()
    return closes.pct_change().iloc[1:]


def drawdown_series(equity: pd.Series) -> pd.Series:
    """Equity / running peak - 1 per bar: 0 at a new peak, negative below it (for charts)."""
    return equity / equity.cummax() - 1.0


def max_drawdown(equity: pd.Series) -> tuple[float, float]:
    """(deepest fall below the running peak as a positive fraction, longest peak-to-recovery span
    in days), both from bar-level equity; an unrecovered drawdown lasts until the last bar."""
    values = equity.to_numpy(dtype=float)
    peaks = np.maximum.accumulate(values)
    depth = float(np.max(1.0 - values / peaks))
    underwater = values < peaks
    if not underwater.any():
        return depth, 0.0
    # Seconds since the first bar: exact whatever the index's resolution (pandas 3 infers it).
    seconds = pd.Series((equity.index - equity.index[0]) / pd.Timedelta(seconds=1))
    at_peak = seconds.where(~underwater)
    spans = at_peak.bfill().fillna(seconds.iloc[-1]) - at_peak.ffill()
    return depth, float(spans[underwater].max()) / SECONDS_PER_DAY


def trade_metrics(trades: pd.DataFrame) -> dict[str, float]:
    """Statistics of closed trades' net pnl and net returns; NaN when there are none."""
    pnl = trades["net_pnl"].astype(float).to_numpy() if len(trades) else np.array([])
    returns = trades["return_pct"].astype(float).to_numpy() if len(trades) else np.array([])
    return trade_stats(pnl, returns)


def trade_stats(pnl: np.ndarray, returns: np.ndarray) -> dict[str, float]:
    """``trade_metrics`` of net pnl and net return arrays (one entry per closed trade)."""
    if not len(pnl):
        nan = math.nan
        return {"trade_count": 0.0, "win_rate": nan, "profit_factor": nan, "expectancy": nan,
                "avg_trade_return": nan, "best_trade_return": nan, "worst_trade_return": nan}
    return {
        "trade_count": float(len(pnl)),
        "win_rate": float(np.mean(pnl > 0)),
        "profit_factor": ratio(float(pnl[pnl > 0].sum()), float(-pnl[pnl < 0].sum())),
        "expectancy": float(pnl.mean()),
        "avg_trade_return": float(returns.mean()),
        "best_trade_return": float(returns.max()),
        "worst_trade_return": float(returns.min()),
    }


def ratio(reward: float, risk: float) -> float:
    """reward / risk, with risk exactly 0 giving +-inf by the reward's sign, NaN for 0/0."""
    if math.isnan(reward) or math.isnan(risk):
        return math.nan
    if risk == 0:
        return math.copysign(math.inf, reward) if reward else math.nan
    return reward / risk


def _cagr(first: float, last: float, span: pd.Timedelta) -> float:
    years = span.total_seconds() / SECONDS_PER_DAY / PERIODS_PER_YEAR
    if years <= 0:
        return math.nan
    growth = last / first
    return growth ** (1.0 / years) - 1.0 if growth > 0 else -1.0


def _utc(index: pd.Index) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(index)
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")


def format_metric(key: str, value: float | str) -> str:
    """A metric as a person reads it: fractions as %, durations in days, profit factor as x."""
    if isinstance(value, str):
        return value
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if key in _PERCENT:
        return f"{value * 100:.2f} %"
    if key == "max_drawdown_duration_days":
        return f"{value:.1f} days"
    if key == "profit_factor":
        return f"{value:.2f}x"
    if key in ("trade_count", "markets"):
        return f"{value:.0f}"
    if key in ("final_equity", "expectancy", "traded_value", "fees"):
        return f"{value:,.2f}"
    return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.4g}"


def metric_label(key: str) -> str:
    return _LABELS.get(key, key.replace("_", " ").capitalize())


def metrics_table_markdown(metrics: Mapping[str, float | str]) -> str:
    """A two-column markdown table (label, value with units) in the mapping's order."""
    rows = [f"| {metric_label(key)} | {format_metric(key, value)} |" for key, value in metrics.items()]
    return "\n".join(["| Metric | Value |", "| --- | ---: |", *rows])
