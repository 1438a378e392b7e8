"""Jobs and schedules that keep each exchange's candles current.

- ``ohlcv_<exchange>_daily`` (running by default): at 00:15 UTC, yesterday's day for every market
  and timeframe, one run per market.
- ``ohlcv_<exchange>_intraday`` (stopped by default): hourly, today's partial day, for research
  on the newest candles; the delta update fetches only candles after the last stored one.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from atlas_pipeline.config import ExchangeSettings
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.market_data.partitions import DATE, SYMBOL, symbols_by_key


def ohlcv_job(settings: ExchangeSettings) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=f"ohlcv_{settings.id}",
        selection=dg.AssetSelection.assets(*(ohlcv_asset_key(settings.id, tf) for tf in settings.timeframes)),
        description=f"Candles of every configured {settings.id} market and timeframe for the selected days.",
    )


def _day_schedule(
    settings: ExchangeSettings,
    job: dg.UnresolvedAssetJobDefinition,
    *,
    kind: str,
    cron: str,
    days_back: int,
    status: dg.DefaultScheduleStatus,
    description: str,
) -> dg.ScheduleDefinition:
    """A schedule requesting, for every market, the day ``days_back`` before the tick (UTC)."""

    @dg.schedule(
        name=f"ohlcv_{settings.id}_{kind}",
        cron_schedule=cron,
        execution_timezone="UTC",
        job=job,
        default_status=status,
        description=description,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        tick = context.scheduled_execution_time.astimezone(dt.UTC)
        day = (tick - dt.timedelta(days=days_back)).date().isoformat()
        return [
            dg.RunRequest(
                run_key=f"{kind}-{tick:%Y-%m-%dT%H:%M}-{symbol}",
                partition_key=dg.MultiPartitionKey({DATE: day, SYMBOL: symbol}),
            )
            for symbol in symbols_by_key(settings)
        ]

    return _schedule


def ohlcv_schedules(settings: ExchangeSettings, job: dg.UnresolvedAssetJobDefinition) -> list[dg.ScheduleDefinition]:
    daily = _day_schedule(
        settings,
        job,
        kind="daily",
        cron="15 0 * * *",
        days_back=1,
        status=dg.DefaultScheduleStatus.RUNNING,
        description="Yesterday's candles for every market, once the day has closed.",
    )
    intraday = _day_schedule(
        settings,
        job,
        kind="intraday",
        cron="5 * * * *",
        days_back=0,
        status=dg.DefaultScheduleStatus.STOPPED,
        description="Today's candles so far (partial day), hourly; only new candles are fetched.",
    )
    return [daily, intraday]
