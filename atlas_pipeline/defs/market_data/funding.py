"""``<exchange>/funding``: funding rate history of an entry's perpetual swaps, one partition per
UTC day x swap, fetched through ccxt, checked with Pandera, kept by the store (``market_data/funding.py``).

With ``history_source: archive`` closed months come from the exchange's monthly ``fundingRate``
files, the tail through REST, each day's source recorded (``ingest_funding``).

A run covers a rectangle of days x swaps (``BackfillPolicy.single_run()``, like the candles). A
swap whose request fails or whose events fail a blocking check stores nothing from that range;
the others are stored, and the run then fails naming the failed swaps.
"""


import warnings
from collections.abc import Iterator

import dagster as dg

from atlas_pipeline.config import ExchangeSettings
from atlas_pipeline.defs.market_data.assets import (
    MARKET_DATA_GROUP,
    _days_by_symbol,
    add_partition_metadata,
    exchange_archive,
    exchange_connection,
)
from atlas_pipeline.defs.market_data.checks import check_results
from atlas_pipeline.defs.market_data.partitions import DATE, SYMBOL, ohlcv_partitions, swap_markets
from atlas_pipeline.defs.resources import CandleStoreResource
from atlas_pipeline.market_data.candles import symbol_key
from atlas_pipeline.market_data.exchange_client import ExchangeClient
from atlas_pipeline.market_data.funding import FUNDING_BLOCKING_CHECKS, MISSING_FUNDING_CHECK, ingest_funding
from atlas_pipeline.market_data.ingest import IngestReport, IngestRequestFailed
from atlas_pipeline.market_data.sources.binance_archive import FUNDING_RATE
from atlas_pipeline.market_data.store import FUNDING_RATES

CHECK_DESCRIPTIONS = {
    "funding_schema": "Columns timestamp (int ms) and rate (float within +-100 %).",
    "funding_grid": "Funding times on the exchange's grid (Binance: every 8 h from 00:00 UTC).",
    "unique_funding_times": "One event per funding time.",
    "inside_partition": "Every funding time lies inside the partition's UTC day.",
    MISSING_FUNDING_CHECK: "Warns with the count of grid times after the listing without a funding event.",
}


def funding_asset_key(exchange: str) -> dg.AssetKey:
    """``<exchange>/funding`` (the last part is the node's label in the UI graph)."""
    return dg.AssetKey([exchange, "funding"])


def build_funding_asset(settings: ExchangeSettings) -> dg.AssetsDefinition:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # single_run(), as for the candles
        return _funding_asset(settings)


def _funding_asset(settings: ExchangeSettings) -> dg.AssetsDefinition:
    key = funding_asset_key(settings.id)
    swaps = {symbol_key(m): m for m in swap_markets(settings)}
    specs = [dg.AssetCheckSpec(n, asset=key, blocking=True, description=CHECK_DESCRIPTIONS[n]) for n in FUNDING_BLOCKING_CHECKS]
    specs.append(dg.AssetCheckSpec(MISSING_FUNDING_CHECK, asset=key, blocking=False, description=CHECK_DESCRIPTIONS[MISSING_FUNDING_CHECK]))

    @dg.asset(
        key=key,
        partitions_def=ohlcv_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        check_specs=specs,
        group_name=MARKET_DATA_GROUP,
        kinds={"ccxt", "parquet"},
        description=(
            f"Funding rate history of {settings.id}'s perpetual swaps (history: "
            f"{settings.effective_archive_url or 'REST'}{' monthly fundingRate files, REST for the tail' if settings.effective_archive_url else ''}) "
            "via ccxt (fetch_funding_rate_history), stored as Parquet by the store. Partitioned by UTC day x swap."
        ),
        metadata={"exchange": settings.id, "markets": ", ".join(swaps.values())},
    )
    def funding(context: dg.AssetExecutionContext, candle_store: CandleStoreResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        store = candle_store.get_store(FUNDING_RATES)
        client = ExchangeClient(exchange_connection(settings), log=context.log)
        archive = exchange_archive(settings, context.log, FUNDING_RATE)
        reports: list[IngestReport] = []
        for partition, days in _days_by_symbol(context).items():
            symbol = swaps.get(partition)
            if symbol is None:
                raise dg.Failure(
                    f"{key.to_user_string()}: {partition} is not a perpetual swap of {settings.id}; funding rates "
                    f"exist for swaps only ({', '.join(swaps.values())})",
                    allow_retries=False,
                )
            context.log.info(f"{settings.id} {symbol} funding: {len(days)} days, {days[0]}..{days[-1]}")
            try:
                reports.append(ingest_funding(client, store, symbol, days, log=context.log, archive=archive))
            except IngestRequestFailed as failure:
                reports.append(failure.report)
        yield from check_results(key, reports, blocking=FUNDING_BLOCKING_CHECKS, gaps_check=MISSING_FUNDING_CHECK)
        failed = [r for r in reports if not r.succeeded]
        if failed:
            raise dg.Failure(
                description=f"{settings.id} funding: {len(failed)} of {len(reports)} swaps failed: "
                + "; ".join(r.failure_summary() for r in failed),
                allow_retries=False,
            )
        add_partition_metadata(context, {
            str(dg.MultiPartitionKey({DATE: day.day.isoformat(), SYMBOL: symbol_key(report.symbol)})): {
                "events": day.rows, "missing_events": day.missing, "complete_day": day.complete, "source": day.source or "kept",
            }
            for report in reports
            for day in report.days
        })
        yield dg.MaterializeResult(
            metadata={
                "markets": ", ".join(r.symbol for r in reports),
                "archive_files": sum(r.archive_files for r in reports),
                "events": sum(r.candles for r in reports),
                "missing_events": sum(r.missing for r in reports),
                "requests": sum(r.requests for r in reports),
            }
        )

    return funding
