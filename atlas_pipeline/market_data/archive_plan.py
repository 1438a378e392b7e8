"""Which of the days an ingest must fetch come from the exchange's public archive, and fetching them.

The same plan serves every kind of file the archive has (``archive.kind``: trade candles,
mark-price candles, funding events). For the whole days an ingest fetches (not the delta of a
partial day):
1. a closed month with at least ``MONTHLY_MIN_DAYS`` of those days comes from its monthly file;
2. the other closed days (and those of a month whose monthly file is not published) from daily
   files (funding has monthly files only: every closed month comes from its monthly file, whatever
   the number of days wanted, and there is no step 2);
3. the rest through REST (ccxt): the days not closed yet (the tail the archive lacks), and every
   day whose file the archive answers 404 for.
The files of one step are fetched a few at a time (``BinanceArchive.fetch_all``). A file is used
only after its SHA-256 matched its ``.CHECKSUM`` and its rows parsed cleanly
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
from typing import Any

import pandas as pd

from atlas_pipeline.market_data.candles import DAY_MS, day_start_ms, split_by_day
from atlas_pipeline.market_data.sources.binance_archive import ArchiveFile, ArchiveMissing, BinanceArchive, file_path, has_daily_files

MONTHLY_MIN_DAYS = 4
"""Fewer wanted days of a month than this come from daily files (a month file is ~30 days' bytes)."""
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
    archive: BinanceArchive, market_id: str, timeframe: str, days: list[dt.date], closed_before: int, log: Any
) -> ArchiveFetch:
    """The archive's part of fetching whole ``days`` (sorted); see the module docstring.
    ``timeframe``: the candles' (unused for funding files, which have none)."""
    result = ArchiveFetch()
    daily_files = has_daily_files(archive.kind)
    months: dict[str, list[dt.date]] = {}
    daily: list[dt.date] = []
    for (year, month), group in itertools.groupby(days, key=lambda d: (d.year, d.month)):
        wanted = list(group)
        month_end = day_start_ms(dt.date(year + month // 12, month % 12 + 1, 1))
        if month_end <= closed_before and (len(wanted) >= MONTHLY_MIN_DAYS or not daily_files):
            months[f"{year:04d}-{month:02d}"] = wanted
        else:
            daily += wanted
    for period, got in _fetch(archive, result, market_id, timeframe, list(months), log):
        if got is None:
            daily += months[period]
        else:
            _take(result, got, months[period])
    daily.sort()
    closed = [day for day in daily if day_start_ms(day) + DAY_MS <= closed_before] if daily_files else []
    for period, got in _fetch(archive, result, market_id, timeframe, [day.isoformat() for day in closed], log):
        if got is not None:
            _take(result, got, [dt.date.fromisoformat(period)])
    result.rest_days = [day for day in days if day not in result.frames]
    return result


def _fetch(
    archive: BinanceArchive, result: ArchiveFetch, market_id: str, timeframe: str, periods: list[str], log: Any
) -> list[tuple[str, ArchiveFile | None]]:
    """The periods' files (None: not published), fetched a few at a time; counted in ``result``."""
    started = time.perf_counter()
    answers = archive.fetch_all([file_path(archive.market, market_id, timeframe, period, archive.kind) for period in periods])
    result.seconds += time.perf_counter() - started
    found: list[tuple[str, ArchiveFile | None]] = []
    for period, answer in zip(periods, answers):
        if isinstance(answer, ArchiveMissing):
            log.info(f"{answer}; that span comes from REST")
            found.append((period, None))
        else:
            result.files += 1
            result.candles += len(answer.candles)
            found.append((period, answer))
    return found


def _take(result: ArchiveFetch, file: ArchiveFile, days: list[dt.date]) -> None:
    by_day = split_by_day(file.candles)
    for day in days:
        result.frames[day] = by_day.get(day, file.candles.iloc[:0])
        result.sources[day] = file.provenance
