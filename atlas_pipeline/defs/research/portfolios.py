"""``<name>/portfolio``: one strategy on several markets with one account, beside the backtests.

Unpartitioned: a portfolio reads every market's candles at once. It depends on the candle asset
of its exchange entry and timeframe (all partitions), so the UI shows the lineage; the
``research_reruns`` sensor reruns it when the candles of one of *its* markets change (``reruns.py``).
"""

import dagster as dg

from atlas_pipeline.config.portfolios import PortfolioSettings
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.research.assets import RESEARCH_GROUP
from atlas_pipeline.defs.resources import CandleStoreResource
from atlas_pipeline.portfolio_runs import run_configured_portfolio
from atlas_pipeline.research.charts import png_markdown
from atlas_pipeline.research.engine import StrategyError
from atlas_pipeline.research.metrics import metrics_table_markdown
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research_runs import table_markdown


def portfolio_asset_key(name: str) -> dg.AssetKey:
    return dg.AssetKey([name, "portfolio"])


def build_portfolio_asset(settings: PortfolioSettings) -> dg.AssetsDefinition:
    weights = settings.allocation.replace("_", "-")
    limit = f", at most {settings.max_positions} held" if settings.max_positions else ""

    @dg.asset(
        key=portfolio_asset_key(settings.name),
        deps=[ohlcv_asset_key(settings.exchange, settings.timeframe)],
        group_name=RESEARCH_GROUP,
        kinds={"backtrader", "parquet"},
        description=(
            f"Strategy {settings.strategy} {dict(settings.params)} on {', '.join(settings.symbols)} "
            f"({settings.exchange} {settings.timeframe}) with one account: {weights} weights{limit}, rebalanced "
            f"every {settings.rebalance.every} beyond a {settings.rebalance.threshold:.0%} drift. Equity, orders, "
            "per-market contribution to return and drawdown, turnover."
        ),
        metadata={"strategy": settings.strategy, "markets": ", ".join(settings.symbols)},
    )
    def portfolio(context: dg.AssetExecutionContext, candle_store: CandleStoreResource) -> dg.MaterializeResult:
        store = candle_store.get_store()
        try:
            run = run_configured_portfolio(settings, store, ResultStore(store.root), log=context.log.info)
        except StrategyError as error:
            raise dg.Failure(description=f"{settings.name}/portfolio: {error}", allow_retries=False) from error
        numbers = {
            key: dg.MetadataValue.float(float(value)) for key, value in run.metrics.items() if isinstance(value, float)
        }
        return dg.MaterializeResult(
            metadata={
                **numbers,
                "bars": len(run.result.equity),
                "orders": len(run.result.orders),
                "metrics_table": dg.MetadataValue.md(metrics_table_markdown(run.metrics)),
                "attribution": dg.MetadataValue.md(table_markdown(run.attribution.reset_index())),
                "equity_drawdown_chart": dg.MetadataValue.md(png_markdown(run.chart, "portfolio equity and drawdown")),
                "results": dg.MetadataValue.path(run.folder),
                **{f"seconds_{stage}": round(value, 3) for stage, value in run.seconds.items()},
            }
        )

    return portfolio
