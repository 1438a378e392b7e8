"""``ohlcv/<exchange>/<timeframe>``: candles of every configured market, one partition per day.

A backfill runs once per market over its whole date range (``BackfillPolicy.single_run()``): the
asset reads the rectangle of partition keys, lets ``ingest_days`` fetch each market's range in
as few requests as possible, and records per-day metadata on each partition. The candle store,
not an IO manager, writes the data (IO managers cannot store multi-partition range outputs).

Active universe: a market that ``config/exchange_metadata.yaml`` (written by
``exchange_metadata/<exchange>``) flags as no longer listed or inactive is skipped with a logged
reason: no request, no failure, and its stored candles stay as they are. The partitions stay in
the asset (removing them would hide the history), and the run still succeeds.
"""


import datetime as dt
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from atlas_pipeline.config import ExchangeSettings
from atlas_pipeline.defs.market_data.checks import check_results, ohlcv_check_specs
from atlas_pipeline.defs.market_data.partitions import DATE, SYMBOL, ohlcv_partitions, symbols_by_key
from atlas_pipeline.defs.resources import CandleStoreResource
from atlas_pipeline.market_data.candles import ms_to_iso, symbol_key
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection
from atlas_pipeline.market_data.exchange_metadata import flagged_markets
from atlas_pipeline.market_data.ingest import IngestReport, ingest_days

MARKET_DATA_GROUP = "market_data"


class OhlcvRunConfig(dg.Config):
    """Run options for OHLCV materializations."""

    full_refresh: bool = False
    """Refetch days already stored complete (default: keep them and fetch only what is missing)."""


def ohlcv_asset_key(exchange: str, timeframe: str) -> dg.AssetKey:
    return dg.AssetKey(["ohlcv", exchange, timeframe])


def exchange_connection(settings: ExchangeSettings) -> ExchangeConnection:
    return ExchangeConnection(
        exchange_id=settings.id,
        api_url=settings.api_url,
        timeout_seconds=settings.timeout_seconds,
        request_limit=settings.effective_request_limit,
        min_request_interval_ms=settings.min_request_interval_ms,
        max_retries=settings.max_retries,
        credentials=settings.credentials(),
    )


def build_ohlcv_asset(
    settings: ExchangeSettings, timeframe: str, metadata_file: Path | None = None
) -> dg.AssetsDefinition:
    """``metadata_file``: the ``exchange_metadata.yaml`` whose flagged markets runs skip (None: none)."""
    key = ohlcv_asset_key(settings.id, timeframe)
    symbols = symbols_by_key(settings)

    with warnings.catch_warnings():
        # single_run() is the settled backfill design (DESIGN.md section 3); its beta label is noise.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _ohlcv_asset(settings, timeframe, key, symbols, metadata_file)


def _ohlcv_asset(
    settings: ExchangeSettings,
    timeframe: str,
    key: dg.AssetKey,
    symbols: dict[str, str],
    metadata_file: Path | None,
) -> dg.AssetsDefinition:
    @dg.asset(
        key=key,
        partitions_def=ohlcv_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=ohlcv_check_specs(key),
        group_name=MARKET_DATA_GROUP,
        kinds={"ccxt", "parquet"},
        description=(
            f"{timeframe} OHLCV candles from {settings.id} via ccxt, stored as Parquet by the "
            "candle store. Partitioned by UTC day x market; days before a market's first candle "
            "are stored empty."
        ),
        metadata={
            "exchange": settings.id,
            "timeframe": timeframe,
            "markets": ", ".join(settings.markets) if settings.universe is None else f"universe: {settings.universe}",
        },
    )
    def ohlcv(
        context: dg.AssetExecutionContext, config: OhlcvRunConfig, candle_store: CandleStoreResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        days_by_symbol = _days_by_symbol(context)
        store = candle_store.get_store()
        client = ExchangeClient(exchange_connection(settings), log=context.log)
        reports: list[IngestReport] = []
        # a universe entry's markets are known at run time only (exchange_metadata.yaml)
        markets = symbols if settings.universe is None else symbols_by_key(settings, metadata_file)
        flagged = flagged_markets(settings.id, list(markets.values()), metadata_file) if metadata_file else {}
        skipped: list[str] = []
        for symbol_partition, days in days_by_symbol.items():
            symbol = markets.get(symbol_partition)
            if symbol is None:
                raise dg.Failure(
                    f"{settings.id}: market partition {symbol_partition!r} is not in {metadata_file} "
                    f"(materialize exchange_metadata/{settings.id} first)",
                    allow_retries=False,
                )
            if symbol in flagged:
                context.log.warning(
                    f"{settings.id} {symbol} {timeframe}: skipped, not in the active universe: {flagged[symbol]} "
                    "(per exchange_metadata.yaml; stored candles are kept)"
                )
                skipped.append(symbol)
                continue
            context.log.info(f"{settings.id} {symbol} {timeframe}: {len(days)} days, {days[0]}..{days[-1]}")
            report = ingest_days(client, store, symbol, timeframe, days, full_refresh=config.full_refresh, log=context.log)
            reports.append(report)
            if not report.passed:
                break
        yield from check_results(key, reports)
        failed = [report for report in reports if not report.passed]
        if failed:
            raise dg.Failure(
                description=(
                    "candles failed blocking checks: "
                    + "; ".join(report.failure_summary() for report in failed)
                ),
                allow_retries=False,
            )
        partitions = sum(len(report.days) for report in reports)
        context.log.info(f"{settings.id} {timeframe}: recording {partitions:,} partition materializations in Dagster")
        _add_partition_metadata(context, reports)
        yield dg.MaterializeResult(metadata={**_run_metadata(reports), "skipped_markets": ", ".join(skipped)})

    return ohlcv


def _days_by_symbol(context: dg.AssetExecutionContext) -> dict[str, list[dt.date]]:
    """The run's partitions as market -> sorted days (a backfill gives a rectangle)."""
    days: dict[str, list[dt.date]] = defaultdict(list)
    for key in context.partition_keys:
        parts = _dimensions(key)
        days[parts[SYMBOL]].append(dt.date.fromisoformat(parts[DATE]))
    return {symbol: sorted(values) for symbol, values in sorted(days.items())}


def _dimensions(key: str) -> dict[str, str]:
    if isinstance(key, dg.MultiPartitionKey):
        return key.keys_by_dimension
    date, symbol = key.split("|")  # MultiPartitionKey's string form orders dimensions by name
    return {DATE: date, SYMBOL: symbol}


def _add_partition_metadata(context: dg.AssetExecutionContext, reports: list[IngestReport]) -> None:
    """Per-day metadata (candles, missing, first/last) on each partition's materialization."""
    by_partition = {
        str(dg.MultiPartitionKey({DATE: day.day.isoformat(), SYMBOL: symbol_key(report.symbol)})): {
            "candles": day.rows,
            "missing_candles": day.missing,
            "complete_day": day.complete,
            "fetched": day.fetched,
            "first_candle": _iso(day.first_timestamp),
            "last_candle": _iso(day.last_timestamp),
        }
        for report in reports
        for day in report.days
    }
    add_partition_metadata(context, by_partition)


def add_partition_metadata(context: dg.AssetExecutionContext, by_partition: dict[str, dict[str, object]]) -> None:
    """``context.add_asset_metadata(partition_key=...)`` for many partitions at once.

    The public call re-derives the run's whole partition range on every call: measured 14 ms per
    partition at 1,000 partitions and growing, i.e. minutes for a 9-year backfill. The keys here
    come from ``context.partition_keys``, so the check it repeats is moot; this adds them to the
    same accumulator in one step, falling back to the public call if Dagster's internals move.
    """
    try:
        from dagster._core.execution.context.metadata_logging import AssetMetadataHandle, OutputMetadataAccumulator

        step_context = context.op_execution_context._step_execution_context  # noqa: SLF001
        current = step_context._metadata_accumulator  # noqa: SLF001
        added = {
            AssetMetadataHandle(asset_key=context.asset_key, partition_key=key): {
                **current.get_asset_metadata(context.asset_key, key),
                **metadata,
            }
            for key, metadata in by_partition.items()
        }
        step_context._metadata_accumulator = OutputMetadataAccumulator(  # noqa: SLF001
            per_output_metadata={**current.per_output_metadata, **added}
        )
    except (ImportError, AttributeError):
        for key, metadata in by_partition.items():
            context.add_asset_metadata(metadata, partition_key=key)


def _run_metadata(reports: list[IngestReport]) -> dict[str, object]:
    firsts = [d.first_timestamp for r in reports for d in r.days if d.first_timestamp is not None]
    lasts = [d.last_timestamp for r in reports for d in r.days if d.last_timestamp is not None]
    seconds: dict[str, float] = defaultdict(float)
    for report in reports:
        for stage, value in report.seconds.items():
            seconds[stage] += value
    return {
        "markets": ", ".join(r.symbol for r in reports),
        "days": sum(len(r.days) for r in reports),
        "days_fetched": sum(1 for r in reports for d in r.days if d.fetched),
        "candles_written": sum(r.candles_fetched for r in reports if r.written),
        "candles_in_range": sum(r.candles for r in reports),
        "requests": sum(r.requests for r in reports),
        "retries": sum(r.retries for r in reports),
        "first_candle": _iso(min(firsts) if firsts else None),
        "last_candle": _iso(max(lasts) if lasts else None),
        "missing_candles": sum(r.missing for r in reports),
        **{f"seconds_{stage}": round(value, 3) for stage, value in seconds.items()},
    }


def _iso(ms: int | None) -> str:
    return "" if ms is None else ms_to_iso(ms)
