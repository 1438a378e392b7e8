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


def _day_requests(settings: ExchangeSettings, day: dt.date, purpose: str) -> list[dg.RunRequest]:
    return [
        dg.RunRequest(
            run_key=f"{purpose}-{day.isoformat()}-{symbol}",
            partition_key=dg.MultiPartitionKey({DATE: day.isoformat(), SYMBOL: symbol}),
        )
        for symbol in symbols_by_key(settings)
    ]


def ohlcv_schedules(settings: ExchangeSettings, job: dg.UnresolvedAssetJobDefinition) -> list[dg.ScheduleDefinition]:
    @dg.schedule(
        name=f"ohlcv_{settings.id}_daily",
        cron_schedule="15 0 * * *",
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Yesterday's candles for every market, once the day has closed.",
    )
    def daily(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        yesterday = context.scheduled_execution_time.astimezone(dt.UTC).date() - dt.timedelta(days=1)
        return _day_requests(settings, yesterday, "daily")

    @dg.schedule(
        name=f"ohlcv_{settings.id}_intraday",
        cron_schedule="5 * * * *",
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Today's candles so far (partial day), hourly; only new candles are fetched.",
    )
    def intraday(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        now = context.scheduled_execution_time.astimezone(dt.UTC)
        return _day_requests(settings, now.date(), f"intraday-{now:%H}")

    return [daily, intraday]
