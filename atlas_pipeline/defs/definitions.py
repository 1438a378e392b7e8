"""Build the ``Definitions`` of a config folder: every domain's assets, jobs and schedules."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from atlas_pipeline.config import load_exchanges_config
from atlas_pipeline.config.adhoc import adhoc_backtests_file, load_adhoc_backtests
from atlas_pipeline.config.backtests import load_backtests_config
from atlas_pipeline.config.portfolios import load_portfolios_config
from atlas_pipeline.config.paths import config_dir as default_config_dir
from atlas_pipeline.defs.exchange_metadata import build_exchange_metadata_assets, build_exchange_metadata_schedule
from atlas_pipeline.defs.market_data.assets import build_ohlcv_asset
from atlas_pipeline.defs.market_data.funding import build_funding_asset
from atlas_pipeline.defs.market_data.partitions import swap_markets
from atlas_pipeline.defs.market_data.perp_schedules import perp_daily_schedule, perp_job
from atlas_pipeline.defs.market_data.backfills import ohlcv_backfill_job, ohlcv_backfill_sensor
from atlas_pipeline.defs.market_data.schedules import ohlcv_job, ohlcv_schedules
from atlas_pipeline.defs.research.automation import research_automation_sensor
from atlas_pipeline.defs.research.assets import build_backtest_assets, build_leaderboard_asset, build_walkforward_asset
from atlas_pipeline.defs.research.portfolios import build_portfolio_asset
from atlas_pipeline.defs.run_hygiene import dead_runs_sensor
from atlas_pipeline.defs.resources import CandleStoreResource
from atlas_pipeline.market_data.exchange_metadata import metadata_path
from atlas_pipeline.market_data.store import MARK_PRICE_CANDLES


def build_definitions(config_dir: Path | str | None = None, store_root: str | None = None) -> dg.Definitions:
    """Assets, jobs and schedules for the config in ``config_dir`` (default: ``ATLAS_CONFIG``).

    Backtests: the configured ones and the ad-hoc ones of the data root (``config.adhoc``); only
    configured ones are rerun automatically when their candles change.
    """
    exchanges = load_exchanges_config(config_dir)
    backtests = load_backtests_config(exchanges, config_dir)
    resource = CandleStoreResource(root=store_root)
    adhoc = load_adhoc_backtests(adhoc_backtests_file(resource.get_store().root), exchanges, set(backtests.backtests))
    every_backtest = [*backtests.backtests.values(), *adhoc.values()]
    portfolios = list(load_portfolios_config(exchanges, config_dir).portfolios.values())
    metadata_file = metadata_path(config_dir or default_config_dir())
    assets: list[dg.AssetsDefinition] = []
    jobs: list[dg.UnresolvedAssetJobDefinition | dg.JobDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    sensors: list[dg.SensorDefinition] = [dead_runs_sensor()]
    for settings in exchanges.exchanges.values():
        assets.extend(build_ohlcv_asset(settings, timeframe, metadata_file) for timeframe in settings.timeframes)
        if swap_markets(settings):  # perpetual swaps: their mark prices and funding too
            assets.extend(build_ohlcv_asset(settings, tf, dataset=MARK_PRICE_CANDLES) for tf in settings.timeframes)
            assets.append(build_funding_asset(settings))
            jobs.append(perp_job(settings))
            schedules.append(perp_daily_schedule(settings, jobs[-1]))
        job = ohlcv_job(settings)
        backfill_job = ohlcv_backfill_job(settings)
        jobs.extend([job, backfill_job])
        sensors.append(ohlcv_backfill_sensor(settings, backfill_job, job))
        schedules.extend(ohlcv_schedules(settings, job))
    for backtest in every_backtest:
        assets.extend(build_backtest_assets(backtest, exchanges.get(backtest.exchange)))
        if backtest.walk_forward is not None:
            assets.append(build_walkforward_asset(backtest, exchanges.get(backtest.exchange)))
    assets.extend(build_portfolio_asset(portfolio) for portfolio in portfolios)
    assets.extend(build_exchange_metadata_assets(list(exchanges.exchanges.values()), metadata_file))
    schedules.extend(build_exchange_metadata_schedule(settings) for settings in exchanges.exchanges.values())
    if every_backtest:
        assets.append(build_leaderboard_asset(every_backtest))
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=[
            *sensors,
            *(
                [research_automation_sensor(backtests.backtests.values(), exchanges.exchanges, portfolios=portfolios)]
                if backtests.backtests or portfolios
                else []
            ),
        ],
        resources={"candle_store": resource},
    )
