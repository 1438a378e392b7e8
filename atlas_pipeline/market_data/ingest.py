"""Bring a market's stored days up to date: plan, fetch in few requests, validate, write atomically.

This is the whole data path of one OHLCV materialization, as plain Python so the Dagster asset,
the CLI and notebooks share it. For each requested day it decides what is needed:

- days stored complete are kept (unless ``full_refresh``): no request;
- days stored partial (today's, or one cut short) are fetched from the candle after the last
  stored one and merged (the delta update);
- days before the market's first candle are stored empty and complete, with no request;
- everything else is fetched, consecutive days in one paged range.

Nothing is written unless every blocking check passes on every requested day, so a bad answer
from the exchange never replaces good stored candles.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from atlas_pipeline.market_data.candles import (
    DAY_MS,
    day_start_ms,
    empty_candles,
    normalize_candles,
    split_by_day,
    timeframe_ms,
)
from atlas_pipeline.market_data.exchange_client import ExchangeClient, Logger
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


@dataclass
class IngestReport:
    """What one ingest of one market did; ``written`` is False when a blocking check failed."""

    exchange: str
    symbol: str
    timeframe: str
    days: list[DayReport]
    checks: list[CheckOutcome]
    requests: int = 0
    retries: int = 0
    first_candle: int | None = None
    written: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

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
        return f"{self.exchange} {self.symbol} {self.timeframe}: {failed}"


@dataclass(frozen=True)
class _Fetch:
    """One paged request range covering consecutive days."""

    start_ms: int
    end_ms: int
    days: tuple[dt.date, ...]


def ingest_days(
    client: ExchangeClient,
    store: CandleStore,
    symbol: str,
    timeframe: str,
    days: Iterable[dt.date],
    *,
    full_refresh: bool = False,
    log: Logger | None = None,
) -> IngestReport:
    """Fetch, validate and store ``days`` of one market; see the module docstring for the rules."""
    log = log or client.log
    exchange = client.connection.exchange_id
    tf_ms = timeframe_ms(timeframe)
    wanted = sorted(set(days))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    requests_before, retries_before = client.requests_made, client.retries_made

    closed_before = _closed_before(client.now_ms(), tf_ms)
    first = store.first_candle(exchange, symbol, timeframe)
    if first is None:
        first = client.first_candle(symbol, timeframe)
        if first is not None:
            store.set_first_candle(exchange, symbol, timeframe, first)
    listed_from = first if first is not None else closed_before

    stored = {
        status.day: status
        for status in _coverage(store, exchange, symbol, timeframe, wanted)
    }
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
    timings["plan"] = time.perf_counter() - started

    started = time.perf_counter()
    fetches = _group(to_fetch, closed_before)
    for number, fetch in enumerate(fetches, 1):
        result = client.fetch_range(symbol, timeframe, fetch.start_ms, fetch.end_ms)
        by_day = split_by_day(result.candles)
        for day in fetch.days:
            frames[day] = by_day.get(day, empty_candles())
        log.info(
            f"{exchange} {symbol} {timeframe}: range {number}/{len(fetches)} "
            f"{fetch.days[0]}..{fetch.days[-1]}: {len(result.candles):,} candles in {result.requests} requests"
        )
    timings["fetch"] = time.perf_counter() - started

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
    timings["merge"] = time.perf_counter() - started

    started = time.perf_counter()
    everything = _concat([frames[day] for day in wanted])
    range_start, range_end = day_start_ms(wanted[0]), day_start_ms(wanted[-1]) + DAY_MS
    checks = validate_candles(everything, timeframe, range_start, range_end)
    missing = missing_candles(everything, timeframe, wanted, first_candle_ms=first, closed_before_ms=closed_before)
    timings["validate"] = time.perf_counter() - started

    refreshed = {day for day in wanted if day not in kept}
    report = IngestReport(
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        days=[
            DayReport(
                day=day,
                rows=len(frames[day]),
                missing=missing[day],
                complete=day_start_ms(day) + DAY_MS <= closed_before,
                fetched=day in refreshed,
                first_timestamp=int(frames[day]["timestamp"].iloc[0]) if len(frames[day]) else None,
                last_timestamp=int(frames[day]["timestamp"].iloc[-1]) if len(frames[day]) else None,
            )
            for day in wanted
        ],
        checks=checks,
        requests=client.requests_made - requests_before,
        retries=client.retries_made - retries_before,
        first_candle=first,
    )
    started = time.perf_counter()
    if report.passed and refreshed:
        store.write_days(
            exchange,
            symbol,
            timeframe,
            {day: frames[day] for day in sorted(refreshed)},
            complete={d.day: d.complete for d in report.days if d.day in refreshed},
        )
        report.written = True
        log.info(f"{exchange} {symbol} {timeframe}: wrote {len(refreshed)} days, {report.candles_fetched:,} candles")
    elif not report.passed:
        log.warning(f"nothing written: {report.failure_summary()}")
    timings["write"] = time.perf_counter() - started
    report.seconds = timings
    return report


def _closed_before(now_ms: int, tf_ms: int) -> int:
    """Open times below this belong to candles that have closed by ``now_ms``."""
    return now_ms - tf_ms + 1


def _coverage(store: CandleStore, exchange: str, symbol: str, timeframe: str, days: list[dt.date]):
    table = store.coverage(exchange, symbol, timeframe, days[0], days[-1] + dt.timedelta(days=1))
    wanted = set(days)
    for status in table.itertuples(index=False):
        if status.day in wanted:
            yield status


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
