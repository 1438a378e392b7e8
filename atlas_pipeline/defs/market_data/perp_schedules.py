"""``perps_<exchange>`` job and its daily schedule: yesterday's mark-price candles and funding
events of every swap of an entry, once the day has closed (00:20 UTC, after the candles' 00:15).

One run per asset (each timeframe's ``markprice``, and ``funding``) covering every swap for the
day, as a partition range, like the candles' schedule (``schedules.py``): a tick costs one run
request per asset, never one per market or day.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from atlas_pipeline.config import ExchangeSettings
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.market_data.funding import funding_asset_key
from atlas_pipeline.defs.market_data.partitions import DATE, SYMBOL, swap_markets
from atlas_pipeline.market_data.candles import symbol_key
from atlas_pipeline.market_data.store import MARK_PRICE_CANDLES


def perp_asset_keys(settings: ExchangeSettings) -> list[dg.AssetKey]:
    return [ohlcv_asset_key(settings.id, tf, MARK_PRICE_CANDLES) for tf in settings.timeframes] + [funding_asset_key(settings.id)]


def perp_job(settings: ExchangeSettings) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=f"perps_{settings.id}",
        selection=dg.AssetSelection.assets(*perp_asset_keys(settings)),
        description=f"Mark-price candles and funding rates of {settings.id}'s perpetual swaps for the selected days.",
    )


def perp_daily_schedule(settings: ExchangeSettings, job: dg.UnresolvedAssetJobDefinition) -> dg.ScheduleDefinition:
    swaps = [symbol_key(m) for m in swap_markets(settings)]

    @dg.schedule(
        name=f"perps_{settings.id}_daily",
        cron_schedule="20 0 * * *",
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Yesterday's mark prices and funding events for every swap: one run per asset.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        tick = context.scheduled_execution_time.astimezone(dt.UTC)
        day = (tick - dt.timedelta(days=1)).date().isoformat()
        first = dg.MultiPartitionKey({DATE: day, SYMBOL: swaps[0]})
        last = dg.MultiPartitionKey({DATE: day, SYMBOL: swaps[-1]})
        return [
            dg.RunRequest(
                run_key=f"daily-{tick:%Y-%m-%dT%H:%M}-{key.to_python_identifier()}",
                asset_selection=[key],
                tags={ASSET_PARTITION_RANGE_START_TAG: str(first), ASSET_PARTITION_RANGE_END_TAG: str(last)},
            )
            for key in perp_asset_keys(settings)
        ]

    return _schedule
