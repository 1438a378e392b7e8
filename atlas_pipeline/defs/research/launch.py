"""Materialize configured backtests in-process: backtest and metrics (and walk-forward, when
configured) per market, then the leaderboard.

Used by the demo so its results show up in the Dagster UI with their lineage, exactly as if they had
been materialized there.
"""

from collections.abc import Sequence

import dagster as dg

from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.defs.run_hygiene import process_tags
from atlas_pipeline.defs.run_results import LaunchedRun
from atlas_pipeline.defs.research.assets import (
    LEADERBOARD_KEY,
    backtest_asset_key,
    metrics_asset_key,
    walkforward_asset_key,
)
from atlas_pipeline.market_data.candles import symbol_key


def materialize_backtests(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    backtests: list[BacktestSettings],
    symbols: Sequence[str] | None = None,
) -> list[LaunchedRun]:
    """One run per (backtest, market) of ``symbols`` (default: each backtest's), then the leaderboard.

    A failing backtest does not stop the others.
    """
    runs = []
    tags = process_tags()  # so a run this process leaves behind when killed is marked failed later
    for settings in backtests:
        keys = [backtest_asset_key(settings.name), metrics_asset_key(settings.name)]
        if settings.walk_forward is not None:
            keys.append(walkforward_asset_key(settings.name))
        assets = [defs.resolve_assets_def(key) for key in keys]
        for symbol in symbols or settings.symbols:
            result = dg.materialize(
                assets, instance=instance, partition_key=symbol_key(symbol), tags=tags, raise_on_error=False
            )
            runs.append(LaunchedRun(f"{settings.name} {symbol}", result))
            runs[-1].raise_if_interrupted()
    board = dg.materialize([defs.resolve_assets_def(LEADERBOARD_KEY)], instance=instance, tags=tags, raise_on_error=False)
    runs.append(LaunchedRun("leaderboard", board))
    return runs
