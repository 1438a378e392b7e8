"""Configured backtests as plain functions: what the Dagster assets, the CLI and notebooks call.

Each function takes settings from ``config/backtests.yaml`` and the stores, runs the research
layer, and persists its outputs through ``ResultStore``, so a backtest run from the CLI and one
materialized in the UI leave the same files behind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.market_data.store import CandleStore
from atlas_pipeline.research.charts import equity_drawdown_chart, trades_chart
from atlas_pipeline.research.engine import BacktestSpec, run_backtest_from_store
from atlas_pipeline.research.metrics import compute_metrics
from atlas_pipeline.research.report import ReportSection, write_html_report
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research.results import BacktestResult

CHARTS = ("equity_drawdown", "trades")
"""Charts the metrics step draws for every backtest result, by file name."""
LEADERBOARD_METRICS = ("sharpe", "total_return", "cagr", "max_drawdown", "trade_count", "win_rate", "buy_and_hold_return")


def backtest_spec(settings: BacktestSettings) -> BacktestSpec:
    return BacktestSpec(
        strategy=settings.strategy,
        params=dict(settings.params),
        cash=settings.cash,
        fraction=settings.sizing.fraction,
        commission=settings.taker_fee(),
        slippage=settings.slippage,
    )


@dataclass
class BacktestRun:
    result: BacktestResult
    folder: str
    seconds: dict[str, float] = field(default_factory=dict)


def run_backtest(
    settings: BacktestSettings,
    symbol: str,
    store: CandleStore,
    results: ResultStore,
    strategies_dir: Path | None = None,
) -> BacktestRun:
    """Run one configured backtest on one market's stored candles and save its outputs."""
    started = time.perf_counter()
    result = run_backtest_from_store(
        store,
        settings.exchange,
        symbol,
        settings.timeframe,
        settings.period.start,
        settings.period.end,
        backtest_spec(settings),
        strategies_dir=strategies_dir,
    )
    ran = time.perf_counter()
    folder = results.save_result(settings.name, symbol, result)
    return BacktestRun(result, folder, {"backtest": ran - started, "save": time.perf_counter() - ran})


@dataclass
class MetricsRun:
    metrics: dict[str, Any]
    charts: dict[str, bytes]
    chart_paths: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)


def compute_backtest_metrics(settings: BacktestSettings, symbol: str, results: ResultStore) -> MetricsRun:
    """Metrics and charts of a stored backtest result, saved beside it."""
    started = time.perf_counter()
    result = results.load_result(settings.name, symbol)
    metrics = compute_metrics(result.equity, result.trades, result.close)
    computed = time.perf_counter()
    title = f"{settings.name} {symbol} {settings.timeframe}"
    charts = {
        "equity_drawdown": equity_drawdown_chart(result.equity, result.close, title),
        "trades": trades_chart(result.close, result.trades, title),
    }  # the names in CHARTS
    drawn = time.perf_counter()
    results.save_metrics(settings.name, symbol, metrics)
    paths = {chart: results.save_chart(settings.name, symbol, chart, png) for chart, png in charts.items()}
    seconds = {"metrics": computed - started, "charts": drawn - computed, "save": time.perf_counter() - drawn}
    return MetricsRun(metrics, charts, paths, seconds)


def leaderboard(backtests: Iterable[BacktestSettings], results: ResultStore) -> pd.DataFrame:
    """Every backtest x market with stored metrics, best Sharpe first (NaN last)."""
    rows = []
    for settings in backtests:
        for symbol in settings.symbols:
            metrics = results.load_metrics(settings.name, symbol)
            if metrics is None:
                continue
            row: dict[str, Any] = {"backtest": settings.name, "strategy": settings.strategy, "symbol": symbol}
            row.update({key: _number(metrics.get(key)) for key in LEADERBOARD_METRICS})
            rows.append(row)
    columns = ["rank", "backtest", "strategy", "symbol", *LEADERBOARD_METRICS]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows).sort_values("sharpe", ascending=False, na_position="last", kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True).loc[:, columns]


def leaderboard_markdown(table: pd.DataFrame) -> str:
    """The leaderboard as a markdown table (numbers to 4 significant digits)."""
    if table.empty:
        return "no metrics yet"
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns)
    rows = [
        "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join([header, *rows])


def write_backtest_report(settings: BacktestSettings, results: ResultStore, path: Path) -> Path:
    """An HTML report of every market of a backtest that has stored metrics and charts."""
    sections = []
    for symbol in settings.symbols:
        metrics = results.load_metrics(settings.name, symbol)
        if metrics is None:
            continue
        charts = {chart: results.load_chart(settings.name, symbol, chart) for chart in CHARTS}
        sections.append(
            ReportSection(heading=symbol, metrics=metrics, charts={k: v for k, v in charts.items() if v is not None})
        )
    if not sections:
        raise FileNotFoundError(
            f"backtest {settings.name!r} has no stored metrics yet: run `atlas backtest {settings.name}` "
            f"or materialize metrics/{settings.name}"
        )
    title = f"{settings.name}: {settings.strategy} {dict(settings.params)} on {settings.exchange} {settings.timeframe}"
    return write_html_report(path, title, sections)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
