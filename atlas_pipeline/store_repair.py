"""``atlas verify [--archive] [--repair]``: check every candle file; quarantine bad ones and refetch
their days. With ``--archive``: check every stored day taken from the exchange's public archive
against the checksum the archive publishes now, and refetch the days of files that changed (a
corrected file keeps its name and gets a new checksum).

Refetching goes through the OHLCV asset (``materialize_ohlcv_range`` with ``full_refresh``), one run
per consecutive range of affected days, so repaired partitions are recorded in Dagster like any
backfill. Plain functions here; ``atlas_pipeline.cli`` maps their outcome to exit codes.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from atlas_pipeline.market_data.candles import consecutive_ranges, symbol_key
from atlas_pipeline.market_data.sources.binance_archive import ArchiveError, ArchiveMissing, BinanceArchive, parse_provenance
from atlas_pipeline.market_data.store import CandleStore, CorruptStoreFile, StoreProblem

if TYPE_CHECKING:
    import dagster as dg


@dataclass
class _Refetch:
    """The days of one series to fetch again, and what is known about its symbol."""

    exchange: str
    key: str
    timeframe: str
    symbol: str | None
    days: set[dt.date] = field(default_factory=set)


def describe(problem: StoreProblem) -> str:
    """One line per problem: kind, file, reason, and the days it affects."""
    days = problem.days
    span = f" ({len(days)} days {days[0]}..{days[-1]})" if days else ""
    return f"{problem.kind} {problem.path}: {problem.reason}{span}"


def summary(problems: Iterable[StoreProblem]) -> str:
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def verify_store(
    store: CandleStore,
    exchange: str | None,
    symbol: str | None,
    timeframe: str | None,
    *,
    repair: bool,
    instance: Callable[[], dg.DagsterInstance],
    out: TextIO = sys.stdout,
) -> str | None:
    """Print every problem; with ``repair`` fix them. Returns why the command fails, None if not.

    ``instance`` is only called when days must be refetched. Raises ``ValueError`` for arguments
    the store refuses (bad exchange or timeframe name).
    """
    problems = store.verify(exchange, symbol, timeframe)
    for problem in problems:
        print(describe(problem), file=out)
    if not problems:
        print("atlas verify: every file checked, no problems", file=out)
        return None
    if not repair:
        return f"{summary(problems)} file(s); `atlas verify --repair` quarantines bad files and refetches their days"
    refetch = _quarantine_or_upgrade(store, problems, out)
    failures = _refetch(refetch, instance, out) if refetch else []
    remaining = store.verify(exchange, symbol, timeframe)
    for problem in remaining:
        print(f"still: {describe(problem)}", file=out)
    if failures or remaining:
        return "; ".join(failures) or f"{summary(remaining)} file(s) left after repair"
    print(f"atlas verify: repaired {summary(problems)} file(s)", file=out)
    return None


def verify_archive_days(
    store: CandleStore,
    exchange: str | None,
    symbol: str | None,
    timeframe: str | None,
    *,
    repair: bool,
    instance: Callable[[], dg.DagsterInstance],
    out: TextIO = sys.stdout,
) -> str | None:
    """Compare each archive file stored days came from with the checksum the archive publishes now.

    One ``.CHECKSUM`` request per distinct file (not per day). A changed checksum means the archive
    corrected the file: its days are refetched (``repair``) through the OHLCV asset with
    ``full_refresh``, which downloads and verifies the new file. A file no longer published is
    reported and its days kept. Returns why the command fails, None if not."""
    from atlas_pipeline.config import load_exchanges_config

    config = load_exchanges_config()
    refetch: list[_Refetch] = []
    problems: list[str] = []
    files = 0
    for series in store.series(exchange):
        if (symbol is not None and series.symbol != symbol) or (timeframe is not None and series.timeframe != timeframe):
            continue
        by_file: dict[tuple[str, str], list[dt.date]] = {}
        for day, source in store.provenance(*series).itertuples(index=False):
            parsed = parse_provenance(source or "")
            if parsed is not None:
                by_file.setdefault(parsed, []).append(day)
        if not by_file:
            continue
        try:
            settings = config.get(series.exchange)
        except KeyError:
            problems.append(f"{series.exchange}: not configured, its archive days were not checked")
            continue
        url = settings.archive_url or settings.effective_archive_url
        if url is None:
            problems.append(f"{series.exchange}: no archive_url configured, its archive days were not checked")
            continue
        archive = BinanceArchive(url, timeout_seconds=settings.timeout_seconds, max_retries=settings.max_retries)
        entry = _Refetch(series.exchange, symbol_key(series.symbol), series.timeframe, series.symbol)
        for (path, stored), days in sorted(by_file.items()):
            files += 1
            try:
                published = archive.published_checksum(path)
            except ArchiveMissing:
                print(f"no longer published: {path} ({len(days)} stored days kept)", file=out)
                continue
            except ArchiveError as error:
                problems.append(str(error))
                continue
            if published != stored:
                print(f"changed archive file {path}: stored days came from sha256 {stored}, the archive now "
                      f"publishes {published} ({len(days)} days {days[0]}..{days[-1]})", file=out)
                entry.days.update(days)
        if entry.days:
            refetch.append(entry)
    changed = sum(len(entry.days) for entry in refetch)
    if not refetch and not problems:
        print(f"atlas verify --archive: {files} archive file(s) checked, every stored day matches its published checksum", file=out)
        return None
    if refetch and not repair:
        problems.append(f"{changed} stored day(s) come from archive files that changed; `atlas verify --archive --repair` refetches them")
    elif refetch:
        problems += _refetch(refetch, instance, out)
    return "; ".join(problems) or None


def _quarantine_or_upgrade(store: CandleStore, problems: list[StoreProblem], out: TextIO) -> list[_Refetch]:
    """Strays and corrupt files to quarantine (corrupt period files' days to refetch); files
    written before checksums get theirs."""
    refetch: dict[tuple[str, str, str], _Refetch] = {}
    for problem in problems:
        if problem.kind == "unverified":
            try:
                store.add_checksum(problem.path)
                print(f"checksum added: {problem.path}", file=out)
            except CorruptStoreFile as error:  # changed since verify read it: the rerun handles it
                print(f"changed since checked, left for the next run: {error}", file=out)
            continue
        try:
            moved = store.quarantine(problem.path)
        except FileNotFoundError:  # a write quarantined it meanwhile
            moved = "(already gone)"
        print(f"quarantined: {problem.path} -> {moved}", file=out)
        if problem.days:
            key = (problem.exchange, problem.symbol_key, problem.timeframe)
            entry = refetch.setdefault(key, _Refetch(*key, problem.symbol))
            entry.days.update(problem.days)
    return list(refetch.values())


def _refetch(refetch: list[_Refetch], instance: Callable[[], dg.DagsterInstance], out: TextIO) -> list[str]:
    """Fetch each series' affected days again through the OHLCV asset; the failures, if any."""
    from atlas_pipeline.config import load_exchanges_config
    from atlas_pipeline.defs.definitions import build_definitions
    from atlas_pipeline.defs.market_data.launch import materialize_ohlcv_range

    config = load_exchanges_config()
    today = dt.datetime.now(dt.UTC).date()
    defs, dagster = None, None
    failures = []
    for entry in refetch:
        label = f"{entry.exchange} {entry.symbol or entry.key} {entry.timeframe}"
        try:
            settings = config.get(entry.exchange)
        except KeyError:
            failures.append(f"{label}: exchange not configured, its days were not refetched")
            continue
        symbol = entry.symbol or next((m for m in settings.markets if symbol_key(m) == entry.key), None)
        if symbol is None or symbol not in settings.markets or entry.timeframe not in settings.timeframes:
            failures.append(f"{label}: market or timeframe not configured for {entry.exchange}, its days were not refetched")
            continue
        days = sorted(d for d in entry.days if settings.history_start <= d <= today)
        for start, end in consecutive_ranges(days):
            defs = defs or build_definitions()
            dagster = dagster or instance()
            print(f"refetch: {entry.exchange} {symbol} {entry.timeframe} {start}..{end} (end exclusive)", file=out)
            runs = materialize_ohlcv_range(
                defs, dagster, entry.exchange, [entry.timeframe], [symbol], start, end, full_refresh=True
            )
            failed = [run for run in runs if not run.success]
            if failed:
                failures.append(f"{label} {start}..{end}: {failed[0].failure_reason()}")
    return failures
