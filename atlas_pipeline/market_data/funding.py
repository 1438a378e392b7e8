"""Funding rate history of perpetual swaps: fetch through ccxt, validate with Pandera, store by day.

A funding frame has ``timestamp`` (the funding time, int ms UTC) and ``rate`` (float; positive:
longs pay shorts). It is kept in the store's ``FUNDING_RATES`` dataset by (exchange, symbol,
interval, day), the interval (Binance: ``8h``) standing where candles have their timeframe.

Blocking checks (a bad answer never replaces stored events): ``funding_schema`` (columns,
dtypes, a rate within +-100 %), ``funding_grid`` (times on the exchange's grid: multiples of
the interval), ``unique_funding_times``, ``inside_partition``. Missing events (a grid time after
the listing and before now without one) are a warning, ``missing_funding_events``: the backtest
of a period that lacks them fails its own blocking check instead, naming the range.

A day is complete once it has ended; days before the market's listing (ccxt ``created``,
Binance's ``onboardDate``) are stored empty and complete without a request.

Sources: with an archive (``history_source: archive``), the days of closed months come from the
exchange's checksummed monthly ``fundingRate`` files (``archive_plan``), the rest (the month not
published yet, a month the archive answers 404 for) through ccxt. Every stored day records its
source (``rest`` or ``archive:<path>#<sha256>``) in the store's footer, as candles do; the
blocking checks are the same whatever the source.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from atlas_pipeline.market_data.archive_plan import REST, fetch_from_archive
from atlas_pipeline.market_data.candles import (
    DAY_MS,
    consecutive_ranges,
    day_start_ms,
    split_by_day,
    timeframe_ms,
)
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeRequestError, Logger
from atlas_pipeline.market_data.ingest import DayReport, IngestReport, IngestRequestFailed, exchange_wide_failure
from atlas_pipeline.market_data.sources.binance_archive import ArchiveError, BinanceArchive
from atlas_pipeline.market_data.store import FUNDING_RATES, CandleStore
from atlas_pipeline.market_data.validation import CheckOutcome, row_check, run_checks

FUNDING_INTERVALS = {"binance": "8h"}
"""Each exchange's funding grid (Binance USDⓈ-M: 00:00, 08:00, 16:00 UTC)."""
FUNDING_BLOCKING_CHECKS = ("funding_schema", "funding_grid", "unique_funding_times", "inside_partition")
MISSING_FUNDING_CHECK = "missing_funding_events"


def funding_interval(exchange_id: str) -> str:
    try:
        return FUNDING_INTERVALS[exchange_id]
    except KeyError:
        raise ValueError(f"no funding interval known for {exchange_id!r} (perpetual swaps: {sorted(FUNDING_INTERVALS)})") from None


class FundingSchema(pa.DataFrameModel):
    """Funding time in UTC ms, a rate within +-100 % (Binance caps at a few %)."""

    timestamp: Series[np.int64] = pa.Field(ge=0)
    rate: Series[np.float64] = pa.Field(ge=-1, le=1)

    class Config:
        strict = True
        coerce = False


def funding_schemas(interval: str, start_ms: int, end_ms: int) -> dict[str, pa.DataFrameSchema]:
    step = timeframe_ms(interval)
    return {
        "funding_schema": FundingSchema.to_schema(),
        "funding_grid": row_check("funding_grid", lambda df: df["timestamp"] % step == 0, f"funding times on the {interval} grid"),
        "unique_funding_times": row_check(
            "unique_funding_times", lambda df: ~df["timestamp"].duplicated(keep=False), "one event per funding time"
        ),
        "inside_partition": row_check(
            "inside_partition",
            lambda df: (df["timestamp"] >= start_ms) & (df["timestamp"] < end_ms),
            "funding times inside the partitions' days",
        ),
    }


def validate_funding(frame: pd.DataFrame, interval: str, start_ms: int, end_ms: int) -> list[CheckOutcome]:
    """Every blocking funding check, in ``FUNDING_BLOCKING_CHECKS`` order."""
    return run_checks(frame, funding_schemas(interval, start_ms, end_ms))


def missing_events(frame: pd.DataFrame, interval: str, days: list[dt.date], listed_ms: int | None, now_ms: int) -> dict[dt.date, int]:
    """Grid times per day after the listing and up to now with no event."""
    step = timeframe_ms(interval)
    have = set(frame["timestamp"].astype("int64").tolist()) if len(frame) else set()
    out: dict[dt.date, int] = {}
    for day in days:
        lo = max(day_start_ms(day), listed_ms if listed_ms is not None else now_ms + 1)
        lo = -(-lo // step) * step
        hi = min(day_start_ms(day) + DAY_MS, now_ms + 1)
        out[day] = sum(1 for t in range(lo, hi, step) if t not in have) if hi > lo else 0
    return out


def empty_funding() -> pd.DataFrame:
    return FUNDING_RATES.empty()


def ingest_funding(
    client: ExchangeClient,
    store: CandleStore,
    symbol: str,
    days: Iterable[dt.date],
    *,
    full_refresh: bool = False,
    log: Logger | None = None,
    archive: BinanceArchive | None = None,
) -> IngestReport:
    """Fetch, validate and store the funding events of ``days`` of one swap (module docstring).

    ``store`` is a ``CandleStore`` of the ``FUNDING_RATES`` dataset. Nothing is written unless
    every blocking check passes; a request or archive file that fails for good raises
    ``IngestRequestFailed``. ``archive``: the exchange's public archive (None: REST only)."""
    log = log or client.log
    exchange = client.connection.exchange_id
    interval = funding_interval(exchange)
    wanted = sorted(set(days))
    report = IngestReport(exchange, symbol, interval, days=[], checks=[])
    before = client.requests_made, client.retries_made
    started = time.perf_counter()
    now = client.now_ms()
    try:
        client.check_market(symbol)
        market = client.load_markets()[symbol]
        created = market.get("created")
    except ExchangeRequestError as error:
        report.error, report.failed_from = str(error), wanted[0]
        raise IngestRequestFailed(report, exchange_wide_failure(client, error)) from error
    listed = int(created) if isinstance(created, int) and created > 0 else None
    report.first_candle = listed
    stored = {s.day: s for s in store.coverage(exchange, symbol, interval, wanted[0], wanted[-1] + dt.timedelta(days=1)).itertuples(index=False)}
    frames: dict[dt.date, pd.DataFrame] = {}
    to_fetch = []
    for day in wanted:
        status = stored.get(day)
        if status is not None and status.complete and not full_refresh:
            continue
        if listed is not None and day_start_ms(day) + DAY_MS <= listed:
            frames[day] = empty_funding()
        else:
            to_fetch.append(day)
    sources: dict[dt.date, str] = {}
    source = archive.for_market(market) if archive is not None and to_fetch else None
    if source is not None:
        try:
            got = fetch_from_archive(source, market["id"], interval, to_fetch, now + 1, log)
        except ArchiveError as error:
            report.error, report.failed_from = str(error), to_fetch[0]
            log.warning(report.failure_summary())
            raise IngestRequestFailed(report, exchange_wide_failure(client, error)) from error
        frames.update(got.frames)
        sources.update(got.sources)
        to_fetch = got.rest_days
        report.archive_files, report.archive_candles = got.files, got.candles
        log.info(
            f"{exchange} {symbol} funding: {got.files} archive files verified, {got.candles:,} events "
            f"({len(got.frames)} days); {len(to_fetch)} days from REST"
        )
    for first, end in consecutive_ranges(to_fetch):
        try:
            result = client.fetch_funding(symbol, day_start_ms(first), min(day_start_ms(end), now + 1))
        except ExchangeRequestError as error:
            report.error, report.failed_from = str(error), first
            log.warning(report.failure_summary())
            raise IngestRequestFailed(report, exchange_wide_failure(client, error)) from error
        by_day = split_by_day(result.candles)
        for day in pd.date_range(first, end, inclusive="left").date:
            frames[day] = by_day.get(day, empty_funding())
        log.info(f"{exchange} {symbol} funding {first}..{end}: {len(result.candles):,} events in {result.requests} requests")
    kept = [day for day in wanted if day not in frames]
    everything = pd.concat([frames[d] for d in frames] or [empty_funding()], ignore_index=True)
    lo, hi = day_start_ms(wanted[0]), day_start_ms(wanted[-1]) + DAY_MS
    report.checks = validate_funding(everything.astype(FUNDING_RATES.dtypes), interval, lo, hi)
    if kept:
        everything = pd.concat([everything, store.read(exchange, symbol, interval, min(kept), max(kept) + dt.timedelta(days=1))])
    missing = missing_events(everything, interval, wanted, listed, now)
    complete = {day: day_start_ms(day) + DAY_MS <= now + 1 for day in wanted}
    rows = everything.groupby(everything["timestamp"] // DAY_MS).size() if len(everything) else pd.Series(dtype="int64")
    for day in wanted:
        day_rows = int(rows.get(day_start_ms(day) // DAY_MS, 0))
        day_frame = frames.get(day)
        stamps = day_frame["timestamp"] if day_frame is not None and len(day_frame) else None
        report.days.append(
            DayReport(day, day_rows, missing[day], complete[day], day in frames,
                      int(stamps.iloc[0]) if stamps is not None else None, int(stamps.iloc[-1]) if stamps is not None else None,
                      sources.get(day, REST) if day in frames else None)
        )
    if not report.passed:
        report.failed_from = wanted[0]
        log.warning(report.failure_summary())
    elif frames:
        store.write_days(
            exchange, symbol, interval, dict(sorted(frames.items())), complete={d: complete[d] for d in frames},
            sources={d: sources.get(d, REST) for d in frames},
        )
        report.written = True
    report.requests, report.retries = client.requests_made - before[0], client.retries_made - before[1]
    report.seconds["total"] = time.perf_counter() - started
    return report


def stored_funding(store_root: str, exchange: str, symbol: str, start: object, end: object) -> pd.DataFrame:
    """Stored funding events of one swap with funding time in ``[start, end)``."""
    return CandleStore(store_root, FUNDING_RATES).read(exchange, symbol, funding_interval(exchange), start, end)
