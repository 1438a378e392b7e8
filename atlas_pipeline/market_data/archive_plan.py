"""Which of the days an ingest must fetch come from the exchange's public archive, and fetching them.

For the whole days an ingest fetches (not the delta of a partial day), in time order:
1. a closed month with at least ``MONTHLY_MIN_DAYS`` of those days comes from its monthly file;
2. the other closed days (and those of a month whose monthly file is not published) from daily
   files;
3. the rest through REST (ccxt): the days not closed yet, and every day whose file the archive
   answers 404 for. Once a daily file within ``TAIL_DAYS`` of now is missing, the later days go to
   REST without asking (the archive publishes in order: that is the tail it lacks).
A file is used only after its SHA-256 matched its ``.CHECKSUM`` and its rows parsed cleanly
(``sources/binance_archive``); any other archive failure ends the ingest of the chunk, writing
nothing of it, like a failed REST request. A day taken from a file records the file and its hash
as its source (``ArchiveFile.provenance``); each candle comes from exactly one file, so seams
between monthly files, daily files and REST have neither gaps nor duplicates.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from dataclasses import dataclass, field

import pandas as pd

from atlas_pipeline.market_data.candles import DAY_MS, day_start_ms, empty_candles, split_by_day
from atlas_pipeline.market_data.sources.binance_archive import ArchiveFile, ArchiveMissing, BinanceArchive

MONTHLY_MIN_DAYS = 4
"""Fewer wanted days of a month than this come from daily files (a month file is ~30 days' bytes)."""
TAIL_DAYS = 3
"""A daily file missing for a day this close to now marks the start of the tail REST serves."""
REST = "rest"


@dataclass
class ArchiveFetch:
    """What the archive supplied: frames and sources per day, and the days left for REST."""

    frames: dict[dt.date, pd.DataFrame] = field(default_factory=dict)
    sources: dict[dt.date, str] = field(default_factory=dict)
    rest_days: list[dt.date] = field(default_factory=list)
    files: int = 0
    candles: int = 0
    seconds: float = 0.0


def fetch_from_archive(
    archive: BinanceArchive, market_id: str, timeframe: str, days: list[dt.date], closed_before: int, log
) -> ArchiveFetch:
    """The archive's part of fetching whole ``days`` (sorted); see the module docstring."""
    result = ArchiveFetch()
    tail = False
    for (year, month), group in itertools.groupby(days, key=lambda d: (d.year, d.month)):
        wanted = list(group)
        if tail:
            result.rest_days += wanted
            continue
        month_end = day_start_ms(dt.date(year + month // 12, month % 12 + 1, 1))
        if month_end <= closed_before and len(wanted) >= MONTHLY_MIN_DAYS:
            file = _get(archive, result, log, lambda: archive.monthly(market_id, timeframe, year, month))
            if file is not None:
                _take(result, file, wanted)
                continue
        for i, day in enumerate(wanted):
            end = day_start_ms(day) + DAY_MS
            file = None
            if end <= closed_before:
                file = _get(archive, result, log, lambda: archive.daily(market_id, timeframe, day))
            if file is not None:
                _take(result, file, [day])
                continue
            result.rest_days.append(day)
            if end + TAIL_DAYS * DAY_MS > closed_before:
                tail = True
                result.rest_days += wanted[i + 1 :]
                break
    return result


def _get(archive: BinanceArchive, result: ArchiveFetch, log, fetch) -> ArchiveFile | None:
    started = time.perf_counter()
    try:
        file = fetch()
    except ArchiveMissing as missing:
        log.info(f"{missing}; that span comes from REST")
        return None
    finally:
        result.seconds += time.perf_counter() - started
    result.files += 1
    result.candles += len(file.candles)
    return file


def _take(result: ArchiveFetch, file: ArchiveFile, days: list[dt.date]) -> None:
    by_day = split_by_day(file.candles)
    for day in days:
        result.frames[day] = by_day.get(day, empty_candles())
        result.sources[day] = file.provenance
