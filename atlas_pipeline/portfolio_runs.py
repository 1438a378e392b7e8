"""Configured portfolios as plain functions (what the ``portfolio/<name>`` asset and notebooks call):
read every market's stored candles, run the portfolio engine, compute its metrics and attribution,
and save them through ``ResultStore`` (``<root>/portfolios/<name>/``)."""

from __future__ import annotations

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
from atlas_pipeline.research.report import ReportSection, write_html_report
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research_runs import backtest_spec

Log = Callable[[str], None]
FRAMES = ("equity", "positions", "orders", "trades", "attribution")
CHART = "equity_drawdown"


def portfolio_spec(settings: PortfolioSettings) -> PortfolioSpec:
    return PortfolioSpec(
        market=backtest_spec(settings),  # strategy, params and costs are read as a backtest's
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
    read = time.perf_counter()
    result = run_portfolio(candles, portfolio_spec(settings), settings.timeframe, strategies_dir)
    ran = time.perf_counter()
    metrics = portfolio_metrics(result)
    table = attribution(result)
    chart = equity_drawdown_chart(result.equity, result.basket(), f"portfolio {settings.name} {settings.timeframe}")
    results.save_portfolio_chart(settings.name, CHART, chart)
    orders = result.orders.assign(**{c: result.orders[c].astype(str) for c in ("created_time", "executed_time")})
    folder = results.save_portfolio(
        settings.name,
        {
            "equity": result.equity,
            "positions": result.positions,
            "orders": orders,
            "trades": result.trades,
            "attribution": table.reset_index(),
        },
        {"metrics": metrics, "warmup_bars": result.warmup_bars, "parameters": result.parameters},
    )
    seconds = {"read": read - started, "backtest": ran - read, "metrics_and_save": time.perf_counter() - ran}
    if log:
        log(f"portfolio {settings.name}: {result.equity.shape[0]:,} bars, {len(result.trades)} trades, "
            f"total return {metrics['total_return']:.2%} in {sum(seconds.values()):.1f} s")
    return PortfolioRun(result, metrics, table, chart, folder, seconds)


def write_portfolio_report(settings: PortfolioSettings, results: ResultStore, path: Path) -> Path:
    """An HTML report of a stored portfolio: its metrics and chart, then each market's attribution."""
    summary, frames = results.load_portfolio(settings.name, ("attribution",))
    chart_path = f"{results.portfolio_folder(settings.name)}/charts/{CHART}.png"
    charts = {CHART: results.fs.cat_file(chart_path)} if results.fs.exists(chart_path) else {}
    sections = [ReportSection(heading=f"portfolio {settings.name}", metrics=summary["metrics"], charts=charts)]
    for row in frames["attribution"].to_dict("records"):
        symbol = row.pop("symbol")
        sections.append(ReportSection(heading=symbol, metrics=row, charts={}, notes="Contribution to the portfolio."))
    title = (
        f"portfolio {settings.name}: {settings.strategy} {dict(settings.params)} on {settings.exchange} "
        f"{settings.timeframe}, {settings.allocation} weights"
    )
    return write_html_report(path, title, sections)
