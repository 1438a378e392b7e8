"""Configured backtests as plain functions: what the Dagster assets, the CLI and notebooks call.

Each function takes settings from ``config/backtests.yaml`` and the stores, runs the research
layer, and persists its outputs through ``ResultStore``, so a backtest run from the CLI and one
materialized in the UI leave the same files behind.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from atlas_pipeline.backtest_report import overfitting_note, write_backtest_report  # noqa: F401 - where the CLI and demo find them
from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.config.portfolios import PortfolioSettings
from atlas_pipeline.market_data.candles import timeframe_ms
from atlas_pipeline.market_data.funding import funding_interval
from atlas_pipeline.market_data.store import FUNDING_RATES, MARK_PRICE_CANDLES, CandleStore
from atlas_pipeline.research import engine, walkforward
from atlas_pipeline.research.data_coverage import DataCoverage, period_coverage
from atlas_pipeline.research.charts import equity_drawdown_chart, trades_chart, walkforward_chart
from atlas_pipeline.research.engine import BacktestSpec
from atlas_pipeline.research.engine.exits import split_params, with_params
from atlas_pipeline.research.engine.perps import PerpSpec, check_funding, perp_metrics
from atlas_pipeline.research.lookahead import LookaheadReport
from atlas_pipeline.research.metrics import compute_metrics, daily_returns
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research.results import BacktestResult
from atlas_pipeline.research.strategy_loader import load_strategy, validate_params
from atlas_pipeline.research.stats.overfitting import over_limits
from atlas_pipeline.research.sweep import BacktestPool, SweepResult, run_sweep
from atlas_pipeline.research.trials import sweep_overfitting, trial_rows, walkforward_overfitting

Log = Callable[[str], None]
WORKERS_ENV = "ATLAS_WORKERS"

CHARTS = ("equity_drawdown", "trades")
"""PNG charts the metrics step draws for every backtest result (Dagster metadata), by file name."""
LEADERBOARD_METRICS = ("sharpe", "total_return", "cagr", "max_drawdown", "trade_count", "win_rate", "buy_and_hold_return")
OVERFITTING_COLUMNS = ("dsr", "pbo", "trials")


def backtest_spec(settings: BacktestSettings) -> BacktestSpec:
    return replace(strategy_spec(settings), exits=settings.exits.exits())


def strategy_spec(settings: BacktestSettings | PortfolioSettings) -> BacktestSpec:
    """The strategy, its params and the costs of a backtest or a portfolio (no exits)."""
    return BacktestSpec(
        strategy=settings.strategy,
        params=dict(settings.params),
        cash=settings.cash,
        fraction=settings.sizing.fraction,
        commission=settings.taker_fee(),
        slippage=settings.slippage,
    )


def market_spec(settings: BacktestSettings, symbol: str, store: CandleStore, candles: pd.DataFrame) -> BacktestSpec:
    """``backtest_spec`` plus, for ``market_type: swap``, the market's stored mark prices and
    funding history over the candles' span. Missing funding events raise ``MissingFundingError``
    naming the ranges (never zero funding); mark candles are checked by the engine."""
    spec = backtest_spec(settings)
    if settings.market_type != "swap":
        return spec
    return dataclasses.replace(spec, perp=perp_spec(settings, symbol, store, candles))


def perp_spec(settings: BacktestSettings | PortfolioSettings, symbol: str, store: CandleStore, candles: pd.DataFrame) -> PerpSpec:
    """A swap's stored mark prices and funding history over the candles' span, with the margin
    settings of its backtest or portfolio; missing funding events raise ``MissingFundingError``
    naming the market, the asset and the ranges."""
    first, last = int(candles["timestamp"].iloc[0]), int(candles["timestamp"].iloc[-1])
    interval = funding_interval(settings.exchange)
    funding = CandleStore(store.root, FUNDING_RATES).read(settings.exchange, symbol, interval, first, last + 1)
    where = f" of {settings.exchange} {symbol} ({settings.exchange}/funding)"
    check_funding(candles["timestamp"].to_numpy(), funding, timeframe_ms(interval), where)
    mark = CandleStore(store.root, MARK_PRICE_CANDLES).read(settings.exchange, symbol, settings.timeframe, first, last + 1)
    return PerpSpec(
        mark=mark,
        funding=funding,
        leverage=settings.leverage,
        maintenance_margin=settings.maintenance_margin,
        liquidation_fee=settings.liquidation_fee,
        funding_interval_ms=timeframe_ms(interval),
    )


def sweep_workers() -> int:
    """Processes a sweep uses: ``$ATLAS_WORKERS``, else every core."""
    value = os.environ.get(WORKERS_ENV, "")
    try:
        workers = int(value) if value else (os.cpu_count() or 1)
    except ValueError:
        raise ValueError(f"{WORKERS_ENV}={value!r}: expected a whole number of processes") from None
    if workers < 1:
        raise ValueError(f"{WORKERS_ENV}={value!r}: need at least 1 process")
    return workers


def stored_candles(settings: BacktestSettings, symbol: str, store: CandleStore) -> pd.DataFrame:
    """The candles of a configured backtest's period for one market (clear error when none)."""
    return engine.stored_candles(
        store, settings.exchange, symbol, settings.timeframe, settings.period.start, settings.period.end
    )


def check_grid(settings: BacktestSettings, strategies_dir: Path | None) -> None:
    """Fail once, naming the param, when the grid sweeps a param the strategy does not have,
    instead of every candidate failing alike in the worker processes."""
    candidates = settings.candidates()
    if candidates:
        cls = load_strategy(settings.strategy, strategies_dir)
        validate_params(settings.strategy, cls, {**settings.params, **split_params(candidates[0])[0]})


@dataclass
class BacktestRun:
    result: BacktestResult
    folder: str
    spec: BacktestSpec
    """What ran: for a sweep, the chosen candidate's params."""
    lookahead: LookaheadReport
    sweep: SweepResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    coverage: DataCoverage | None = None
    overfitting: dict[str, float] | None = None
    """A sweep's DSR, PBO and bootstrap bands (``research/trials.py``), saved beside the result."""


class NoCandidatePassed(ValueError):
    """Every candidate of a sweep was rejected by the filters (the sweep table is saved)."""


def run_backtest(
    settings: BacktestSettings,
    symbol: str,
    store: CandleStore,
    results: ResultStore,
    strategies_dir: Path | None = None,
    log: Log | None = None,
) -> BacktestRun:
    """Run one configured backtest on one market's stored candles and save its outputs.

    With a grid it sweeps first (every core) and backtests the chosen candidate. Either way the
    strategy as run is checked for lookahead bias. The strategy's code runs only in worker
    processes (``BacktestPool(isolate=True)``): one that exits or crashes its process fails this
    backtest with ``StrategyCrashed`` (naming the exit code) instead of ending the caller's process.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    candles = stored_candles(settings, symbol, store)
    spec = market_spec(settings, symbol, store, candles)
    sweep = None
    if settings.grid is not None:
        check_grid(settings, strategies_dir)
    workers = sweep_workers() if settings.grid is not None else 1
    with BacktestPool(candles, spec, settings.timeframe, strategies_dir, workers, isolate=True, label=f"{settings.name} {symbol}") as pool:
        if settings.grid is not None:
            sweep = run_sweep(pool, settings.candidates(), settings.sweep_objective(), settings.sweep_filters(),
                              progress=log, confirm_top=settings.confirm_top)
            results.save_sweep(settings.name, symbol, sweep.table)
            _record_trials(settings, symbol, candles, results, [sweep], "sweep")
            seconds["sweep"] = time.perf_counter() - started
            if sweep.chosen is None:
                raise NoCandidatePassed(
                    f"sweep of {settings.name} {symbol}: none of {len(sweep.table)} candidates passed the filters "
                    f"({_rejections(sweep.table)}); the table is in {results.url(results.folder(settings.name, symbol))}/sweep.parquet"
                )
            spec = with_params(spec, sweep.chosen)
        single = pool.backtest(spec.params, lookahead=True)
    assert single.lookahead is not None
    saving = time.perf_counter()
    folder = results.save_result(settings.name, symbol, single.result)
    coverage = backtest_coverage(settings, symbol, store)
    results.save_coverage(settings.name, symbol, coverage.as_dict())
    overfitting = None
    if sweep is not None:
        start, end = data_range(candles, settings.timeframe)
        registry = results.trials(settings.exchange, symbol, settings.timeframe)
        overfitting = sweep_overfitting(daily_returns(single.result.equity["equity"]).to_numpy(float), sweep.dailies or [],
                                        registry, start, end)
        results.save_overfitting(folder, overfitting)
    seconds.update(single.seconds, save=time.perf_counter() - saving)
    return BacktestRun(single.result, folder, spec, single.lookahead, sweep, seconds, coverage=coverage, overfitting=overfitting)


def data_range(candles: pd.DataFrame, timeframe: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[first candle's open, last candle's close) of a candle frame, UTC."""
    stamps = candles["timestamp"]
    return (pd.Timestamp(int(stamps.iloc[0]), unit="ms", tz="UTC"),
            pd.Timestamp(int(stamps.iloc[-1]) + timeframe_ms(timeframe), unit="ms", tz="UTC"))


def _record_trials(settings: BacktestSettings, symbol: str, candles: pd.DataFrame, results: ResultStore,
                   sweeps: list[SweepResult], kind: str, windows: pd.DataFrame | None = None) -> None:
    """Every candidate of these sweeps into the trials registry (one file for the run); a
    walk-forward's candidates with their train window (``windows``: its windows table)."""
    start, end = data_range(candles, settings.timeframe)
    grid = settings.candidates()
    frames = [
        trial_rows(sweep, grid, backtest=settings.name, kind=kind, strategy=settings.strategy, exchange=settings.exchange,
                   symbol=symbol, timeframe=settings.timeframe,
                   data_start=windows["train_start"].iloc[i] if windows is not None else start,
                   data_end=windows["train_end"].iloc[i] if windows is not None else end,
                   window=i if windows is not None else -1)
        for i, sweep in enumerate(sweeps)
    ]
    results.record_trials(settings.exchange, symbol, settings.timeframe, settings.name, pd.concat(frames, ignore_index=True))

def backtest_coverage(settings: BacktestSettings, symbol: str, store: CandleStore) -> DataCoverage:
    """How much of the backtest's period the stored candles cover (thin data is warned about)."""
    return period_coverage(store, settings.exchange, symbol, settings.timeframe, settings.period.start, settings.period.end)


def stored_coverage(settings: BacktestSettings, symbol: str, results: ResultStore) -> DataCoverage | None:
    """The coverage recorded by the backtest run that produced the stored result."""
    stored = results.load_coverage(settings.name, symbol)
    return DataCoverage(**stored) if stored else None


def _rejections(table: pd.DataFrame) -> str:
    """The most common rejection reasons with counts, e.g. ``12x trade_count < 10``."""
    reasons = table.loc[~table["passed"], "rejected"].str.replace(r"[-\d.]+ ([<>]) ", r"\1 ", regex=True)
    return "; ".join(f"{count}x {reason}" for reason, count in reasons.value_counts().head(3).items())


@dataclass
class WalkForwardRun:
    result: walkforward.WalkForwardResult
    chart: bytes
    folder: str
    seconds: dict[str, float] = field(default_factory=dict)
    overfitting: dict[str, float] = field(default_factory=dict)


def run_walk_forward(
    settings: BacktestSettings,
    symbol: str,
    store: CandleStore,
    results: ResultStore,
    strategies_dir: Path | None = None,
    log: Log | None = None,
) -> WalkForwardRun:
    """Walk-forward optimization of a configured backtest's grid on one market, saved with its chart."""
    plan = settings.walk_forward_plan()
    if plan is None:
        raise ValueError(f"backtest {settings.name!r} has no walk_forward settings (config/backtests.yaml)")
    started = time.perf_counter()
    candles = stored_candles(settings, symbol, store)
    check_grid(settings, strategies_dir)
    spec = market_spec(settings, symbol, store, candles)
    with BacktestPool(
        candles, spec, settings.timeframe, strategies_dir, sweep_workers(), isolate=True, label=f"walk-forward {settings.name} {symbol}"
    ) as pool:
        result = walkforward.run_walk_forward(
            pool, settings.candidates(), settings.sweep_objective(), settings.sweep_filters(), plan, progress=log,
            confirm_top=settings.confirm_top,
        )
    _record_trials(settings, symbol, candles, results, result.sweeps, "walkforward", result.windows)
    start, end = data_range(candles, settings.timeframe)
    overfitting = walkforward_overfitting(daily_returns(result.oos_equity["equity"]).to_numpy(float), result.sweeps,
                                          results.trials(settings.exchange, symbol, settings.timeframe), start, end)
    ran = time.perf_counter()
    chart = walkforward_chart(result, f"{settings.name} {symbol} {settings.timeframe}")
    drawn = time.perf_counter()
    folder = results.save_walk_forward(settings.name, symbol, result, chart)
    results.save_overfitting(folder, overfitting)
    seconds = {"walk_forward": ran - started, "chart": drawn - ran, "save": time.perf_counter() - drawn}
    return WalkForwardRun(result, chart, folder, seconds, overfitting)


@dataclass
class MetricsRun:
    metrics: dict[str, Any]
    charts: dict[str, bytes]
    chart_paths: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    coverage: DataCoverage | None = None
    """Of the candles the backtest ran on; its ``warning`` says when they are thin."""
    overfitting: dict[str, float] | None = None
    """The sweep's DSR, PBO and bootstrap bands (None for a backtest without a grid)."""


def compute_backtest_metrics(settings: BacktestSettings, symbol: str, results: ResultStore) -> MetricsRun:
    """Metrics and charts of a stored backtest result, saved beside it."""
    started = time.perf_counter()
    result = results.load_result(settings.name, symbol)
    metrics = compute_metrics(result.equity, result.trades, result.close)
    if result.funding is not None:  # a perp backtest (docs/trading-model.md)
        metrics.update(perp_metrics(result.equity, result.close, result.funding, result.liquidations))
    computed = time.perf_counter()
    title = f"{settings.name} {symbol} {settings.timeframe}"
    charts = {
        "equity_drawdown": equity_drawdown_chart(result.equity, result.close, title),
        "trades": trades_chart(result.close, result.trades, title),
    }  # the names in CHARTS
    drawn = time.perf_counter()
    coverage = stored_coverage(settings, symbol, results)
    warnings = [coverage.warning] if coverage is not None and coverage.warning else []
    # the report shows a market's stored "warnings" at the top of its section (backtest_report)
    results.save_metrics(settings.name, symbol, {**metrics, **({"warnings": warnings} if warnings else {})})
    paths = {chart: results.save_chart(settings.name, symbol, chart, png) for chart, png in charts.items()}
    seconds = {"metrics": computed - started, "charts": drawn - computed, "save": time.perf_counter() - drawn}
    overfitting = results.load_overfitting(results.folder(settings.name, symbol)) if settings.grid is not None else None
    return MetricsRun(metrics, charts, paths, seconds, coverage=coverage, overfitting=overfitting)


def leaderboard(backtests: Iterable[BacktestSettings], results: ResultStore) -> pd.DataFrame:
    """Every backtest x market with stored metrics, best Sharpe first (NaN last), with a swept
    backtest's ``dsr``, ``pbo`` and ``trials`` (NaN without a grid). A result over its
    ``overfitting`` limits is left out when the limits block (config ``overfitting.block``)."""
    rows = []
    for settings in backtests:
        for symbol in settings.symbols:
            metrics = results.load_metrics(settings.name, symbol)
            if metrics is None:
                continue
            overfitting = (results.load_overfitting(results.folder(settings.name, symbol)) or {}) if settings.grid else {}
            limits = settings.overfitting_limits()
            if limits.block and over_limits(overfitting, limits):
                continue
            row: dict[str, Any] = {"backtest": settings.name, "strategy": settings.strategy, "symbol": symbol}
            row.update({key: _number(metrics.get(key)) for key in LEADERBOARD_METRICS})
            row.update({key: _number(overfitting.get(key)) for key in OVERFITTING_COLUMNS})
            rows.append(row)
    columns = ["rank", "backtest", "strategy", "symbol", *LEADERBOARD_METRICS, *OVERFITTING_COLUMNS]
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows).sort_values("sharpe", ascending=False, na_position="last", kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True).loc[:, columns]


def table_markdown(table: pd.DataFrame, empty: str = "no rows") -> str:
    """A frame as a markdown table (numbers to 4 significant digits), for Dagster metadata."""
    if table.empty:
        return empty
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns)
    rows = [
        "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join([header, *rows])


def leaderboard_markdown(table: pd.DataFrame) -> str:
    return table_markdown(table, empty="no metrics yet")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
