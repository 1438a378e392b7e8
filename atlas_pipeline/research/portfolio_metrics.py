"""Metrics of a portfolio backtest: the single-backtest metrics of its equity, turnover, and each
market's contribution to return and to the max drawdown (performance attribution).

Formulas in ``docs/metrics.md`` ("Portfolio metrics") and ``docs/trading-model.md``; the
contributions of all markets add up to ``total_return`` and ``max_drawdown`` exactly (up to
rounding), because cash only moves by fills and each fill belongs to one market.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from atlas_pipeline.research.engine.perps import margin_metrics
from atlas_pipeline.research.engine.portfolio import PortfolioResult
from atlas_pipeline.research.metrics import PERIODS_PER_YEAR, SECONDS_PER_DAY, compute_metrics

ATTRIBUTION_COLUMNS = ("contribution_return", "contribution_drawdown", "traded_value", "fees", "trade_count")
"""Per market: P&L / first equity; loss over the max-drawdown window / equity at its peak; value
of its fills; fees paid; closed trades."""
SWAP_ATTRIBUTION_COLUMNS = ("funding_paid", "funding_received", "liquidations")
"""Swap portfolios add, per market: funding paid and received (both >= 0, already in its
contributions) and its liquidations."""


def portfolio_metrics(result: PortfolioResult) -> dict[str, float | str]:
    """``compute_metrics`` of the portfolio's equity (buy and hold: the equal-weight basket), plus
    ``turnover``, ``annual_turnover`` and ``markets``."""
    metrics = compute_metrics(result.equity, result.trades, result.basket())
    equity = result.equity["equity"]
    done = result.orders[result.orders["status"] == "completed"]
    turnover = float(done["value"].sum() / equity.mean())
    years = (equity.index[-1] - equity.index[0]).total_seconds() / SECONDS_PER_DAY / PERIODS_PER_YEAR
    metrics["turnover"] = turnover
    metrics["annual_turnover"] = turnover / years if years > 0 else math.nan
    metrics["markets"] = float(len(result.symbols))
    if result.funding is not None:  # a swap portfolio (docs/trading-model.md)
        notional = (result.positions.abs() * result.closes).sum(axis=1).to_numpy(np.float64)
        metrics.update(margin_metrics(notional, equity.to_numpy(np.float64), result.funding, result.liquidations))
    return metrics


def drawdown_window(equity: pd.Series) -> tuple[int, int]:
    """(peak bar, trough bar) of the max drawdown: the deepest bar below its running peak, and the
    last bar before it at that peak (0, 0 without a drawdown)."""
    values = equity.to_numpy(dtype=float)
    peaks = np.maximum.accumulate(values)
    trough = int(np.argmax(1.0 - values / peaks))
    peak = int(np.flatnonzero(values[: trough + 1] == peaks[trough])[-1])
    return peak, trough


def attribution(result: PortfolioResult) -> pd.DataFrame:
    """One row per market (``ATTRIBUTION_COLUMNS``), in config order."""
    equity = result.equity["equity"]
    first = float(equity.iloc[0])
    peak, trough = drawdown_window(equity)
    pnl = result.pnl
    done = result.orders[result.orders["status"] == "completed"]
    by_market = done.groupby("symbol")
    table = pd.DataFrame(
        {
            "contribution_return": (pnl.iloc[-1] - pnl.iloc[0]) / first,
            "contribution_drawdown": (pnl.iloc[peak] - pnl.iloc[trough]) / float(equity.iloc[peak]),
            "traded_value": by_market["value"].sum(),
            "fees": by_market["fee"].sum(),
            "trade_count": result.trades.groupby("symbol").size(),
        },
        index=pd.Index(result.symbols, name="symbol"),
    )
    table = table.fillna({"traded_value": 0.0, "fees": 0.0, "trade_count": 0}).astype(float).loc[:, list(ATTRIBUTION_COLUMNS)]
    if result.funding is None:
        return table
    amounts = result.funding.groupby("symbol")["amount"]
    table["funding_paid"] = -amounts.apply(lambda a: a[a < 0].sum())
    table["funding_received"] = amounts.apply(lambda a: a[a > 0].sum())
    table["liquidations"] = result.liquidations.groupby("symbol").size()
    return table.fillna({c: 0.0 for c in SWAP_ATTRIBUTION_COLUMNS}).astype(float)
