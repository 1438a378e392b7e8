"""Backfills of a whole universe from the UI without Dagster's partition-count cost at launch.

Dagster's own backfill launch (``launchPartitionBackfill``, the UI's partitions dialog) checks the
selected names against every key of the asset: 1.8 M ``MultiPartitionKey`` objects built at 500
markets since 2017, ~20 s for any selection, even one market (``bench/universe.py``). So each
exchange also gets:

- job ``ohlcv_<exchange>_backfill``: launched from the launchpad with run config (days, markets,
  timeframes; empty means all). Its op checks the request and logs the runs it will give;
  launching it costs what launching any small run costs.
- sensor ``ohlcv_<exchange>_backfills`` (running by default): when such a run succeeds, it
  requests one ``ohlcv_<exchange>`` run per market over the requested days and timeframes (a
  partition range run, as ``atlas fetch`` launches them). Bounded runs; their cost follows the
  markets asked for, never the partition count, and each run skips the days already stored.
"""

import datetime as dt

import dagster as dg

from atlas_pipeline.config import ExchangeSettings
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.market_data.launch import partition_range_tags
from atlas_pipeline.defs.market_data.partitions import market_keys
from atlas_pipeline.defs.sensor_interval import sensor_interval_seconds
from atlas_pipeline.market_data.candles import symbol_key

REQUEST_TAG = "atlas/backfill_request"
"""Tag on each requested run: the run id of the ``ohlcv_<exchange>_backfill`` run that asked for it."""


class BackfillRequest(dg.Config):
    """What to backfill; an empty field means all of it."""

    start: str = ""
    """First day (YYYY-MM-DD); default: the exchange entry's ``history_start``."""
    end: str = ""
    """Last day, included (YYYY-MM-DD); default: today (UTC, partial)."""
    markets: list[str] = []
    """ccxt symbols or partition keys (``BTC/USDT`` or ``BTC-USDT``); default: every market."""
    timeframes: list[str] = []
    """Default: every configured timeframe."""


def backfill_job_name(settings: ExchangeSettings) -> str:
    return f"ohlcv_{settings.id}_backfill"


def resolve_request(
    settings: ExchangeSettings, request: BackfillRequest, known_markets: list[str], today: dt.date
) -> tuple[dt.date, dt.date, list[str], list[str]]:
    """(first day, last day, market keys, timeframes) of ``request``; ValueError naming the field."""
    def day(field: str, value: str, default: dt.date) -> dt.date:
        if not value:
            return default
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{settings.id} backfill: {field} {value!r} is not a date (YYYY-MM-DD)") from None

    first = day("start", request.start, settings.history_start)
    last = day("end", request.end, today)
    if first < settings.history_start or last > today or last < first:
        raise ValueError(
            f"{settings.id} backfill: days {first}..{last} must lie within {settings.history_start}..{today}, start <= end"
        )
    markets = [symbol_key(m) for m in request.markets] or known_markets
    unknown = sorted(set(markets) - set(known_markets))
    if unknown:
        raise ValueError(f"{settings.id} backfill: markets not in the market dimension: {', '.join(unknown)}")
    timeframes = list(request.timeframes) or list(settings.timeframes)
    bad = [tf for tf in timeframes if tf not in settings.timeframes]
    if bad:
        raise ValueError(f"{settings.id} backfill: timeframes not configured: {', '.join(bad)} (configured: {settings.timeframes})")
    if not markets:
        raise ValueError(f"{settings.id} backfill: the exchange has no markets yet")
    return first, last, markets, timeframes


def backfill_run_requests(
    settings: ExchangeSettings, request: BackfillRequest, known_markets: list[str], today: dt.date, request_run_id: str
) -> list[dg.RunRequest]:
    """One run request per market over the requested days and timeframes."""
    first, last, markets, timeframes = resolve_request(settings, request, known_markets, today)
    return [
        dg.RunRequest(
            run_key=f"{request_run_id}-{market}",
            asset_selection=[ohlcv_asset_key(settings.id, tf) for tf in timeframes],
            tags={**partition_range_tags(market, first, last), REQUEST_TAG: request_run_id},
        )
        for market in markets
    ]


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def ohlcv_backfill_job(settings: ExchangeSettings) -> dg.JobDefinition:
    @dg.op(name=f"request_ohlcv_{settings.id}_backfill")
    def request_backfill(context: dg.OpExecutionContext, config: BackfillRequest) -> None:
        """Checks the request (a bad date, market or timeframe fails this run, naming it)."""
        try:
            first, last, markets, timeframes = resolve_request(
                settings, config, market_keys(settings, context.instance), _today()
            )
        except ValueError as error:
            raise dg.Failure(str(error), allow_retries=False) from None
        context.log.info(
            f"{settings.id}: sensor ohlcv_{settings.id}_backfills will request {len(markets)} runs, one per market, "
            f"over {first}..{last} x {', '.join(timeframes)}"
        )

    @dg.job(
        name=backfill_job_name(settings),
        executor_def=dg.in_process_executor,  # one quick op: no child process to spawn
        description=(
            f"Backfill {settings.id} candles: run config picks the days, markets and timeframes (empty: all); "
            f"sensor ohlcv_{settings.id}_backfills then requests one ohlcv_{settings.id} run per market."
        ),
    )
    def _job() -> None:
        request_backfill()

    return _job


def ohlcv_backfill_sensor(
    settings: ExchangeSettings, request_job: dg.JobDefinition, ohlcv_job: "dg.UnresolvedAssetJobDefinition"
) -> dg.RunStatusSensorDefinition:
    @dg.run_status_sensor(
        name=f"ohlcv_{settings.id}_backfills",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[request_job],
        request_job=ohlcv_job,
        minimum_interval_seconds=sensor_interval_seconds(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"One ohlcv_{settings.id} run per market for each successful {backfill_job_name(settings)} run.",
    )
    def _sensor(context: dg.RunStatusSensorContext) -> list[dg.RunRequest]:
        op_config = context.dagster_run.run_config.get("ops", {}).get(f"request_ohlcv_{settings.id}_backfill", {})
        request = BackfillRequest(**op_config.get("config", {}))
        return backfill_run_requests(
            settings, request, market_keys(settings, context.instance), _today(), context.dagster_run.run_id
        )

    return _sensor
