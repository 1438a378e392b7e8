"""Binance's public data archive: whole months and days of klines as zipped CSVs, each proved
against its published SHA-256 before a byte of it is parsed.

Layout (``<base>/data/...``, DESIGN.md section 11)::

    spot/monthly/klines/<ID>/<tf>/<ID>-<tf>-YYYY-MM.zip        (+ .CHECKSUM)
    spot/daily/klines/<ID>/<tf>/<ID>-<tf>-YYYY-MM-DD.zip       (+ .CHECKSUM)
    futures/um/{monthly,daily}/klines/...                       (USDⓈ-M futures, same shape)

USDⓈ-M futures also have mark-price klines and funding rates. Their layout, as Binance publishes
it (checked against binance/binance-public-data's ``python/download-futures-markPriceKlines.py``
and ``python/download-futures-fundingRates.py``, and against public parsers of the real files,
which quote the header ``calc_time,funding_interval_hours,last_funding_rate`` of e.g.
``BTCUSDT-fundingRate-2021-01.zip`` and ``-2025-12.zip`` and rows like ``1780272000001,8,0.00005703``)::

    futures/um/{monthly,daily}/markPriceKlines/<ID>/<tf>/<ID>-<tf>-<period>.zip   klines' 12 columns, volumes 0
    futures/um/monthly/fundingRate/<ID>/<ID>-fundingRate-YYYY-MM.zip             (+ .CHECKSUM)

A funding file has a header row and three columns: ``calc_time`` (the funding time in ms, some a
few ms after the grid time, rounded to the second as the REST path rounds them),
``funding_interval_hours`` and ``last_funding_rate``. Atlas reads monthly funding files only (the
ones the archive lists under ``data/futures/um/monthly/fundingRate/``); the month not published
yet comes from REST.

``<ID>`` is Binance's market id (``BTCUSDT``). A ``.CHECKSUM`` holds ``<sha256>  <file name>``. The
CSV has 12 columns (open_time, open, high, low, close, volume, close_time, quote_volume, count,
taker_buy_volume, taker_buy_quote_volume, ignore), no header in older files and a header row in
some newer ones; spot open times are microseconds from 2025-01-01, milliseconds before, and
futures are milliseconds throughout.

Rules, each with its own error naming the file:
- the ``.CHECKSUM`` is fetched first; a 404 on it or on the zip is ``ArchiveMissing`` (not
  published yet, or a market the archive lacks): the caller falls back to REST for that span;
- the zip is streamed to a temporary file while hashed; a hash that differs from the published
  one is downloaded again (up to ``max_retries`` times), then ``ArchiveChecksumMismatch`` (file,
  expected, actual). Network failures and 5xx/429 answers are retried the same way, then
  ``ArchiveUnavailable``;
- a file that passes its checksum but is not what Binance publishes is ``ArchiveFileRejected``
  with the reason: a truncated or broken zip, a CSV whose rows do not have 12 columns, open times
  in a unit that does not fit the file's date, or candles outside the file's month or day.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import requests

from atlas_pipeline.market_data.candles import CANDLE_COLUMNS, DAY_MS, day_start_ms, round_to_second

ARCHIVE_URLS = {"binance": "https://data.binance.vision"}
"""The public archive of each exchange that has one Atlas reads."""
SPOT, FUTURES_UM = "spot", "futures/um"
MARKETS = (SPOT, FUTURES_UM)
KLINES, MARK_PRICE_KLINES, FUNDING_RATE = "klines", "markPriceKlines", "fundingRate"
KINDS = (KLINES, MARK_PRICE_KLINES, FUNDING_RATE)
"""What a file holds: trade candles, mark-price candles (futures), funding events (futures)."""
MICROSECONDS_FROM = dt.date(2025, 1, 1)
"""Spot files of days from this one on carry open times in microseconds."""
CSV_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "count", "taker_buy_volume", "taker_buy_quote_volume", "ignore",
)
FUNDING_CSV_COLUMNS = ("calc_time", "funding_interval_hours", "last_funding_rate")
_CHECKSUM_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")
_MS_LIMIT = 10**14  # open times below: ms (up to the year 5138); above: µs
_CHUNK = 1 << 20
_MAX_BACKOFF = 30.0


class ArchiveError(RuntimeError):
    """An archive file that could not be used; the message names the file."""


class ArchiveMissing(ArchiveError):
    """The archive has no such file (HTTP 404): fall back to REST for its span."""


class ArchiveUnavailable(ArchiveError):
    """The archive did not answer (network, 5xx, 429) after the retries."""


class ArchiveChecksumMismatch(ArchiveError):
    def __init__(self, path: str, expected: str, actual: str, attempts: int) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(
            f"archive file {path}: checksum mismatch after {attempts} download(s): "
            f"expected sha256 {expected} (its .CHECKSUM), got {actual}; nothing of it was stored"
        )


class ArchiveFileRejected(ArchiveError):
    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"archive file {path}: {reason}; nothing of it was stored")


@dataclass(frozen=True)
class ArchiveFile:
    """One verified, parsed archive file: its path under ``data/``, SHA-256 and candles (ms)."""

    path: str
    sha256: str
    candles: pd.DataFrame
    start_ms: int
    end_ms: int

    @property
    def provenance(self) -> str:
        """What the store records as the source of each day taken from this file."""
        return f"archive:{self.path}#{self.sha256}"


def parse_provenance(source: str) -> tuple[str, str] | None:
    """``(path, sha256)`` of an ``archive:<path>#<sha256>`` source; None for any other source."""
    if not source.startswith("archive:") or "#" not in source:
        return None
    path, _, sha = source[len("archive:") :].rpartition("#")
    return path, sha


def file_path(market: str, market_id: str, timeframe: str, period: str, kind: str = KLINES) -> str:
    """``spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-03.zip`` (a month ``YYYY-MM`` or day
    ``YYYY-MM-DD``); funding files have no timeframe: ``futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-03.zip``."""
    _check_kind(market, kind)
    cadence = "monthly" if len(period) == 7 else "daily"
    if kind == FUNDING_RATE:
        return f"{market}/{cadence}/{kind}/{market_id}/{market_id}-{kind}-{period}.zip"
    return f"{market}/{cadence}/{kind}/{market_id}/{timeframe}/{market_id}-{timeframe}-{period}.zip"


def has_daily_files(kind: str) -> bool:
    """Whether Atlas reads daily files of ``kind`` (funding: monthly files only, see the module docstring)."""
    return kind != FUNDING_RATE


def _check_kind(market: str, kind: str) -> None:
    if market not in MARKETS:
        raise ValueError(f"archive market {market!r} is not one of {MARKETS}")
    if kind not in KINDS:
        raise ValueError(f"archive file kind {kind!r} is not one of {KINDS}")
    if kind != KLINES and market != FUTURES_UM:
        raise ValueError(f"the archive has {kind} files for {FUTURES_UM} only, not {market}")


def _kind_of(path: str) -> tuple[str, str]:
    """``(market, kind)`` of a file path under ``data/``."""
    market = FUTURES_UM if path.startswith(f"{FUTURES_UM}/") else SPOT
    return market, path[len(market) + 1 :].split("/")[1]


def period_bounds(period: str) -> tuple[int, int]:
    """``[start, end)`` in ms of a ``YYYY-MM`` or ``YYYY-MM-DD`` period."""
    if len(period) == 7:
        first = dt.date.fromisoformat(f"{period}-01")
        after = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return day_start_ms(first), day_start_ms(after)
    day = dt.date.fromisoformat(period)
    return day_start_ms(day), day_start_ms(day) + DAY_MS


def expects_microseconds(market: str, period_start_ms: int) -> bool:
    return market == SPOT and period_start_ms >= day_start_ms(MICROSECONDS_FROM)


class BinanceArchive:
    """Downloads, verifies and parses archive files of one market (``spot`` or ``futures/um``) and
    ``kind`` (``klines``, ``markPriceKlines``, ``fundingRate``).

    ``base_url``: scheme and host (the public archive, or the emulator, which serves the same
    layout). One ``requests.Session`` (kept-alive connections) per thread; ``fetch_all`` fetches
    ``workers`` files at a time: downloading, hashing, inflating and parsing all release the GIL,
    so one file's download overlaps another's parse.
    """

    def __init__(
        self,
        base_url: str,
        market: str = SPOT,
        kind: str = KLINES,
        *,
        timeout_seconds: float = 30.0,
        max_retries: int = 3,
        workers: int = 3,
        log: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_kind(market, kind)
        self.base_url = base_url.rstrip("/")
        self.market, self.kind = market, kind
        self.timeout_seconds = timeout_seconds
        self.max_retries = max_retries
        self.log = log or logging.getLogger(__name__)
        self.workers = workers
        self._sleep = sleep
        self._local = threading.local()

    def sibling(self, market: str | None = None, kind: str | None = None) -> BinanceArchive:
        """The same archive and settings, for files of another market or kind."""
        return BinanceArchive(
            self.base_url, market or self.market, kind or self.kind, timeout_seconds=self.timeout_seconds,
            max_retries=self.max_retries, workers=self.workers, log=self.log, sleep=self._sleep,
        )

    def for_market(self, market: dict[str, Any]) -> BinanceArchive | None:
        """This archive for a ccxt market: a spot market's files under ``spot/``, a linear (USDⓈ-M)
        perpetual's under ``futures/um/``; None for other contracts (COIN-M: not read, REST only)."""
        if market.get("spot"):
            return self if self.market == SPOT else None
        if market.get("swap") and market.get("linear"):
            return self if self.market == FUTURES_UM else self.sibling(market=FUTURES_UM)
        return None

    @property
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def url(self, path: str) -> str:
        return f"{self.base_url}/data/{path}"

    def monthly(self, market_id: str, timeframe: str, year: int, month: int) -> ArchiveFile:
        return self.fetch(file_path(self.market, market_id, timeframe, f"{year:04d}-{month:02d}", self.kind))

    def daily(self, market_id: str, timeframe: str, day: dt.date) -> ArchiveFile:
        return self.fetch(file_path(self.market, market_id, timeframe, day.isoformat(), self.kind))

    def fetch_all(self, paths: list[str]) -> list[ArchiveFile | ArchiveMissing]:
        """Each of ``paths`` as ``fetch`` answers it, in order, ``workers`` at a time; a file the
        archive lacks is its ``ArchiveMissing``; any other failure raises (the first in order)."""
        if len(paths) < 2 or self.workers < 2:
            return [self._fetch_or_missing(path) for path in paths]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(paths)), thread_name_prefix="archive") as pool:
            return list(pool.map(self._fetch_or_missing, paths))

    def _fetch_or_missing(self, path: str) -> ArchiveFile | ArchiveMissing:
        try:
            return self.fetch(path)
        except ArchiveMissing as missing:
            return missing

    def published_checksum(self, path: str) -> str:
        """The SHA-256 the archive publishes now for ``path`` (its ``.CHECKSUM``; ``ArchiveMissing`` if none)."""
        return self._retrying(path, lambda: self._checksum(path))

    def fetch(self, path: str) -> ArchiveFile:
        """The file at ``path``, proved against its checksum, then parsed; see the module docstring."""
        name = path.rsplit("/", 1)[-1]
        period = name.removesuffix(".zip").split("-", 2)[-1]
        start, end = period_bounds(period)
        market, kind = _kind_of(path)
        attempts = 0
        while True:
            attempts += 1
            expected = self.published_checksum(path)
            with tempfile.TemporaryFile(prefix="atlas-archive-") as spool:
                actual = self._retrying(path, lambda: self._download(path, spool))
                if actual == expected:
                    spool.seek(0)
                    if kind == FUNDING_RATE:
                        candles = parse_funding_zip(path, spool, start, end)
                    else:
                        candles = parse_klines_zip(path, spool, start, end, expects_microseconds(market, start))
                    return ArchiveFile(path, actual, candles, start, end)
            if attempts > self.max_retries:
                raise ArchiveChecksumMismatch(path, expected, actual, attempts)
            self.log.warning(
                f"archive file {path}: sha256 {actual} differs from its .CHECKSUM {expected}; "
                f"downloading again ({attempts}/{self.max_retries})"
            )

    # ---- HTTP ----------------------------------------------------------------------------

    def _get(self, path: str, suffix: str = "") -> requests.Response:
        response = self._session.get(self.url(path) + suffix, stream=True, timeout=self.timeout_seconds)
        if response.status_code == 404:
            response.close()
            raise ArchiveMissing(f"archive file {path}{suffix}: not published (HTTP 404)")
        if response.status_code != 200:
            response.close()
            raise _Transient(f"HTTP {response.status_code}")
        return response

    def _checksum(self, path: str) -> str:
        with self._get(path, ".CHECKSUM") as response:
            text = response.content[:4096].decode("utf-8", errors="replace").strip()
        match = _CHECKSUM_LINE.match(text.splitlines()[0] if text else "")
        name = path.rsplit("/", 1)[-1]
        if match is None or match[2] != name:
            raise ArchiveFileRejected(f"{path}.CHECKSUM", f"not '<sha256>  {name}': {text[:120]!r}")
        return match[1].lower()

    def _download(self, path: str, spool: IO[bytes]) -> str:
        """Stream the zip into ``spool`` (emptied first), hashing as it goes; its SHA-256."""
        spool.seek(0)
        spool.truncate()
        digest = hashlib.sha256()
        with self._get(path) as response:
            for block in response.iter_content(_CHUNK):
                digest.update(block)
                spool.write(block)
        return digest.hexdigest()

    def _retrying(self, path: str, call: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return call()
            except (requests.RequestException, _Transient) as error:
                if attempt >= self.max_retries:
                    raise ArchiveUnavailable(
                        f"archive file {path}: still failing after {attempt + 1} attempts: {type(error).__name__}: {error}"
                    ) from error
                attempt += 1
                delay = min(0.5 * 2 ** (attempt - 1), _MAX_BACKOFF)
                self.log.warning(f"archive file {path}: {type(error).__name__} ({error}); retry {attempt}/{self.max_retries} in {delay:.1f} s")
                self._sleep(delay)


class _Transient(Exception):
    """An answer worth asking again (5xx, 429)."""


# ---- parsing --------------------------------------------------------------------------------

_CONVERT = pacsv.ConvertOptions(
    column_types={"open_time": pa.int64(), **{c: pa.float64() for c in CSV_COLUMNS[1:6]}},
    include_columns=list(CSV_COLUMNS[:6]),
)


_FUNDING_CONVERT = pacsv.ConvertOptions(
    column_types={"calc_time": pa.int64(), "funding_interval_hours": pa.int64(), "last_funding_rate": pa.float64()},
    include_columns=["calc_time", "last_funding_rate"],
)


def parse_klines_zip(path: str, data: IO[bytes], start_ms: int, end_ms: int, microseconds: bool) -> pd.DataFrame:
    """The candles (ms open times, Atlas's columns) of a verified klines or mark-price klines zip
    covering ``[start_ms, end_ms)``."""
    table = _read_csv_zip(path, data, CSV_COLUMNS, _CONVERT, "klines")
    stamps = _checked_times(path, table.column("open_time").to_numpy(), start_ms, end_ms, microseconds)
    frame = pd.DataFrame({c: table.column(c).to_numpy() for c in CSV_COLUMNS[1:6]})
    frame.insert(0, "timestamp", stamps.astype("int64"))
    frame.columns = list(CANDLE_COLUMNS)
    return frame


def parse_funding_zip(path: str, data: IO[bytes], start_ms: int, end_ms: int) -> pd.DataFrame:
    """The funding events (``timestamp`` ms rounded to the second, ``rate``) of a verified
    ``fundingRate`` zip covering ``[start_ms, end_ms)``."""
    table = _read_csv_zip(path, data, FUNDING_CSV_COLUMNS, _FUNDING_CONVERT, "funding files")
    stamps = _checked_times(path, table.column("calc_time").to_numpy(), start_ms, end_ms, False, to_second=True, rows="funding event(s)", times="funding times")
    return pd.DataFrame({"timestamp": stamps.astype("int64"), "rate": table.column("last_funding_rate").to_numpy().astype("float64")})


def _read_csv_zip(path: str, data: IO[bytes], columns: tuple[str, ...], convert: pacsv.ConvertOptions, what: str) -> pa.Table:
    """The one CSV member of a verified zip, header row or not, each row with ``len(columns)`` fields."""
    try:
        with zipfile.ZipFile(data) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".csv")]
            if len(members) != 1:
                raise ArchiveFileRejected(path, f"holds {len(members)} CSV files, expected one")
            with archive.open(members[0]) as csv:
                head = csv.peek(1 << 16)[: 1 << 16] if hasattr(csv, "peek") else b""
                lines = head.split(b"\n", 2)
                header = lines[0].startswith(columns[0].encode())
                sample = lines[1] if header and len(lines) > 1 else lines[0]
                if sample.strip() and sample.count(b",") + 1 != len(columns):
                    found = sample.count(b",") + 1
                    raise ArchiveFileRejected(path, f"CSV rows have {found} columns, Binance {what} have {len(columns)}")
                # pyarrow reads the member as it is inflated: no copy of the whole CSV in memory
                return pacsv.read_csv(
                    csv,
                    read_options=pacsv.ReadOptions(column_names=list(columns), skip_rows=1 if header else 0, block_size=1 << 22),
                    convert_options=convert,
                )
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise ArchiveFileRejected(path, f"truncated or broken zip ({type(error).__name__}: {error})") from error
    except pa.ArrowException as error:  # a bad row, or the member failing its CRC while read
        raise ArchiveFileRejected(path, f"unreadable CSV: {error}") from error


def _checked_times(
    path: str, stamps: np.ndarray, start_ms: int, end_ms: int, microseconds: bool, to_second: bool = False,
    rows: str = "candle(s)", times: str = "open times",
) -> np.ndarray:
    """A file's times in ms, refused unless in the unit of its date, inside its period and strictly
    increasing (``to_second``: rounded to the second first, as funding times are)."""
    if not len(stamps):
        return stamps
    in_us = bool(stamps.max() >= _MS_LIMIT)
    if in_us != microseconds or (in_us and bool(stamps.min() < _MS_LIMIT)):
        unit, want = ("µs" if in_us else "ms"), ("µs" if microseconds else "ms")
        raise ArchiveFileRejected(
            path,
            f"{times} are in {unit}, a file of this date has them in {want} "
            f"(spot files use µs from {MICROSECONDS_FROM}, ms before; futures ms)",
        )
    if in_us:
        if np.any(stamps % 1000):
            raise ArchiveFileRejected(path, f"µs {times} that are not whole milliseconds")
        stamps = stamps // 1000
    if to_second:
        stamps = round_to_second(stamps)
    outside = np.flatnonzero((stamps < start_ms) | (stamps >= end_ms))
    if len(outside):
        at = int(stamps[outside[0]])
        raise ArchiveFileRejected(
            path,
            f"{len(outside)} {rows} outside the file's period "
            f"[{_iso(start_ms)}, {_iso(end_ms)}), the first at {_iso(at)}",
        )
    unsorted = np.flatnonzero(np.diff(stamps) <= 0)
    if len(unsorted):
        i = int(unsorted[0]) + 1
        raise ArchiveFileRejected(path, f"{times} not strictly increasing: row {i} has {_iso(int(stamps[i]))} after {_iso(int(stamps[i - 1]))}")
    return stamps


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")
