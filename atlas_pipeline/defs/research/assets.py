"""``backtest/<name>`` -> ``metrics/<name>`` -> ``leaderboard``, on top of the OHLCV assets.

A backtest partition is one market; it depends on every day of that market's candles through
``MultiToSingleDimensionPartitionMapping``, so the UI shows the lineage and the automation
condition reruns exactly the markets whose candles changed.
"""

import warnings

import dagster as dg

from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.config.exchanges import ExchangeSettings
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.market_data.partitions import SYMBOL, ohlcv_partitions, symbols_by_key
from atlas_pipeline.defs.research.automation import rerun_when_upstream_updated
from atlas_pipeline.defs.resources import CandleStoreResource
from atlas_pipeline.research.charts import png_markdown
from atlas_pipeline.research.engine import StrategyError
from atlas_pipeline.research.metrics import metrics_table_markdown
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research_runs import compute_backtest_metrics, leaderboard, leaderboard_markdown, run_backtest

RESEARCH_GROUP = "research"
LEADERBOARD_KEY = dg.AssetKey("leaderboard")


def backtest_asset_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["backtest", name])


def metrics_asset_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["metrics", name])


def build_backtest_assets(settings: BacktestSettings, source: ExchangeSettings) -> list[dg.AssetsDefinition]:
    """``backtest/<name>`` and ``metrics/<name>``, partitioned like the candles' market dimension.

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
    symbols = symbols_by_key(source)
    candles = ohlcv_asset_key(settings.exchange, settings.timeframe)

    @dg.asset(
        key=backtest_asset_key(settings.name),
        partitions_def=partitions,
        deps=[
            dg.AssetDep(
                candles,
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=SYMBOL),
            )
        ],
        automation_condition=rerun_when_upstream_updated(),
        group_name=RESEARCH_GROUP,
        kinds={"backtrader", "parquet"},
        description=(
            f"Strategy {settings.strategy} {dict(settings.params)} on {settings.exchange} {settings.timeframe} "
            f"candles from {settings.period.start}: trades, orders and equity curve per market."
        ),
        metadata={"strategy": settings.strategy, "params": str(dict(settings.params))},
    )
    def backtest(context: dg.AssetExecutionContext, candle_store: CandleStoreResource) -> dg.MaterializeResult:
        symbol = symbols[context.partition_key]
        store = candle_store.get_store()
        try:
            run = run_backtest(settings, symbol, store, ResultStore(store.root))
        except StrategyError as error:
            raise dg.Failure(description=f"backtest {settings.name} {symbol}: {error}", allow_retries=False) from error
        result = run.result
        context.log.info(f"{settings.name} {symbol}: {result.bars:,} bars, {len(result.trades)} trades")
        return dg.MaterializeResult(
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
                **{f"seconds_{stage}": round(value, 3) for stage, value in run.seconds.items()},
            }
        )

    @dg.asset(
        key=metrics_asset_key(settings.name),
        partitions_def=partitions,
        deps=[backtest_asset_key(settings.name)],
        automation_condition=rerun_when_upstream_updated(),
        group_name=RESEARCH_GROUP,
        kinds={"pandas"},
        description=f"Performance metrics and charts of backtest/{settings.name}, per market.",
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
            metadata={
                **numbers,
                "metrics_table": dg.MetadataValue.md(metrics_table_markdown(run.metrics)),
                "equity_drawdown_chart": dg.MetadataValue.md(png_markdown(run.charts["equity_drawdown"], "equity and drawdown")),
                "trades_chart": dg.MetadataValue.md(png_markdown(run.charts["trades"], "trades on price")),
                **{f"{chart}_png": dg.MetadataValue.path(path) for chart, path in run.chart_paths.items()},
                **{f"seconds_{stage}": round(value, 3) for stage, value in run.seconds.items()},
            }
        )

    return [backtest, metrics]


def build_leaderboard_asset(backtests: list[BacktestSettings]) -> dg.AssetsDefinition:
    @dg.asset(
        key=LEADERBOARD_KEY,
        deps=[metrics_asset_key(settings.name) for settings in backtests],
        automation_condition=rerun_when_upstream_updated(),
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

