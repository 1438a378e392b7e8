"""Bring a market's stored days up to date: plan, fetch in few requests, validate, write atomically.

This is the whole data path of one OHLCV materialization, as plain Python so the Dagster asset,
the CLI and notebooks share it. For each requested day it decides what is needed:

- days stored complete are kept (unless ``full_refresh``): no request;
- days stored partial (today's, or one cut short) are fetched from the candle after the last
  stored one and merged (the delta update);
- days before the market's first candle are stored empty and complete, with no request (the
  cached first candle is checked with the exchange before it is trusted for that);
- everything else is fetched: with an archive (``archive_plan``), closed months and days from the
  exchange's checksummed public archive files and the rest (the tail it lacks yet, and what it
  answers 404 for) through REST; consecutive REST days in one paged range.

Every stored day records its source (``rest`` or ``archive:<path>#<sha256>``) in the store.

Long ranges go in chunks of at most ``CHUNK_CANDLES`` candles (whole months): each chunk is
fetched, validated and written before the next starts, so memory stays bounded, progress is
logged per chunk, and an interrupted backfill keeps every chunk it wrote (a rerun finds those
days complete and continues after them). Nothing of a chunk is written unless every blocking check
passes on all its days, so a bad answer from the exchange never replaces good stored candles;
the first failing chunk ends the ingest. A request that still fails after its retries ends it the
same way, raising ``IngestRequestFailed`` with the report of what was stored before it, so a
caller ingesting many markets can record those days and go on with the next market.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import ccxt
import pandas as pd

from atlas_pipeline import progress
from atlas_pipeline.market_data.archive_plan import REST, fetch_from_archive
from atlas_pipeline.market_data.candles import (
    DAY_MS,
    candles_per_day,
    day_of_ms,
    day_start_ms,
    empty_candles,
    ms_to_iso,
    normalize_candles,
    split_by_day,
    timeframe_ms,
)
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeRequestError, Logger
from atlas_pipeline.market_data.sources.binance_archive import ArchiveError, BinanceArchive
from atlas_pipeline.market_data.store import CandleStore
from atlas_pipeline.market_data.validation import CheckOutcome, missing_candles, validate_candles


@dataclass(frozen=True)
class DayReport:
    day: dt.date
    rows: int
    missing: int
    complete: bool
    fetched: bool
    first_timestamp: int | None
    last_timestamp: int | None
    source: str | None = None
    """Where a fetched day came from (``rest``, ``archive:<path>#<sha256>``); None for a kept day."""


@dataclass
class IngestReport:
    """What one ingest of one market did.

    ``written``: some chunk was written. ``failed_from``: the first day of the chunk that failed a
    blocking check or whose request failed (nothing from it on was written; the chunks before it
    were). ``error``: that request's error (None: a check failed, or nothing failed)."""

    exchange: str
    symbol: str
    timeframe: str
    days: list[DayReport]
    checks: list[CheckOutcome]
    requests: int = 0
    retries: int = 0
    first_candle: int | None = None
    written: bool = False
    failed_from: dt.date | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    archive_files: int = 0
    archive_candles: int = 0

    @property
    def passed(self) -> bool:
        """Every blocking check passed on the candles checked (a request error is not a check)."""
        return all(check.passed for check in self.checks)

    @property
    def succeeded(self) -> bool:
        """Every requested day was fetched or kept, checked and stored."""
        return self.passed and self.error is None

    @property
    def stored_days(self) -> list[DayReport]:
        """The requested days validated and stored (or kept) by this ingest: all of them, or those
        before ``failed_from``. Only these may be recorded as materialized."""
        return [day for day in self.days if self.failed_from is None or day.day < self.failed_from]

    @property
    def candles(self) -> int:
        return sum(day.rows for day in self.days)

    @property
    def candles_fetched(self) -> int:
        return sum(day.rows for day in self.days if day.fetched)

    @property
    def missing(self) -> int:
        return sum(day.missing for day in self.days)

    def failure_summary(self) -> str:
        failed = "; ".join(check.describe() for check in self.checks if not check.passed)
        if self.error is not None:
            failed = f"request failed: {self.error}"
        kept = f" (days before {self.failed_from} were stored)" if self.stored_days else ""
        return f"{self.exchange} {self.symbol} {self.timeframe}: {failed}; nothing written from {self.failed_from} on{kept}"


class IngestRequestFailed(ExchangeRequestError):
    """A request of ``ingest_days`` failed for good: ``report`` holds the days stored before it.
    ``exchange_wide``: why other markets would fail the same way (None: only this market failed)."""

    def __init__(self, report: IngestReport, exchange_wide: str | None = None) -> None:
        super().__init__(report.error or "request failed")
        self.report = report
        self.exchange_wide = exchange_wide


def exchange_wide_failure(client: ExchangeClient, error: BaseException) -> str | None:
    """Why a request that failed for good means the exchange itself fails, not only one market.

    Its market list never loaded (unreachable, down): every market would fail the same way, each
    after its own retries. A rate limit or ban that outlasted the retries: requests for other
    markets would only meet it again, and during a ban lengthen it."""
    if not getattr(client.exchange, "markets", None):
        return f"{client.connection.exchange_id} could not load its markets"
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (ccxt.DDoSProtection, ccxt.RateLimitExceeded)):
            return f"{client.connection.exchange_id} is rate limiting or banning requests"
        cause = cause.__cause__
    return None


@dataclass(frozen=True)
class _Fetch:
    """One paged request range covering consecutive days."""

    start_ms: int
    end_ms: int
    days: tuple[dt.date, ...]


CHUNK_CANDLES = 100_000
"""Most candles one chunk holds (whole months, at least one): 1m backfills go two months at a
time (~90k candles, a few tens of MB in flight), 1h backfills since 2017 in one chunk."""


def ingest_days(
    client: ExchangeClient,
    store: CandleStore,
    symbol: str,
    timeframe: str,
    days: Iterable[dt.date],
    *,
    full_refresh: bool = False,
    log: Logger | None = None,
    archive: BinanceArchive | None = None,
) -> IngestReport:
    """Fetch, validate and store ``days`` of one market; see the module docstring for the rules.
    ``archive``: the exchange's public archive to take closed months and days from (None: REST only)."""
    log = log or client.log
    exchange = client.connection.exchange_id
    wanted = sorted(set(days))
    requests_before, retries_before = client.requests_made, client.retries_made
    started = time.perf_counter()
    closed_before = _closed_before(client.now_ms(), timeframe_ms(timeframe))
    report = IngestReport(exchange, symbol, timeframe, days=[], checks=[])
    try:
        first = report.first_candle = _verified_first_candle(client, store, symbol, timeframe, wanted[0], log)
    except ExchangeRequestError as error:
        _request_failed(client, report, wanted[0], error, requests_before, retries_before, log)
    report.seconds["plan"] = time.perf_counter() - started

    chunks = _chunks(wanted, timeframe)
    began = time.monotonic()
    label = f"{exchange} {symbol} {timeframe}"
    for number, chunk in enumerate(chunks, 1):
        done_before = len(report.days)

        def on_progress(days_done: float, done_before: int = done_before) -> None:
            progress.report(label, done_before + days_done, len(wanted), "days")

        try:
            _ingest_chunk(
                client, store, symbol, timeframe, chunk, report, first, closed_before, full_refresh, log, on_progress, archive
            )
        except (ExchangeRequestError, ArchiveError) as error:
            _request_failed(client, report, chunk[0], error, requests_before, retries_before, log)
        if not report.passed:
            report.failed_from = chunk[0]
            log.warning(report.failure_summary())
            break
        progress.report(label, len(report.days), len(wanted), "days")
        if len(chunks) > 1:
            done = len(report.days) / len(wanted)
            elapsed = time.monotonic() - began
            log.info(
                f"{exchange} {symbol} {timeframe}: chunk {number}/{len(chunks)} {chunk[0]}..{chunk[-1]} stored; "
                f"{len(report.days):,}/{len(wanted):,} days ({done:.0%}), {report.candles:,} candles, "
                f"{elapsed:.0f} s, ETA {elapsed / done - elapsed:.0f} s"
            )
    report.requests = client.requests_made - requests_before
    report.retries = client.retries_made - retries_before
    return report


def _request_failed(
    client: ExchangeClient,
    report: IngestReport,
    failed_from: dt.date,
    error: ExchangeRequestError | ArchiveError,
    requests_before: int,
    retries_before: int,
    log: Logger,
) -> None:
    """End the ingest on a request that failed for good: nothing from ``failed_from`` on is written."""
    report.error, report.failed_from = str(error), failed_from
    report.requests = client.requests_made - requests_before
    report.retries = client.retries_made - retries_before
    log.warning(report.failure_summary())
    raise IngestRequestFailed(report, exchange_wide_failure(client, error)) from error


def _verified_first_candle(
    client: ExchangeClient, store: CandleStore, symbol: str, timeframe: str, since: dt.date, log: Logger
) -> int | None:
    """The market's first candle, from the store's cache only when nothing depends on it.

    Days before the first candle are stored empty and complete without a request, so a cached
    value later than the truth would lose those days for good: whenever requested days start
    before the cached value, the exchange is asked again (one request) and the cache corrected.
    """
    exchange = client.connection.exchange_id
    cached = store.first_candle(exchange, symbol, timeframe)
    if cached is not None and cached <= day_start_ms(since):
        return cached
    first = client.first_candle(symbol, timeframe)
    if first is not None and first != cached:
        if cached is not None:
            log.warning(
                f"{exchange} {symbol} {timeframe}: cached first candle {ms_to_iso(cached)} differs from the "
                f"exchange's {ms_to_iso(first)}; cache corrected"
            )
        store.set_first_candle(exchange, symbol, timeframe, first)
    return first


def _chunks(days: list[dt.date], timeframe: str) -> list[list[dt.date]]:
    """``days`` cut at month boundaries into runs of at most ``CHUNK_CANDLES`` candles."""
    per_day = candles_per_day(timeframe)
    chunks: list[list[dt.date]] = []
    for _, month in itertools.groupby(days, key=lambda day: (day.year, day.month)):
        month_days = list(month)
        if chunks and (len(chunks[-1]) + len(month_days)) * per_day <= CHUNK_CANDLES:
            chunks[-1].extend(month_days)
        else:
            chunks.append(month_days)
    return chunks


def _ingest_chunk(
    client: ExchangeClient,
    store: CandleStore,
    symbol: str,
    timeframe: str,
    wanted: list[dt.date],
    report: IngestReport,
    first: int | None,
    closed_before: int,
    full_refresh: bool,
    log: Logger,
    on_progress: Callable[[float], None] | None = None,
    archive: BinanceArchive | None = None,
) -> None:
    """Plan, fetch, merge, validate and write one chunk; adds its days and checks to ``report``.
    ``on_progress(days)``: how many of the chunk's days are fetched so far, after every page.

    Days of a corrupt file in the chunk that lie outside it are fetched and written too (not
    reported: they are not this run's partitions), so quarantining the file loses none of them."""
    exchange = client.connection.exchange_id
    tf_ms = timeframe_ms(timeframe)
    timings = report.seconds
    listed_from = first if first is not None else closed_before

    started = time.perf_counter()
    stored, restore = _stored_days(store, exchange, symbol, timeframe, wanted, closed_before, log)
    requested, wanted = wanted, sorted({*wanted, *restore})
    frames: dict[dt.date, pd.DataFrame] = {}
    to_fetch: list[tuple[dt.date, int]] = []  # (day, fetch from ms)
    for day in wanted:
        start, end = day_start_ms(day), day_start_ms(day) + DAY_MS
        status = stored.get(day)
        if status is not None and status.complete and not full_refresh:
            continue
        if end <= listed_from or start >= closed_before:
            frames[day] = empty_candles()
        elif status is not None and status.rows and not full_refresh and status.last_timestamp is not None:
            to_fetch.append((day, int(status.last_timestamp) + tf_ms))
        else:
            to_fetch.append((day, max(start, listed_from)))
    _add_time(timings, "plan", started)

    sources: dict[dt.date, str] = {}
    whole = [day for day, since in to_fetch if since == max(day_start_ms(day), listed_from)] if archive is not None else []
    if whole:
        client.check_market(symbol)
        market = client.exchange.market(symbol)
        source = archive.for_market(market)  # a swap's files are futures files
        if source is not None:
            got = fetch_from_archive(source, market["id"], timeframe, whole, closed_before, log)
            frames.update(got.frames)
            sources.update(got.sources)
            to_fetch = [(day, since) for day, since in to_fetch if day not in got.frames]
            report.archive_files += got.files
            report.archive_candles += got.candles
            timings["archive"] = timings.get("archive", 0.0) + got.seconds
            if got.files:
                log.info(
                    f"{exchange} {symbol} {timeframe}: {got.files} archive files verified, {got.candles:,} candles "
                    f"({len(got.frames)} days); {len(to_fetch)} days from REST"
                )

    started = time.perf_counter()
    fetches = _group(to_fetch, closed_before)
    position = {day: i for i, day in enumerate(wanted)}
    for number, fetch in enumerate(fetches, 1):
        page_seen = None
        if on_progress is not None:
            offset, fetch_start = position[fetch.days[0]], fetch.start_ms

            def page_seen(newest_ms: int, offset: int = offset, fetch_start: int = fetch_start) -> None:
                on_progress(offset + max(0, newest_ms + tf_ms - fetch_start) / DAY_MS)

        result = client.fetch_range(symbol, timeframe, fetch.start_ms, fetch.end_ms, on_page=page_seen)
        by_day = split_by_day(result.candles)
        for day in fetch.days:
            frames[day] = by_day.get(day, empty_candles())
        log.info(
            f"{exchange} {symbol} {timeframe}: range {number}/{len(fetches)} "
            f"{fetch.days[0]}..{fetch.days[-1]}: {len(result.candles):,} candles in {result.requests} requests"
        )
    _add_time(timings, "fetch", started)

    started = time.perf_counter()
    delta_days = [day for day, since in to_fetch if since > max(day_start_ms(day), listed_from)]
    for day in delta_days:
        previous = store.read_day(exchange, symbol, timeframe, day)
        if previous is not None and len(previous):
            frames[day] = normalize_candles(pd.concat([previous, frames[day]], ignore_index=True))
    kept = [day for day in wanted if day not in frames]
    if kept:
        kept_frames = split_by_day(store.read(exchange, symbol, timeframe, min(kept), max(kept) + dt.timedelta(days=1)))
        for day in kept:
            frames[day] = kept_frames.get(day, empty_candles())
    _add_time(timings, "merge", started)

    started = time.perf_counter()
    everything = _concat([frames[day] for day in wanted])
    range_start, range_end = day_start_ms(wanted[0]), day_start_ms(wanted[-1]) + DAY_MS
    report.checks = validate_candles(everything, timeframe, range_start, range_end)
    missing = missing_candles(everything, timeframe, wanted, first_candle_ms=first, closed_before_ms=closed_before)
    _add_time(timings, "validate", started)

    refreshed = {day for day in wanted if day not in kept}
    # A day is complete once its last candle (open time day end - timeframe) has closed; comparing
    # the day's end itself with ``closed_before`` (an open-time bound) left yesterday's 1h day
    # partial at the daily schedule's 00:15, and a 1d day partial until the day after next.
    complete = {day: day_start_ms(day) + DAY_MS - tf_ms < closed_before for day in wanted}
    report.days.extend(
        DayReport(
            day=day,
            rows=len(frames[day]),
            missing=missing[day],
            complete=complete[day],
            fetched=day in refreshed,
            first_timestamp=int(frames[day]["timestamp"].iloc[0]) if len(frames[day]) else None,
            last_timestamp=int(frames[day]["timestamp"].iloc[-1]) if len(frames[day]) else None,
            source=sources.get(day, REST) if day in refreshed else None,
        )
        for day in requested
    )
    started = time.perf_counter()
    if report.passed and refreshed:
        store.write_days(
            exchange,
            symbol,
            timeframe,
            {day: frames[day] for day in sorted(refreshed)},
            complete={day: complete[day] for day in refreshed},
            sources={day: sources.get(day, REST) for day in refreshed},
        )
        report.written = True
        written = sum(len(frames[day]) for day in refreshed)
        log.info(f"{exchange} {symbol} {timeframe}: wrote {len(refreshed)} days, {written:,} candles")
    _add_time(timings, "write", started)


def _add_time(timings: dict[str, float], stage: str, started: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started


def _closed_before(now_ms: int, tf_ms: int) -> int:
    """Open times below this belong to candles that have closed by ``now_ms``."""
    return now_ms - tf_ms + 1


def _stored_days(
    store: CandleStore,
    exchange: str,
    symbol: str,
    timeframe: str,
    days: list[dt.date],
    closed_before: int,
    log: Logger,
) -> tuple[dict[dt.date, tuple], list[dt.date]]:
    """Stored days' coverage rows (named tuples), after reading the range's files whole, and the
    days to restore.

    If a file is corrupt (truncated, altered), none of the days count as stored, so all are
    fetched again and the write quarantines the bad file instead of it blocking every run until
    repaired; its days outside ``days`` (up to today) are returned to be fetched as well."""
    start, end = days[0], days[-1] + dt.timedelta(days=1)
    problems = store.verify(exchange, symbol, timeframe, start=start, end=end)
    corrupt = [p for p in problems if p.kind == "corrupt" and p.path.endswith(".parquet")]
    if corrupt:
        today = day_of_ms(closed_before)
        restore = sorted({day for p in corrupt for day in p.days if day <= today} - set(days))
        for problem in corrupt:
            log.warning(
                f"{problem.path}: {problem.reason}; its days are fetched again ({days[0]}..{days[-1]}"
                f"{f' and {len(restore)} more it held' if restore else ''}) and the write quarantines it"
            )
        return {}, restore
    table = store.coverage(exchange, symbol, timeframe, start, end)
    wanted = set(days)
    return {status.day: status for status in table.itertuples(index=False) if status.day in wanted}, []


def _group(to_fetch: list[tuple[dt.date, int]], closed_before: int) -> list[_Fetch]:
    """Consecutive days fetched from their start share one range; a delta day starts a new one."""
    groups: list[_Fetch] = []
    for day, since in to_fetch:
        end = min(day_start_ms(day) + DAY_MS, closed_before)
        last = groups[-1] if groups else None
        if last is not None and last.days[-1] + dt.timedelta(days=1) == day and since == day_start_ms(day):
            groups[-1] = _Fetch(last.start_ms, end, (*last.days, day))
        else:
            groups.append(_Fetch(since, end, (day,)))
    return groups


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    non_empty = [frame for frame in frames if len(frame)]
    return pd.concat(non_empty, ignore_index=True) if non_empty else empty_candles()
