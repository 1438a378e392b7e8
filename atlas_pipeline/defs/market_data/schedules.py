"""Jobs and schedules that keep each exchange's candles current.

- ``ohlcv_<exchange>_daily`` (running by default): at 00:15 UTC, yesterday's day for every market
  and timeframe.
- ``ohlcv_<exchange>_intraday`` (stopped by default): hourly, today's partial day, for research
  on the newest candles; the delta update fetches only candles after the last stored one.

A tick requests one run per timeframe covering every market for the day (a partition range run:
``dagster/asset_partition_range_start|end`` = ``<day>|<first market>`` .. ``<day>|<last market>``,
which Dagster resolves per dimension into that day x the markets between the two, in the market
dimension's order), in batches of at most ``MARKETS_PER_RUN`` markets. Not one run per market:
the scheduler spends ~0.3 s per run request (99 s a tick at 400 markets), and every queued run
holds back research reruns as "dependency in progress" (DESIGN.md sections 7, 9). A tick's cost
follows the number of markets and timeframes, never the days of history. One market failing does
not stop the others in its run (``assets.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from atlas_pipeline.config import ExchangeSettings
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.market_data.partitions import DATE, SYMBOL, market_keys

MARKETS_PER_RUN = 500
"""Most markets one scheduled run covers (a run fetches its markets one after another; larger
universes are split into consecutive batches that the run queue runs side by side)."""


def ohlcv_job(settings: ExchangeSettings) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=f"ohlcv_{settings.id}",
        selection=dg.AssetSelection.assets(*(ohlcv_asset_key(settings.id, tf) for tf in settings.timeframes)),
        description=f"Candles of every configured {settings.id} market and timeframe for the selected days.",
    )


def day_run_requests(
    settings: ExchangeSettings,
    markets: Sequence[str],
    day: dt.date,
    run_key_prefix: str,
    markets_per_run: int = MARKETS_PER_RUN,
) -> list[dg.RunRequest]:
    """One run request per timeframe and batch of consecutive ``markets`` (partition keys, in the
    market dimension's order) for ``day``: a partition range from the batch's first market to its
    last, which Dagster resolves into exactly that batch."""
    if markets_per_run < 1:
        raise ValueError(f"markets_per_run must be at least 1, got {markets_per_run}")
    batches = [markets[i : i + markets_per_run] for i in range(0, len(markets), markets_per_run)]
    requests = []
    for timeframe in settings.timeframes:
        for number, batch in enumerate(batches, 1):
            first = dg.MultiPartitionKey({DATE: day.isoformat(), SYMBOL: batch[0]})
            last = dg.MultiPartitionKey({DATE: day.isoformat(), SYMBOL: batch[-1]})
            part = f"-{number}of{len(batches)}" if len(batches) > 1 else ""
            requests.append(
                dg.RunRequest(
                    run_key=f"{run_key_prefix}-{timeframe}{part}",
                    asset_selection=[ohlcv_asset_key(settings.id, timeframe)],
                    tags={
                        ASSET_PARTITION_RANGE_START_TAG: str(first),
                        ASSET_PARTITION_RANGE_END_TAG: str(last),
                        "atlas/markets": str(len(batch)),
                    },
                )
            )
    return requests


def _day_schedule(
    settings: ExchangeSettings,
    job: dg.UnresolvedAssetJobDefinition,
    *,
    kind: str,
    cron: str,
    days_back: int,
    status: dg.DefaultScheduleStatus,
    description: str,
    markets_per_run: int,
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
    def _schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        tick = context.scheduled_execution_time.astimezone(dt.UTC)
        day = (tick - dt.timedelta(days=days_back)).date()
        markets = market_keys(settings, context.instance)
        if not markets:
            return dg.SkipReason(f"{settings.id} has no markets")
        return day_run_requests(settings, markets, day, f"{kind}-{tick:%Y-%m-%dT%H:%M}", markets_per_run)

    return _schedule


def ohlcv_schedules(
    settings: ExchangeSettings, job: dg.UnresolvedAssetJobDefinition, markets_per_run: int = MARKETS_PER_RUN
) -> list[dg.ScheduleDefinition]:
    daily = _day_schedule(
        settings,
        job,
        kind="daily",
        cron="15 0 * * *",
        days_back=1,
        status=dg.DefaultScheduleStatus.RUNNING,
        description="Yesterday's candles for every market, once the day has closed: one run per timeframe.",
        markets_per_run=markets_per_run,
    )
    intraday = _day_schedule(
        settings,
        job,
        kind="intraday",
        cron="5 * * * *",
        days_back=0,
        status=dg.DefaultScheduleStatus.STOPPED,
        description="Today's candles so far (partial day), hourly, one run per timeframe; only new candles are fetched.",
        markets_per_run=markets_per_run,
    )
    return [daily, intraday]
