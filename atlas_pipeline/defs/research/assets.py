"""``<name>/backtest`` -> ``<name>/metrics`` -> ``leaderboard``, and ``<name>/walkforward``, on top
of the OHLCV assets.

A backtest or walk-forward partition is one market; it depends on every day of that market's
candles through ``MultiToSingleDimensionPartitionMapping``, so the UI shows the lineage; the
``research_reruns`` sensor (``automation.py``) reruns exactly the markets whose candles changed.
Each backtest carries the blocking ``lookahead_bias`` check: a strategy that reads future candles
gets no metrics.
"""

import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dagster as dg

from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.config.portfolios import PortfolioSettings
from atlas_pipeline.config.exchanges import ExchangeSettings
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.market_data.funding import funding_asset_key
from atlas_pipeline.defs.market_data.partitions import SYMBOL, ohlcv_partitions, symbols_by_key
from atlas_pipeline.defs.resources import CandleStoreResource
from atlas_pipeline.market_data.candles import ms_to_iso, symbol_key
from atlas_pipeline.research.charts import png_markdown
from atlas_pipeline.market_data.store import MARK_PRICE_CANDLES
from atlas_pipeline.research.data_coverage import DataCoverage
from atlas_pipeline.research.engine import StrategyError
from atlas_pipeline.research.engine.perps import MissingFundingError
from atlas_pipeline.research.metrics import metrics_table_markdown
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research.stats.overfitting import over_limits
from atlas_pipeline.research.sweep import SweepResult
from atlas_pipeline.research_runs import (
    BacktestRun,
    NoCandidatePassed,
    compute_backtest_metrics,
    leaderboard,
    leaderboard_markdown,
    run_backtest,
    run_walk_forward,
    table_markdown,
)

RESEARCH_GROUP = "research"
LEADERBOARD_KEY = dg.AssetKey("leaderboard")
LOOKAHEAD_CHECK = "lookahead_bias"
FUNDING_CHECK = "funding_history"
OVERFITTING_CHECK = "overfitting"


# The UI graph labels a node with its key's last part, so that part says what the node is and
# the backtest's name comes first: ``<name>/backtest``, ``<name>/metrics``, ``<name>/walkforward``.


def backtest_asset_key(name: str) -> dg.AssetKey:
    return dg.AssetKey([name, "backtest"])


def metrics_asset_key(name: str) -> dg.AssetKey:
    return dg.AssetKey([name, "metrics"])


def walkforward_asset_key(name: str) -> dg.AssetKey:
    return dg.AssetKey([name, "walkforward"])


def market_parents(settings: BacktestSettings | PortfolioSettings) -> list[dg.AssetKey]:
    """What a backtest (per market) or a portfolio (all its markets) reads: the candles, and for
    perpetual swaps also the mark prices and funding (the ``research_reruns`` sensor watches the
    same keys)."""
    candles = ohlcv_asset_key(settings.exchange, settings.timeframe)
    if settings.market_type != "swap":
        return [candles]
    return [candles, ohlcv_asset_key(settings.exchange, settings.timeframe, MARK_PRICE_CANDLES), funding_asset_key(settings.exchange)]


def _market_deps(settings: BacktestSettings) -> list[dg.AssetDep]:
    """Every day of each parent's partitions of one market -> that market's partition."""
    per_market = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=SYMBOL)
    return [dg.AssetDep(parent, partition_mapping=per_market) for parent in market_parents(settings)]


def funding_check_spec(key: dg.AssetKey, period: str) -> dg.AssetCheckSpec:
    """The blocking ``funding_history`` check of a perp backtest or a swap portfolio."""
    return dg.AssetCheckSpec(
        FUNDING_CHECK,
        asset=key,
        blocking=True,
        description=f"Every funding time of {period} has a stored funding event (never zero funding).",
    )


def missing_funding_result(error: MissingFundingError) -> dg.AssetCheckResult:
    """The failed ``funding_history`` check naming the market and its missing ranges (the asset
    then fails: nothing is materialized)."""
    return dg.AssetCheckResult(
        check_name=FUNDING_CHECK,
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description=str(error),
        metadata={"missing_ranges": dg.MetadataValue.json([[ms_to_iso(a), ms_to_iso(b), n] for a, b, n in error.ranges])},
    )


def build_backtest_assets(settings: BacktestSettings, source: ExchangeSettings) -> list[dg.AssetsDefinition]:
    """``<name>/backtest`` and ``<name>/metrics``, partitioned like the candles' market dimension.

    ``MultiToSingleDimensionPartitionMapping`` needs the downstream partitions to be exactly that
    dimension, so every market of the exchange entry is a partition; ``symbols`` says which ones
    Atlas runs (demo, CLI, report, leaderboard). Any other can still be materialized by hand.
    """
    with warnings.catch_warnings():
        # MultiToSingleDimensionPartitionMapping is the settled lineage design (DESIGN.md section 6).
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _backtest_assets(settings, source)


def _backtest_assets(settings: BacktestSettings, source: ExchangeSettings) -> list[dg.AssetsDefinition]:
    partitions = ohlcv_partitions(source).get_partitions_def_for_dimension(SYMBOL)
    symbols = backtest_symbols(settings, source)
    key = backtest_asset_key(settings.name)
    swept = f", sweeping {settings.grid} by {settings.objective.metric}" if settings.grid else ""

    funding_spec = funding_check_spec(key, "the backtest's period")

    @dg.asset(
        key=key,
        partitions_def=partitions,
        deps=_market_deps(settings),
        check_specs=[
            dg.AssetCheckSpec(
                LOOKAHEAD_CHECK,
                asset=key,
                blocking=True,
                description=(
                    "Reruns the strategy on truncated histories; fails if any signal changes when later "
                    "candles are removed (the strategy reads the future)."
                ),
            ),
            *([funding_spec] if settings.market_type == "swap" else []),
        ],
        group_name=RESEARCH_GROUP,
        kinds={"backtrader", "parquet"},
        description=(
            f"Strategy {settings.strategy} {dict(settings.params)}{swept} on {settings.exchange} "
            f"{settings.timeframe} candles from {settings.period.start}: trades, orders and equity curve per market."
        ),
        metadata={"strategy": settings.strategy, "params": str(dict(settings.params))},
    )
    def backtest(context: dg.AssetExecutionContext, candle_store: CandleStoreResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        symbol = symbols[context.partition_key]
        swap = settings.market_type == "swap"
        try:
            run = _run_for_market(run_backtest, settings, symbol, context, candle_store)
        except MissingFundingError as error:
            yield missing_funding_result(error)
            raise dg.Failure(description=f"{key.to_user_string()} {symbol}: {error}", allow_retries=False) from error
        result = run.result
        context.log.info(f"{settings.name} {symbol}: {result.bars:,} bars, {len(result.trades)} trades; {run.lookahead.message}")
        if run.coverage is not None and run.coverage.warning:
            context.log.warning(f"{settings.name} {symbol}: {run.coverage.warning}")
        funding_result = dg.AssetCheckResult(
            check_name=FUNDING_CHECK,
            passed=True,
            metadata={"funding_events": len(result.funding) if result.funding is not None else 0},
        )
        yield dg.MaterializeResult(
            metadata={
                "bars": result.bars,
                "warmup_bars": result.warmup_bars,
                "trades": len(result.trades),
                "orders": len(result.orders),
                "final_equity": float(result.equity["equity"].iloc[-1]) if result.bars else float("nan"),
                "first_bar": str(result.equity.index[0]) if result.bars else "",
                "last_bar": str(result.equity.index[-1]) if result.bars else "",
                "commission": settings.taker_fee(),
                "results": dg.MetadataValue.path(run.folder),
                **(_sweep_metadata(run.sweep, run) if run.sweep is not None else {}),
                **_coverage_metadata(run.coverage),
                **{f"seconds_{stage}": round(value, 3) for stage, value in run.seconds.items()},
            },
            check_results=[_lookahead_check_result(run), *([funding_result] if swap else [])],
        )

    @dg.asset(
        key=metrics_asset_key(settings.name),
        partitions_def=partitions,
        deps=[backtest_asset_key(settings.name)],
        check_specs=_overfitting_specs(settings, metrics_asset_key(settings.name)),
        group_name=RESEARCH_GROUP,
        kinds={"pandas"},
        description=f"Performance metrics and charts of {backtest_asset_key(settings.name).to_user_string()}, per market.",
    )
    def metrics(context: dg.AssetExecutionContext, candle_store: CandleStoreResource) -> dg.MaterializeResult:
        symbol = symbols[context.partition_key]
        results = ResultStore(candle_store.get_store().root)
        run = compute_backtest_metrics(settings, symbol, results)
        numbers = {
            key: dg.MetadataValue.float(float(value))
            for key, value in run.metrics.items()
            if isinstance(value, (int, float))
        }
        return dg.MaterializeResult(
            check_results=_overfitting_results(settings, run.overfitting),
            metadata={
                **numbers,
                **_overfitting_metadata(run.overfitting),
                "metrics_table": dg.MetadataValue.md(metrics_table_markdown(run.metrics)),
                "equity_drawdown_chart": dg.MetadataValue.md(png_markdown(run.charts["equity_drawdown"], "equity and drawdown")),
                "trades_chart": dg.MetadataValue.md(png_markdown(run.charts["trades"], "trades on price")),
                **{f"{chart}_png": dg.MetadataValue.path(path) for chart, path in run.chart_paths.items()},
                **_coverage_metadata(run.coverage),
                **{f"seconds_{stage}": round(value, 3) for stage, value in run.seconds.items()},
            }
        )

    return [backtest, metrics]


def _coverage_metadata(coverage: DataCoverage | None) -> dict[str, Any]:
    """Days of the period with candles, and ``data_warning`` (empty when they cover it all)."""
    if coverage is None:
        return {}
    return {**coverage.numbers(), "data_warning": coverage.warning or ""}


R = TypeVar("R")


def _run_for_market(
    run: Callable[..., R],
    settings: BacktestSettings,
    symbol: str,
    context: dg.AssetExecutionContext,
    candle_store: CandleStoreResource,
) -> R:
    """A ``research_runs`` function on one market, logging progress to the run. An error in the
    strategy's own code, or a sweep whose every candidate the filters rejected, fails the step
    with that message and no retries (rerunning the same code on the same candles fails the same)."""
    store = candle_store.get_store()
    try:
        return run(settings, symbol, store, ResultStore(store.root), log=context.log.info)
    except (StrategyError, NoCandidatePassed) as error:
        raise dg.Failure(description=f"{context.asset_key.to_user_string()} {symbol}: {error}", allow_retries=False) from error


def _sweep_metadata(sweep: SweepResult, run: BacktestRun) -> dict[str, object]:
    shown = [c for c in sweep.table.columns if c.startswith("param_")] + [
        "objective", "trade_count", "max_drawdown", "total_return", "rejected", "chosen",
    ]
    table = sweep.table.sort_values("objective", ascending=not sweep.objective.higher_is_better, na_position="last")
    return {
        "chosen_params": str({k: v for k, v in run.spec.params.items() if f"param_{k}" in sweep.table}),
        "objective": sweep.objective.metric,
        "candidates": len(sweep.table),
        "candidates_passed": int(sweep.table["passed"].sum()),
        "sweep": dg.MetadataValue.md(table_markdown(table.loc[:, shown].head(50))),
    }


def _lookahead_check_result(run: BacktestRun) -> dg.AssetCheckResult:
    report = run.lookahead
    return dg.AssetCheckResult(
        check_name=LOOKAHEAD_CHECK,
        passed=not report.biased,
        severity=dg.AssetCheckSeverity.ERROR,
        description=report.message,
        metadata={
            "truncated_reruns": report.cuts,
            "bars_checked": report.bars_checked,
            "changed_signals": len(report.differences),
            "first_changes": dg.MetadataValue.md(table_markdown(report.differences.head(10), empty="none")),
            "seconds": round(report.seconds, 3),
        },
    )


def _overfitting_specs(settings: BacktestSettings, key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    """The ``overfitting`` check of a swept backtest's metrics or its walk-forward (none without a grid)."""
    if settings.grid is None:
        return []
    limits = settings.overfitting
    return [dg.AssetCheckSpec(
        OVERFITTING_CHECK,
        asset=key,
        blocking=limits.block,
        description=(
            f"Probability of backtest overfitting <= {limits.max_pbo:g} and deflated Sharpe >= {limits.min_dsr:g} "
            f"({'blocking: the leaderboard leaves a failing result out' if limits.block else 'WARN'}; "
            "docs/walkforward.md explains both)."
        ),
    )]


def _overfitting_results(settings: BacktestSettings, stats: dict[str, float] | None) -> list[dg.AssetCheckResult]:
    if settings.grid is None:
        return []
    limits = settings.overfitting_limits()
    reasons = over_limits(stats or {}, limits)
    return [dg.AssetCheckResult(
        check_name=OVERFITTING_CHECK,
        passed=not reasons,
        severity=dg.AssetCheckSeverity.ERROR if limits.block else dg.AssetCheckSeverity.WARN,
        description="; ".join(reasons) if reasons else "within the limits (NaN statistics are not judged)",
        metadata={key: dg.MetadataValue.float(float(stats[key])) for key in ("dsr", "pbo", "trials") if stats and key in stats},
    )]


def _overfitting_metadata(stats: dict[str, float] | None) -> dict[str, object]:
    if not stats:
        return {}
    return {key: dg.MetadataValue.float(float(value)) for key, value in stats.items() if isinstance(value, (int, float))}


def build_walkforward_asset(settings: BacktestSettings, source: ExchangeSettings) -> dg.AssetsDefinition:
    """``<name>/walkforward``: the grid optimized on each train window, its winner tested on the next."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # MultiToSingleDimensionPartitionMapping, as above
        return _walkforward_asset(settings, source)


def _walkforward_asset(settings: BacktestSettings, source: ExchangeSettings) -> dg.AssetsDefinition:
    partitions = ohlcv_partitions(source).get_partitions_def_for_dimension(SYMBOL)
    symbols = backtest_symbols(settings, source)
    plan = settings.walk_forward

    @dg.asset(
        key=walkforward_asset_key(settings.name),
        partitions_def=partitions,
        deps=_market_deps(settings),
        group_name=RESEARCH_GROUP,
        kinds={"backtrader", "parquet"},
        check_specs=_overfitting_specs(settings, walkforward_asset_key(settings.name)),
        description=(
            f"Walk-forward of {settings.strategy} over {settings.grid} by {settings.objective.metric}: "
            f"{'anchored' if plan.anchored else 'rolling'} {plan.train_days}-day train, {plan.test_days}-day test "
            "windows; stitched out-of-sample equity, in- vs out-of-sample metrics per window."
        ),
    )
    def walkforward(context: dg.AssetExecutionContext, candle_store: CandleStoreResource) -> dg.MaterializeResult:
        run = _run_for_market(run_walk_forward, settings, symbols[context.partition_key], context, candle_store)
        summary = run.result.summary
        numbers = {
            key: dg.MetadataValue.float(float(value))
            for key, value in summary.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        return dg.MaterializeResult(
            check_results=_overfitting_results(settings, run.overfitting),
            metadata={
                **numbers,
                **_overfitting_metadata(run.overfitting),
                "latest_params": str(summary.get("latest_params")),
                "windows_table": dg.MetadataValue.md(table_markdown(run.result.windows)),
                "walkforward_chart": dg.MetadataValue.md(png_markdown(run.chart, "walk-forward out-of-sample equity")),
                "results": dg.MetadataValue.path(run.folder),
                **{f"seconds_{stage}": round(value, 3) for stage, value in run.seconds.items()},
            }
        )

    return walkforward


def build_leaderboard_asset(backtests: list[BacktestSettings]) -> dg.AssetsDefinition:
    @dg.asset(
        key=LEADERBOARD_KEY,
        deps=[metrics_asset_key(settings.name) for settings in backtests],
        group_name=RESEARCH_GROUP,
        kinds={"pandas"},
        description="Every backtest and market ranked by Sharpe ratio.",
    )
    def leaderboard_asset(candle_store: CandleStoreResource) -> dg.MaterializeResult:
        results = ResultStore(candle_store.get_store().root)
        table = leaderboard(backtests, results)
        path = results.save_leaderboard(table)
        return dg.MaterializeResult(
            metadata={
                "entries": len(table),
                "leaderboard": dg.MetadataValue.md(leaderboard_markdown(table)),
                "path": dg.MetadataValue.path(results.url(path)),
            }
        )

    return leaderboard_asset


def backtest_symbols(settings: BacktestSettings, source: ExchangeSettings) -> dict[str, str]:
    """Partition key -> ccxt symbol for a backtest's markets: the entry's listed markets, plus the
    backtest's own ``symbols`` (a universe entry's members are only known at run time)."""
    return {**symbols_by_key(source), **{symbol_key(symbol): symbol for symbol in settings.symbols}}
