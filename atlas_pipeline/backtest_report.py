"""The HTML report of a configured backtest, from what its runs stored (``atlas report NAME``).

Per market, in this order:

- **Backtest**: the params it ran with (for a swept backtest, the chosen candidate's), its
  metrics, the price chart (stored candles, the strategy's indicators, every fill and closed
  trade), equity and drawdown, and for a swept backtest the objective over two swept params
  (heatmap) and the sweep table (every candidate, the chosen one highlighted).
- **Walk-forward** (when ``walk_forward`` is configured and was run): in-sample vs
  out-of-sample metrics and the walk-forward efficiency, the stitched out-of-sample equity, and
  every window (train and test dates, winner, in- and out-of-sample metrics).

The title names the params every market ran with (or says they were chosen per market).
Warnings (e.g. "candles cover 90 of 1,430 days", computed by whoever knows) are shown at the top
of the report and of their market's section: those passed in ``warnings`` and a list stored under
the key ``warnings`` in the market's ``metrics.json`` (where the metrics step can leave them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.market_data.candles import timeframe_ms
from atlas_pipeline.market_data.store import CandleStore
from atlas_pipeline.research.metrics import format_metric
from atlas_pipeline.research.plots import (
    equity_figure,
    format_params,
    price_figure,
    sweep_figure,
    walkforward_figure,
    winner_label,
)
from atlas_pipeline.research.report import ReportChart, ReportSection, ReportTable, write_html_report
from atlas_pipeline.research.result_store import ResultStore, StoredWalkForward
from atlas_pipeline.research.stats.overfitting import over_limits
from atlas_pipeline.research.walkforward import WINDOW_METRICS

SWEEP_COLUMNS = ("objective", "trade_count", "total_return", "max_drawdown", "sharpe", "passed", "rejected", "chosen")
"""Sweep table columns after the candidate number and its params."""
WINDOW_COLUMNS = ("is_objective", "oos_objective", "is_total_return", "oos_total_return", "is_sharpe", "oos_sharpe",
                  "is_trade_count", "oos_trade_count", "efficiency", "note")
"""Walk-forward table columns after the window's dates and winner."""


def write_backtest_report(
    settings: BacktestSettings,
    results: ResultStore,
    path: Path,
    store: CandleStore | None = None,
    warnings: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write the report of every market of ``settings`` with stored results (module doc).

    ``store`` holds the candles drawn (default: the candle store at the results' root);
    ``warnings`` maps a market (``BTC/USDT``) to its warnings, ``""`` to report-wide ones.
    Raises ``FileNotFoundError`` when no market has stored metrics or walk-forward results."""
    store = store if store is not None else CandleStore(results.url(results.root))
    warnings = warnings or {}
    sections: list[ReportSection] = []
    ran_with: list[str] = []
    for symbol in settings.symbols:
        shown = list(warnings.get(symbol, ()))
        metrics = results.load_metrics(settings.name, symbol)
        if metrics is not None:
            shown = [*metrics.pop("warnings", ()), *shown]
            section = _backtest_section(settings, symbol, metrics, results, store, shown)
            ran_with.append(section.params)
            sections.append(section)
            shown = []  # once per market
        walk = results.load_walk_forward(settings.name, symbol) if settings.walk_forward is not None else None
        if walk is not None:
            sections.append(_walkforward_section(settings, symbol, walk, shown))
    if not sections:
        raise FileNotFoundError(
            f"backtest {settings.name!r} has no stored metrics yet: run `atlas backtest {settings.name}` "
            f"or materialize {settings.name}/metrics"
        )
    return write_html_report(path, report_title(settings, ran_with), sections, warnings.get("", ()))


def report_title(settings: BacktestSettings, ran_with: Sequence[str]) -> str:
    """``name: strategy fast=10, slow=40 on binance 1h``; a swept backtest says the params are the
    chosen ones (``chosen by sharpe from 12 candidates``), or that markets chose differently."""
    distinct = list(dict.fromkeys(ran_with))
    how = f"by {settings.objective.metric} from {len(settings.candidates())} candidates"
    if settings.grid is None:
        params = distinct[0] if len(distinct) == 1 else format_params(settings.params)
    elif len(distinct) == 1:
        params = f"{distinct[0]} (chosen {how})"
    elif distinct:
        params = f"params chosen per market {how}"
    else:  # only walk-forward results: each window has its own winner
        params = f"params chosen per walk-forward window {how}"
    return f"{settings.name}: {settings.strategy} {params} on {settings.exchange} {settings.timeframe}"


def _backtest_section(
    settings: BacktestSettings,
    symbol: str,
    metrics: dict,
    results: ResultStore,
    store: CandleStore,
    warnings: list[str],
) -> ReportSection:
    result = results.load_result(settings.name, symbol)
    parameters = result.parameters
    title = f"{settings.name} {symbol} {settings.timeframe}"
    candles = None
    if result.bars:
        end = result.equity.index[-1] + pd.Timedelta(milliseconds=timeframe_ms(settings.timeframe))
        candles = store.read(settings.exchange, symbol, settings.timeframe, result.equity.index[0], end)
    blocks: list[ReportChart | ReportTable] = [
        ReportChart("Price, indicators and trades", price_figure(
            candles if candles is not None and len(candles) else None, result.close, result.indicators,
            result.indicator_panels, result.orders, result.trades, title)),
        ReportChart("Equity and drawdown", equity_figure(result.equity, result.close, title)),
    ]
    sweep = results.load_sweep(settings.name, symbol) if settings.grid is not None else None
    if sweep is not None:
        blocks += _sweep_blocks(settings, sweep, title)
    overfitting = results.load_overfitting(results.folder(settings.name, symbol)) if settings.grid is not None else None
    if overfitting:
        metrics = {**metrics, **overfitting}
    notes = (f"{result.bars:,} bars after {result.warmup_bars} warm-up; commission {parameters.get('commission', 0):.4%} "
             f"per fill, slippage {parameters.get('slippage', 0):.4%}, {parameters.get('fraction', 1):.0%} of equity per entry.")
    if overfitting:
        notes += "\n" + overfitting_note(overfitting, settings)
    return ReportSection(heading=symbol, metrics=metrics, blocks=blocks, notes=notes, warnings=warnings,
                         params=format_params(parameters.get("params", settings.params)))


def overfitting_note(stats: Mapping[str, object], settings: BacktestSettings) -> str:
    """One line on the overfitting statistics and the limits (docs/walkforward.md explains them)."""
    reasons = over_limits(stats, settings.overfitting_limits())
    verdict = ("over the limits: " + "; ".join(reasons)) if reasons else "within the limits"
    return (f"Deflated Sharpe {_number(stats.get('dsr')):.3f} over {_number(stats.get('trials')):.0f} trials, "
            f"PBO {_number(stats.get('pbo')):.3f}; bootstrap Sharpe 5/50/95 % "
            f"{_number(stats.get('bootstrap_sharpe_p5')):.2f} / {_number(stats.get('bootstrap_sharpe_p50')):.2f} / "
            f"{_number(stats.get('bootstrap_sharpe_p95')):.2f}: {verdict}.")


def _sweep_blocks(settings: BacktestSettings, table: pd.DataFrame, title: str) -> list[ReportChart | ReportTable]:
    metric = settings.objective.metric
    blocks: list[ReportChart | ReportTable] = []
    figure = sweep_figure(table, metric, settings.sweep_objective().higher_is_better, title)
    if figure is not None:
        blocks.append(ReportChart(f"Sweep: {metric} per candidate", figure))
    params = [c for c in table.columns if c.startswith("param_")]
    shown = table.loc[:, ["candidate", *params, *SWEEP_COLUMNS]].rename(
        columns={**{c: c.removeprefix("param_") for c in params}, "objective": f"objective ({metric})"})
    passed = int(table["passed"].sum())
    return [*blocks, ReportTable(
        f"Sweep: {len(table)} candidates", shown, highlight=[int(i) for i in (table.index[table["chosen"]])],
        metric_of={f"objective ({metric})": metric},
        note=f"{passed} passed the filters (min_trades {settings.filters.min_trades}, max_drawdown "
             f"{settings.filters.max_drawdown}); the chosen candidate is highlighted.",
    )]


def _walkforward_section(
    settings: BacktestSettings, symbol: str, walk: StoredWalkForward, warnings: list[str]
) -> ReportSection:
    metric = settings.objective.metric
    summary, windows = walk.summary, walk.windows
    title = f"{settings.name} {symbol} {settings.timeframe}"
    names = list(dict.fromkeys([metric, *WINDOW_METRICS]))
    versus = pd.DataFrame({
        "metric": names,
        "in-sample (mean of windows)": [_number(summary.get(f"is_{n}")) for n in names],
        "out-of-sample (stitched)": [_number(summary.get(f"oos_{n}")) for n in names],
    })
    table = windows.loc[:, ["index", "train_start", "train_end", "test_start", "test_end"]].copy()
    table.insert(5, "winner", windows["params"].map(winner_label))
    table = table.join(windows.loc[:, list(WINDOW_COLUMNS)].rename(columns={
        "is_objective": f"is_objective ({metric})", "oos_objective": f"oos_objective ({metric})"}))
    plan = settings.walk_forward
    assert plan is not None
    efficiency = _number(summary.get("efficiency"))
    latest = summary.get("latest_params")
    return ReportSection(
        heading=f"{symbol} walk-forward",
        blocks=[
            ReportTable("In-sample vs out-of-sample", _formatted(versus)),
            ReportChart("Stitched out-of-sample equity", walkforward_figure(windows, walk.oos_equity, metric, title)),
            ReportTable(f"Windows: {len(windows)}", table, metric_of={
                f"is_objective ({metric})": metric, f"oos_objective ({metric})": metric}),
        ],
        notes=(f"{'Anchored' if plan.anchored else 'Rolling'} {plan.train_days}-day train, {plan.test_days}-day test "
               f"windows, optimized by {metric}; {summary.get('windows_with_winner')} of {summary.get('windows')} "
               f"windows had a winner. Walk-forward efficiency (out-of-sample CAGR / in-sample CAGR): "
               f"{'n/a' if pd.isna(efficiency) else f'{efficiency:.3f}'}."),
        warnings=warnings,
        params=f"latest winner: {format_params(latest)}" if isinstance(latest, dict) else "latest window: no winner",
    )


def _formatted(versus: pd.DataFrame) -> pd.DataFrame:
    """Each row's numbers formatted as its metric (a column can't say which metric it holds)."""
    frame = versus.copy()
    for column in frame.columns[1:]:
        frame[column] = [format_metric(m, v) for m, v in zip(frame["metric"], versus[column])]
    return frame


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
