"""``<name>/portfolio``: one strategy on several markets with one account, beside the backtests.

Unpartitioned: a portfolio reads every market's candles at once. It depends on the candle asset
of its exchange entry and timeframe (all partitions), and a swap portfolio also on the mark-price
and funding assets, so the UI shows the lineage; the ``research_reruns`` sensor reruns it when any
of those changes for one of *its* markets (``reruns.py``). A swap portfolio carries the blocking
``funding_history`` check of a perp backtest: a missing funding event of any market fails it.
"""

from collections.abc import Iterator

import dagster as dg

from atlas_pipeline.config.portfolios import PortfolioSettings
from atlas_pipeline.defs.research.assets import (
    FUNDING_CHECK,
    RESEARCH_GROUP,
    funding_check_spec,
    market_parents,
    missing_funding_result,
)
from atlas_pipeline.defs.resources import CandleStoreResource
from atlas_pipeline.portfolio_runs import run_configured_portfolio
from atlas_pipeline.research.charts import png_markdown
from atlas_pipeline.research.engine import StrategyError
from atlas_pipeline.research.engine.perps import MissingFundingError
from atlas_pipeline.research.metrics import metrics_table_markdown
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research_runs import table_markdown


def portfolio_asset_key(name: str) -> dg.AssetKey:
    return dg.AssetKey([name, "portfolio"])


def build_portfolio_asset(settings: PortfolioSettings) -> dg.AssetsDefinition:
    weights = settings.allocation.replace("_", "-")
    limit = f", at most {settings.max_positions} held" if settings.max_positions else ""
    key = portfolio_asset_key(settings.name)
    swap = settings.market_type == "swap"
    margin = f" Perpetual swaps, {settings.leverage:g}x isolated margin per market, with funding." if swap else ""

    @dg.asset(
        key=key,
        deps=market_parents(settings),
        check_specs=[funding_check_spec(key, "every market's period")] if swap else None,
        group_name=RESEARCH_GROUP,
        kinds={"backtrader", "parquet"},
        description=(
            f"Strategy {settings.strategy} {dict(settings.params)} on {', '.join(settings.symbols)} "
            f"({settings.exchange} {settings.timeframe}) with one account: {weights} weights{limit}, rebalanced "
            f"every {settings.rebalance.every} beyond a {settings.rebalance.threshold:.0%} drift. Equity, orders, "
            f"per-market contribution to return and drawdown, turnover.{margin}"
        ),
        metadata={"strategy": settings.strategy, "markets": ", ".join(settings.symbols)},
    )
    def portfolio(context: dg.AssetExecutionContext, candle_store: CandleStoreResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        store = candle_store.get_store()
        try:
            run = run_configured_portfolio(settings, store, ResultStore(store.root), log=context.log.info)
        except MissingFundingError as error:
            yield missing_funding_result(error)
            raise dg.Failure(description=f"{settings.name}/portfolio: {error}", allow_retries=False) from error
        except StrategyError as error:
            raise dg.Failure(description=f"{settings.name}/portfolio: {error}", allow_retries=False) from error
        numbers = {
            name: dg.MetadataValue.float(float(value)) for name, value in run.metrics.items() if isinstance(value, float)
        }
        funding = run.result.funding
        checks = [dg.AssetCheckResult(check_name=FUNDING_CHECK, passed=True, metadata={"funding_events": len(funding)})] if swap else []
        yield dg.MaterializeResult(
            check_results=checks,
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
