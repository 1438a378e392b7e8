"""``metrics.compute_metrics`` on arrays: the same numbers (docs/metrics.md) without building
frames, so a screen of thousands of candidates spends its time on the candidates, not on pandas.

Each formula mirrors ``research/metrics.py`` (pandas' mean and sample std are a sum / count and
``sqrt(sum((x - mean)^2) / (n - 1))``); the test recomputes both on the same runs (1e-9).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pandas as pd

from atlas_pipeline.market_data.candles import DAY_MS
from atlas_pipeline.research.metrics import PERIODS_PER_YEAR, SECONDS_PER_DAY, assemble_metrics, trade_stats


def daily_equity_index(timestamp: np.ndarray) -> np.ndarray:
    """For each UTC calendar day from the first bar's to the last's, the index of its last bar
    (a day without bars points at the previous day's last bar: carried forward)."""
    days = timestamp // DAY_MS
    return np.searchsorted(days, np.arange(days[0], days[-1] + 1), side="right") - 1


@numba.njit(cache=True)
def _daily(equity: np.ndarray, day_index: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """(daily returns, their mean, sample std, downside deviation); NaN stats under 2 returns.
    Sums run in order (pandas sums pairwise): equal to ~1e-15, enough for a screen, whose
    confirmed rows are backtrader's own numbers."""
    n = len(day_index) - 1
    daily = np.empty(n)
    for j in range(n):
        daily[j] = equity[day_index[j + 1]] / equity[day_index[j]] - 1
    if n < 2:
        return daily, np.nan, np.nan, np.nan
    mean = daily.sum() / n
    square = 0.0
    down = 0.0
    for j in range(n):
        square += (daily[j] - mean) ** 2
        low = min(daily[j], 0.0)
        down += low * low
    return daily, mean, math.sqrt(square / (n - 1)), math.sqrt(down / n)


@numba.njit(cache=True)
def _drawdown(timestamp: np.ndarray, equity: np.ndarray) -> tuple[float, float]:
    """``metrics.max_drawdown`` in one pass: (depth, longest peak-to-recovery span in days)."""
    peak = equity[0]
    depth = 0.0
    last_peak = 0
    longest = 0
    under = False
    for i in range(len(equity)):
        value = equity[i]
        if value > peak:
            peak = value
        fall = 1.0 - value / peak
        if fall > depth:
            depth = fall
        if value < peak:
            under = True
        else:
            if under and timestamp[i] - timestamp[last_peak] > longest:
                longest = timestamp[i] - timestamp[last_peak]
            under = False
            last_peak = i
    if under and timestamp[-1] - timestamp[last_peak] > longest:
        longest = timestamp[-1] - timestamp[last_peak]
    return depth, longest / 1000.0 / SECONDS_PER_DAY


def fast_metrics(
    timestamp: np.ndarray,
    equity: np.ndarray,
    close: np.ndarray,
    in_market: np.ndarray,
    net_pnl: np.ndarray,
    entry_value: np.ndarray,
    day_index: np.ndarray | None = None,
) -> tuple[dict[str, float | str], np.ndarray]:
    """(metrics keyed as ``METRIC_DESCRIPTIONS``, daily returns) of one run's equity bars."""
    if not len(equity):
        raise ValueError("equity is empty: the backtest has no bars after warm-up")
    first, last = float(equity[0]), float(equity[-1])
    days = daily_equity_index(timestamp) if day_index is None else day_index
    daily, mean, std, downside = _daily(np.asarray(equity, dtype=np.float64), days)
    drawdown, duration = _drawdown(timestamp.astype(np.int64), np.asarray(equity, dtype=np.float64))
    years = (int(timestamp[-1]) - int(timestamp[0])) / 1000.0 / SECONDS_PER_DAY / PERIODS_PER_YEAR
    growth = last / first
    cagr = math.nan if years <= 0 else (growth ** (1.0 / years) - 1.0 if growth > 0 else -1.0)
    metrics = assemble_metrics(
        pd.Timestamp(int(timestamp[0]), unit="ms", tz="UTC").isoformat(),
        pd.Timestamp(int(timestamp[-1]), unit="ms", tz="UTC").isoformat(),
        first, last, cagr, mean, std, downside, drawdown, duration, float(np.mean(in_market)),
        trade_stats(net_pnl, net_pnl / entry_value), float(close[-1] / close[0] - 1.0),
    )
    return metrics, daily
