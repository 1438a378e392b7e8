"""Materialize configured backtests in-process: backtest and metrics per market, then the leaderboard.

Used by the demo so its results show up in the Dagster UI with their lineage, exactly as if they had
been materialized there.
"""

import dagster as dg

from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.defs.research.assets import LEADERBOARD_KEY, backtest_asset_key, metrics_asset_key
from atlas_pipeline.market_data.candles import symbol_key


def materialize_backtests(
    defs: dg.Definitions, instance: dg.DagsterInstance, backtests: list[BacktestSettings]
) -> list[dg.ExecuteInProcessResult]:
    """One run per (backtest, market), then one for the leaderboard; failures do not stop the rest."""
    runs = []
    for settings in backtests:
        assets = [defs.resolve_assets_def(backtest_asset_key(settings.name)), defs.resolve_assets_def(metrics_asset_key(settings.name))]
        for symbol in settings.symbols:
            runs.append(dg.materialize(assets, instance=instance, partition_key=symbol_key(symbol), raise_on_error=False))
    runs.append(dg.materialize([defs.resolve_assets_def(LEADERBOARD_KEY)], instance=instance, raise_on_error=False))
    return runs
