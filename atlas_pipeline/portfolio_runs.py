"""Configured portfolios as plain functions (what the ``<name>/portfolio`` asset and notebooks call):
read every market's stored candles, run the portfolio engine, compute its metrics and attribution,
and save them through ``ResultStore`` (``<root>/portfolios/<name>/``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from atlas_pipeline.config.portfolios import PortfolioSettings
from atlas_pipeline.market_data.store import CandleStore
from atlas_pipeline.research import engine
from atlas_pipeline.research.charts import equity_drawdown_chart
from atlas_pipeline.research.engine.portfolio import PortfolioResult, PortfolioSpec, run_portfolio
from atlas_pipeline.research.portfolio_metrics import attribution, portfolio_metrics
from atlas_pipeline.research.plots import equity_figure, format_params
from atlas_pipeline.research.report import ReportChart, ReportSection, ReportTable, write_html_report
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research_runs import perp_spec, strategy_spec

Log = Callable[[str], None]
FRAMES = ("equity", "positions", "orders", "trades", "attribution")
CHART = "equity_drawdown"


def portfolio_spec(settings: PortfolioSettings) -> PortfolioSpec:
    return PortfolioSpec(
        market=strategy_spec(settings),  # no exits: portfolio orders are market orders only
        allocation=settings.allocation,
        volatility_window=settings.volatility_window or PortfolioSpec.volatility_window,
        max_positions=settings.max_positions,
        rebalance_every_ms=settings.rebalance_every_ms(),
        rebalance_threshold=settings.rebalance.threshold,
    )


@dataclass
class PortfolioRun:
    result: PortfolioResult
    metrics: dict[str, Any]
    attribution: pd.DataFrame
    chart: bytes
    folder: str
    seconds: dict[str, float] = field(default_factory=dict)


def run_configured_portfolio(
    settings: PortfolioSettings,
    store: CandleStore,
    results: ResultStore,
    strategies_dir: Path | None = None,
    log: Log | None = None,
) -> PortfolioRun:
    """Run one configured portfolio on its markets' stored candles and save its outputs.

    A market with no stored candles in the period is an error naming it (a market listed later
    has candles for part of the period and joins when they start)."""
    started = time.perf_counter()
    candles = {}
    for symbol in settings.symbols:
        candles[symbol] = engine.stored_candles(
            store, settings.exchange, symbol, settings.timeframe, settings.period.start, settings.period.end
        )
        if log:
            log(f"portfolio {settings.name}: {symbol} {len(candles[symbol]):,} candles")
    spec = portfolio_spec(settings)
    if settings.market_type == "swap":  # each market's mark prices and funding, checked whole
        spec = dataclasses.replace(
            spec, perps={symbol: perp_spec(settings, symbol, store, frame) for symbol, frame in candles.items()}
        )
    read = time.perf_counter()
    result = run_portfolio(candles, spec, settings.timeframe, strategies_dir)
    ran = time.perf_counter()
    metrics = portfolio_metrics(result)
    table = attribution(result)
    chart = equity_drawdown_chart(result.equity, result.basket(), f"portfolio {settings.name} {settings.timeframe}")
    results.save_portfolio_chart(settings.name, CHART, chart)
    orders = result.orders.assign(**{c: result.orders[c].astype(str) for c in ("created_time", "executed_time")})
    folder = results.save_portfolio(
        settings.name,
        {
            "equity": result.equity.assign(basket=result.basket()),
            "positions": result.positions,
            "orders": orders,
            "trades": result.trades,
            "attribution": table.reset_index(),
            **({} if result.funding is None else {"funding": result.funding, "liquidations": result.liquidations}),
        },
        {"metrics": metrics, "warmup_bars": result.warmup_bars, "parameters": result.parameters},
    )
    seconds = {"read": read - started, "backtest": ran - read, "metrics_and_save": time.perf_counter() - ran}
    if log:
        log(f"portfolio {settings.name}: {result.equity.shape[0]:,} bars, {len(result.trades)} trades, "
            f"total return {metrics['total_return']:.2%} in {sum(seconds.values()):.1f} s")
    return PortfolioRun(result, metrics, table, chart, folder, seconds)


def write_portfolio_report(settings: PortfolioSettings, results: ResultStore, path: Path) -> Path:
    """An HTML report of a stored portfolio: its metrics, equity and drawdown (with the equal-weight
    basket as buy and hold), and each market's contribution (attribution table)."""
    summary, frames = results.load_portfolio(settings.name, ("attribution", "equity"))
    title = (
        f"portfolio {settings.name}: {settings.strategy} on {settings.exchange} {settings.timeframe}, "
        f"{settings.allocation} weights"
    )
    equity = frames["equity"]
    section = ReportSection(
        heading=f"portfolio {settings.name}",
        metrics=summary["metrics"],
        params=format_params(summary["parameters"].get("params", {})),
        blocks=[
            ReportChart("Equity and drawdown", equity_figure(equity, equity["basket"], title)),
            ReportTable("Contribution per market", frames["attribution"]),
        ],
        notes=f"Markets: {', '.join(settings.symbols)}. Conventions: docs/trading-model.md (Portfolios).",
    )
    return write_html_report(path, title, [section])
