"""``CandleStore``: the one candle cache that data collection writes and backtests read.

Layout, under ``<root>/ohlcv/<exchange>/<symbol_key>/<timeframe>/`` (other datasets of the same
shape, such as perpetual swaps' mark-price candles and funding rates, under ``<root>/<dataset>/``:
``CandleStore(root, MARK_PRICE_CANDLES)``, ``CandleStore(root, FUNDING_RATES)``):

- ``<period>.parquet``: the candles of one period (``2024`` for a year, ``2024-03`` for a month,
  ``2024-03-05`` for a day), plus, in the file's Parquet key-value metadata (key ``atlas``), the
  bookkeeping of every day stored in it, empty days included: rows, first/last timestamp, complete,
  and (when the writer gave one) the day's source: ``rest``, or ``archive:<path>#<sha256>`` for
  a day taken from a verified file of the exchange's public archive (``provenance``).
  Data and bookkeeping therefore change together in one atomic rename, and ``coverage`` reads
  footers only. The period is the longest of year/month/day whose file stays within
  ``_MAX_FILE_ROWS`` candles: year for >= 5m, month for 30s..4m, day below. Measured over 9 years
  on 2 cores: 1h in day files reads in 1.4 s, in month files 55 ms, in year files 8 ms; 5m in
  month files 129 ms, in year files 34 ms (one-day rewrite 17 ms); 1m in year files would read in
  77 ms instead of ~120 ms, but rewriting one day, the daily path, would cost 82 ms instead of 10.
  Only the one period length of the series' timeframe is the store's layout: any other file in
  the folder (``2024-02.parquet`` beside year files, junk) is ignored by reads, reported by
  ``verify``.
- ``series.json``: the original ccxt symbol (path keys are lossy: ``BTC/USDT:USDT`` ->
  ``BTC-USDT_USDT``) and the cached first candle of the market, with a CRC of both.
- ``.lock``: ``fcntl.flock`` target serialising read-modify-write of the series across processes.

Integrity: the bookkeeping (format version 2) holds a CRC-32 of the whole file, computed with its
own eight hex digits zeroed, so every byte (data pages, page headers, Parquet footer, bookkeeping)
is covered: one flipped byte anywhere is always caught, a truncated file has no footer. Every read
checks it, then the frame contract (columns, dtypes, no nulls, sorted, inside the period; without
a checksum also rows per day equal to the bookkeeping), and raises ``CorruptStoreFile`` naming the
file. Cost: one CRC
pass at ~4 GB/s, a 9-year 1m read 183 -> 205 ms; Parquet page CRCs cost the same but cover neither
page headers nor the footer. ``coverage`` reads footers only and checks the bookkeeping against
its own CRC. Files written before checksums (version 1) still read, after the contract checks;
``verify`` reports them as unverified and the next write of the file adds the checksum.

Files are written to a dot-prefixed temp file in the same folder and renamed over the old one, so a
crash leaves the previous file whole. Local roots use pyarrow and ``os`` directly (fsspec costs
measurable time per file); other fsspec URLs go through fsspec (put then ``mv``), where the lock is
only per process. Bad files are moved, never deleted, to ``<root>/quarantine/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import re
import threading
import uuid
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from atlas_pipeline.atomic_files import replace_file as replace_local_file, write_text_atomic
from atlas_pipeline.market_data.candles import (
    CANDLE_DTYPES,
    DAY_MS,
    candles_per_day,
    day_of_ms,
    day_start_ms,
    days_between,
    symbol_key,
    timeframe_ms,
    to_ms,
)

logger = logging.getLogger(__name__)

_MAX_FILE_ROWS = 110_000
"""Most candles a period file may hold; picks year, month or day files. Changing it changes which
file a day is written to, so existing stores would have to be rewritten."""



@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a store holds: its folder under the root and its frame's columns, the first being
    ``timestamp`` (int64 ms, UTC). Every dataset is kept by (exchange, symbol, timeframe, day)
    with the same files, checksums, locks and bookkeeping; only the columns differ."""

    name: str
    dtypes: Mapping[str, str]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.dtypes)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(c, pa.from_numpy_dtype(np.dtype(t))) for c, t in self.dtypes.items()])

    def empty(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in self.dtypes.items()})


CANDLES = Dataset("ohlcv", CANDLE_DTYPES)
"""Trade candles (asset ``<exchange>/ohlcv_<timeframe>``)."""
MARK_PRICE_CANDLES = Dataset("markprice", CANDLE_DTYPES)
"""Perpetual swaps' mark-price candles (asset ``<exchange>/markprice_<timeframe>``)."""
FUNDING_RATES = Dataset("funding", {"timestamp": "int64", "rate": "float64"})
"""Perpetual swaps' funding events: funding time and rate (asset ``<exchange>/funding``; the
"timeframe" of the series is the exchange's funding interval, e.g. ``8h``)."""
_META_KEY = b"atlas"
_VERSION = 2
_CHECKSUM_MARK = b'"checksum":"'
_ZERO_CHECKSUM = b"00000000"
_SERIES_FILE = "series.json"
_QUARANTINE = "quarantine"
_PERIOD_FILE = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?\.parquet$")
# lz4, no dictionaries, delta-packed timestamps: on the 13,681-row Binance 1m sample 409 kB and
# 0.7 ms to read, against 575 kB and 1.2 ms with pyarrow's defaults (snappy + dictionaries).
# No ARROW:schema copy of the schema: int64/float64 need none, and the footer keeps one copy of
# the bookkeeping, the one the checksum is patched into.
_PARQUET_OPTIONS = dict(
    compression="lz4",
    use_dictionary=False,
    column_encoding={"timestamp": "DELTA_BINARY_PACKED"},
    store_schema=False,
)
_MIN_MS, _MAX_MS = -(2**63), 2**63 - 1
TimeLike = dt.date | dt.datetime | pd.Timestamp | str | int


class CorruptStoreFile(ValueError):
    """A store file that is truncated, altered, or not in the store's format; ``path`` names it.

    Reads refuse such a file rather than return what it seems to hold; ``CandleStore.quarantine``
    moves it aside, after which its days are simply not stored.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason} (atlas verify --repair quarantines it and refetches what it held)")

    def __reduce__(self):  # pickles (Dagster ships errors between processes) with both fields
        return type(self), (self.path, self.reason)


class SeriesKey(NamedTuple):
    exchange: str
    symbol: str
    timeframe: str


@dataclasses.dataclass(frozen=True)
class DayStatus:
    """What the store knows about one stored day; timestamps are None for an empty day."""

    day: dt.date
    rows: int
    first_timestamp: int | None
    last_timestamp: int | None
    complete: bool
    source: str | None = None
    """Where the day's candles came from (``rest``, ``archive:<path>#<sha256>``); None: not recorded."""


@dataclasses.dataclass(frozen=True)
class StoreProblem:
    """One file ``verify`` found wrong, and the days to refetch once it is quarantined.

    ``kind``: ``corrupt`` (truncated, altered or breaking the frame contract: reads refuse it),
    ``stray`` (not the store's layout: reads ignore it) or ``unverified`` (written before
    checksums: reads accept it after the contract checks). ``days``: the days a corrupt period file
    held, from its bookkeeping when that is intact, else every day of its period; empty otherwise.
    ``symbol`` is the series' ccxt symbol from ``series.json``, None when that is unreadable.
    """

    path: str
    kind: str
    reason: str
    exchange: str
    symbol_key: str
    timeframe: str
    symbol: str | None = None
    days: tuple[dt.date, ...] = ()


# --------------------------------------------------------------------------------------------
# Periods: which file a day lives in, and which days a file name covers.


def _period_name(timeframe: str, day: dt.date) -> str:
    per_day = candles_per_day(timeframe)
    if per_day * 366 <= _MAX_FILE_ROWS:
        return f"{day.year:04d}"
    if per_day * 31 <= _MAX_FILE_ROWS:
        return f"{day.year:04d}-{day.month:02d}"
    return day.isoformat()


def _period_range(match: re.Match[str]) -> tuple[int, int]:
    """[start, end) in ms of the period a file name stands for (any of year, month, day)."""
    year, month, day = (int(g) if g else None for g in match.groups())
    if month is None:
        first, after = dt.date(year, 1, 1), dt.date(year + 1, 1, 1)
    elif day is None:
        first = dt.date(year, month, 1)
        after = dt.date(year + month // 12, month % 12 + 1, 1)
    else:
        first = dt.date(year, month, day)
        after = first + dt.timedelta(days=1)
    return day_start_ms(first), day_start_ms(after)


class _File(NamedTuple):
    name: str
    start: int
    end: int


def _layout_file(name: str, timeframe: str) -> _File | None:
    """The period ``name`` stands for, if it is a period file of this timeframe's layout.

    Any other name (a month file beside year files, ``2024-13.parquet``, junk) is not the store's
    and must never be merged into reads.
    """
    match = _PERIOD_FILE.match(name)
    if match is None:
        return None
    try:
        start, end = _period_range(match)
    except ValueError:  # not a date, e.g. 2024-13
        return None
    if f"{_period_name(timeframe, day_of_ms(start))}.parquet" != name:
        return None
    return _File(name, start, end)


def _period_days(file: _File) -> tuple[dt.date, ...]:
    return tuple(days_between(day_of_ms(file.start), day_of_ms(file.end)))


# --------------------------------------------------------------------------------------------
# Storage backends: the few file operations the store needs, local (fast path) or fsspec.

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(key: str) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.Lock())


def _write_parquet(table: pa.Table, where: pa.NativeFile) -> None:
    """``table`` as Parquet, its schema metadata as the file's key-value metadata."""
    with pq.ParquetWriter(where, table.schema.remove_metadata(), **_PARQUET_OPTIONS) as writer:
        writer.write_table(table.replace_schema_metadata(None))
        writer.add_key_value_metadata(table.schema.metadata or {})


def _crc_hex(data: bytes | memoryview) -> bytes:
    return b"%08x" % zlib.crc32(data)


def _file_bytes(table: pa.Table) -> list[memoryview]:
    """The Parquet file of ``table`` (bookkeeping with a zeroed checksum) with its CRC patched in.

    The CRC is taken over the whole file with the placeholder in place; patching eight hex digits
    in a length-prefixed string keeps every offset, so the file stays valid Parquet.
    """
    sink = pa.BufferOutputStream()
    _write_parquet(table, sink)
    view = memoryview(sink.getvalue())
    at = _checksum_offset(view)
    if at is None or view[at : at + 8] != _ZERO_CHECKSUM:
        raise AssertionError("checksum placeholder not found in the written footer")
    return [view[:at], memoryview(_crc_hex(view)), view[at + 8 :]]


def _footer_start(view: memoryview) -> int | None:
    """Offset of the Parquet footer, or None if the bytes are not one whole Parquet file."""
    size = len(view)
    if size < 12 or view[:4] != b"PAR1" or view[-4:] != b"PAR1":
        return None
    start = size - 8 - int.from_bytes(view[-8:-4], "little")
    return start if start >= 4 else None


def _checksum_offset(view: memoryview) -> int | None:
    """Offset of the checksum's hex digits in the footer's bookkeeping; None if there is none."""
    start = _footer_start(view)
    if start is None:
        return None
    at = bytes(view[start:-8]).rfind(_CHECKSUM_MARK)
    return None if at < 0 else start + at + len(_CHECKSUM_MARK)


def _read_bytes(path: str) -> pa.Buffer:
    """One open of one file: a writer renaming a new file over ``path`` meanwhile cannot mix the
    old file's size with the new file's bytes; checksum and decoding see the same bytes."""
    with pa.memory_map(path) as source:
        return source.read_buffer()


class _LocalIO:
    """Plain ``os`` + pyarrow on local paths: no fsspec overhead on the hot read path."""

    def names(self, folder: str) -> list[str]:
        """The files in ``folder`` (not its folders), as ``_FsspecIO.names``."""
        try:
            with os.scandir(folder) as entries:
                return [e.name for e in entries if not e.is_dir()]
        except FileNotFoundError:
            return []

    def subdirs(self, folder: str) -> list[str]:
        try:
            with os.scandir(folder) as entries:
                return [e.name for e in entries if e.is_dir()]
        except FileNotFoundError:
            return []

    # Files decode in parallel (pyarrow and zlib release the GIL): 9 years of 1m, 108 files,
    # 125 -> 70 ms on 2 cores.
    parallel = True

    def read_bytes(self, path: str) -> pa.Buffer:
        return _read_bytes(path)

    def read_footer(self, path: str) -> dict[bytes, bytes]:
        with pa.memory_map(path) as source:
            return pq.read_schema(source).metadata or {}

    def read_text(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_table(self, path: str, table: pa.Table) -> None:
        parts = _file_bytes(table)  # before the temp file: a failing writer leaves nothing behind
        replace_local_file(path, lambda f: [f.write(part) for part in parts])

    def write_text(self, path: str, text: str) -> None:
        write_text_atomic(path, text)

    def move(self, path: str, to: str) -> None:
        os.makedirs(os.path.dirname(to), exist_ok=True)
        os.rename(path, to)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    @contextlib.contextmanager
    def lock(self, folder: str) -> Iterator[None]:
        os.makedirs(folder, exist_ok=True)
        with _thread_lock(folder), open(os.path.join(folder, ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def replace_file(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to a dot-prefixed temp object beside ``path``, then move it over ``path``.

    Readers see the old object or the new one, never a partial one; a failure removes the temp.
    """
    folder, name = path.rsplit("/", 1)
    fs.makedirs(folder, exist_ok=True)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


class _FsspecIO:
    """Any fsspec filesystem (memory, s3, gcs ...): whole-object reads and put-then-mv writes."""

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs

    def _entries(self, folder: str) -> list[dict]:
        try:
            return self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []

    def names(self, folder: str) -> list[str]:
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self._entries(folder) if e["type"] != "directory"]

    def subdirs(self, folder: str) -> list[str]:
        return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self._entries(folder) if e["type"] == "directory"]

    parallel = False

    def read_bytes(self, path: str) -> pa.Buffer:
        return pa.py_buffer(self.fs.cat_file(path))

    def read_footer(self, path: str) -> dict[bytes, bytes]:
        with self.fs.open(path, "rb") as f:
            return pq.read_schema(f).metadata or {}

    def read_text(self, path: str) -> str | None:
        try:
            return self.fs.cat_file(path).decode("utf-8")
        except FileNotFoundError:
            return None

    def _replace(self, path: str, data: bytes) -> None:
        replace_file(self.fs, path, data)

    def write_table(self, path: str, table: pa.Table) -> None:
        self._replace(path, b"".join(_file_bytes(table)))

    def write_text(self, path: str, text: str) -> None:
        self._replace(path, text.encode("utf-8"))

    def move(self, path: str, to: str) -> None:
        self.fs.makedirs(to.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(path, to, recursive=True)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    @contextlib.contextmanager
    def lock(self, folder: str) -> Iterator[None]:
        # Object stores have no flock: this serialises writers within one process only.
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        with _thread_lock(f"{protocol}://{folder}"):
            yield


# --------------------------------------------------------------------------------------------
# Argument checks.


def _path_part(kind: str, value: str) -> str:
    if not isinstance(value, str) or value in ("", ".", "..") or any(s in value for s in "/\\\0"):
        raise ValueError(f"{kind} {value!r} cannot be used as a path component")
    return value


def _bounds(start: TimeLike | None, end: TimeLike | None) -> tuple[int, int]:
    """``[start, end)`` in ms, open ends as the int64 extremes."""
    return (_MIN_MS if start is None else to_ms(start)), (_MAX_MS if end is None else to_ms(end))


def _as_day(value: TimeLike) -> dt.date:
    """A UTC day from a date, or from a datetime/ISO string/ms that is exactly midnight UTC."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    ms = to_ms(value)
    if ms % DAY_MS:
        raise ValueError(f"{value!r} is not a UTC day (midnight UTC)")
    return day_of_ms(ms)


def _checked_arrays(frame: pd.DataFrame, day: dt.date, label: str, dataset: Dataset = CANDLES) -> dict[str, np.ndarray]:
    """The day's columns as numpy arrays, after the store's own invariants (cheap, no copies)."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{label}: candles must be a DataFrame, got {type(frame).__name__}")
    columns = list(frame.columns)
    if len(columns) != len(dataset.columns) or set(columns) != set(dataset.columns):
        raise ValueError(
            f"{label}: columns must be exactly {list(dataset.columns)} (use normalize_candles or "
            f"empty_candles), got {columns}"
        )
    arrays: dict[str, np.ndarray] = {}
    wrong = []
    for column, dtype in dataset.dtypes.items():
        series = frame[column]
        if series.dtype != np.dtype(dtype):
            wrong.append(f"{column} is {series.dtype}, expected {dtype}")
        else:
            arrays[column] = series.to_numpy()
    if wrong:
        raise ValueError(f"{label}: wrong dtypes: {'; '.join(wrong)}")
    ts = arrays["timestamp"]
    if len(ts):
        lo = day_start_ms(day)
        outside = np.flatnonzero((ts < lo) | (ts >= lo + DAY_MS))
        if len(outside):
            i = int(outside[0])
            raise ValueError(
                f"{label}: {len(outside)} timestamp(s) outside the day [{lo}, {lo + DAY_MS}), "
                f"first at row {i}: {int(ts[i])}"
            )
        bad = np.flatnonzero(np.diff(ts) <= 0)
        if len(bad):
            i = int(bad[0]) + 1
            raise ValueError(
                f"{label}: timestamps must be strictly increasing, row {i} has {int(ts[i])} "
                f"after {int(ts[i - 1])}"
            )
    return arrays


def _label(exchange: str, symbol: str, timeframe: str, day: dt.date) -> str:
    return f"{exchange} {symbol} {timeframe} day {day.isoformat()}"


# --------------------------------------------------------------------------------------------
# Verifying what is read: whole-file checksum, bookkeeping, candle frame contract.


class _Period:
    """A period file's content after every check: its candles and its per-day bookkeeping.

    A checksummed file's bookkeeping is parsed only when asked for: the checksum already proved it
    is what the writer derived from these rows, and a plain ``read`` never needs it.
    """

    def __init__(self, path: str, table: pa.Table, file: _File, checksummed: bool, days: dict | None = None) -> None:
        self.path, self.table, self.file, self.checksummed = path, table, file, checksummed
        self._days = days

    @property
    def days(self) -> dict[str, list]:
        if self._days is None:
            self._days = _bookkeeping(self.path, self.table.schema.metadata, self.file, bytes_verified=True)[0]
        return self._days


def _days_text(days: Mapping[str, list]) -> bytes:
    return json.dumps(days, separators=(",", ":")).encode()


def _bookkeeping_json(days: Mapping[str, list]) -> bytes:
    """Version-2 bookkeeping: the checksum placeholder first, then a CRC of the days for footer-only
    readers (``coverage``), who cannot check the whole file."""
    text = _days_text(days)
    return b'{"version":2,"checksum":"%s","days_crc":"%s","days":%s}' % (_ZERO_CHECKSUM, _crc_hex(text), text)


def _verify_checksum(path: str, data: pa.Buffer) -> bool:
    """Whether the file carries a checksum (version 2); raises if it does not match its bytes."""
    view = memoryview(data)
    if _footer_start(view) is None:
        raise CorruptStoreFile(path, f"not a whole Parquet file ({len(view)} bytes; truncated?)")
    at = _checksum_offset(view)
    if at is None:
        return False
    crc = zlib.crc32(view[at + 8 :], zlib.crc32(_ZERO_CHECKSUM, zlib.crc32(view[:at])))
    stored = bytes(view[at : at + 8])
    if stored != b"%08x" % crc:
        raise CorruptStoreFile(path, f"checksum mismatch: stored {stored.decode(errors='replace')}, bytes give {crc:08x}")
    return True


def _bookkeeping(
    path: str, metadata: Mapping[bytes, bytes] | None, file: _File, *, bytes_verified: bool = False
) -> tuple[dict[str, list], bool]:
    """The per-day bookkeeping of a period file, checked; and whether the file has a checksum.

    Version 2 checks the days against their own CRC, unless the whole file's checksum already
    covered them; version 1 (written before checksums) only for plausibility, entry by entry.
    """
    raw = (metadata or {}).get(_META_KEY)
    if raw is None:
        raise CorruptStoreFile(path, "no Atlas bookkeeping (Parquet footer key 'atlas')")
    try:
        meta = json.loads(raw)
    except ValueError as error:
        raise CorruptStoreFile(path, f"bookkeeping is not JSON: {error}") from None
    if not isinstance(meta, dict):
        raise CorruptStoreFile(path, "bookkeeping is not a JSON object")
    version, days = meta.get("version"), meta.get("days")
    if version == _VERSION and isinstance(days, dict):
        checksum = meta.get("checksum")
        if not (isinstance(checksum, str) and re.fullmatch(r"[0-9a-f]{8}", checksum)):
            raise CorruptStoreFile(path, "bookkeeping has no checksum")
        if not bytes_verified and meta.get("days_crc") != _days_crc(raw, days):
            raise CorruptStoreFile(path, "bookkeeping does not match its days_crc")
        return days, True
    if version == 1 and "checksum" not in meta:
        _check_days(path, days, file)
        return days, False
    raise CorruptStoreFile(path, f"unknown bookkeeping (version {version!r})")


def _days_crc(raw: bytes, days: Mapping[str, list]) -> str:
    """The CRC of the days as written: of their stored text when it is where the writer puts it (the
    bytes themselves, no re-encoding: ``coverage`` of 9 years of 1h, 9 files, 80 -> 60 ms), else of
    the days encoded again."""
    at = raw.find(b'"days":{')
    if at > 0 and raw.endswith(b"}}"):
        return _crc_hex(memoryview(raw)[at + 7 : -1]).decode()
    return _crc_hex(_days_text(days)).decode()


def _check_days(path: str, days: object, file: _File) -> None:
    """Plausibility of unchecksummed bookkeeping: days inside the period, consistent entries."""
    if not isinstance(days, dict):
        raise CorruptStoreFile(path, "bookkeeping has no days")
    for iso, entry in days.items():
        try:
            day_ms = day_start_ms(dt.date.fromisoformat(iso))
        except (TypeError, ValueError):
            raise CorruptStoreFile(path, f"bookkeeping day {iso!r} is not a date") from None
        if not file.start <= day_ms < file.end:
            raise CorruptStoreFile(path, f"bookkeeping day {iso} is outside the file's period")
        if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[3], bool)):
            raise CorruptStoreFile(path, f"bookkeeping of {iso} is not [rows, first, last, complete]: {entry!r}")
        rows, first, last = entry[:3]
        stamps = (first, last)
        if rows == 0 and stamps == (None, None):
            continue
        if not (
            _is_int(rows) and rows > 0 and all(_is_int(t) and day_ms <= t < day_ms + DAY_MS for t in stamps)
            and first <= last
        ):
            raise CorruptStoreFile(path, f"bookkeeping of {iso} is inconsistent: {entry!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_frame(path: str, table: pa.Table, days: dict[str, list] | None, file: _File, dataset: Dataset = CANDLES) -> None:
    """The candle frame contract, and rows per day equal to ``days``, the bookkeeping (binary
    searches), unless None: a checksummed file's bookkeeping is what the writer derived from its
    rows."""
    if table.schema.names != list(dataset.columns) or table.schema.types != dataset.schema.types:
        found = ", ".join(f"{f.name}: {f.type}" for f in table.schema)
        raise CorruptStoreFile(path, f"columns are [{found}], expected {dict(dataset.dtypes)}")
    nulls = [c for c in dataset.columns if table.column(c).null_count]
    if nulls:
        raise CorruptStoreFile(path, f"null values in {nulls}")
    ts = table.column("timestamp").to_numpy()
    if len(ts):
        unsorted = np.flatnonzero(ts[1:] <= ts[:-1])
        if len(unsorted):
            i = int(unsorted[0]) + 1
            raise CorruptStoreFile(path, f"timestamps not strictly increasing: row {i} has {ts[i]} after {ts[i - 1]}")
        if ts[0] < file.start or ts[-1] >= file.end:
            raise CorruptStoreFile(path, f"rows outside the file's period [{file.start}, {file.end}): {ts[0]}..{ts[-1]}")
    if days is not None:
        _check_rows_per_day(path, ts, days)


def _check_rows_per_day(path: str, ts: np.ndarray, days: dict[str, list]) -> None:
    entries = list(days.values())
    rows = np.array([e[0] for e in entries], dtype=np.int64)
    if int(rows.sum()) != len(ts):
        raise CorruptStoreFile(path, f"bookkeeping counts {int(rows.sum())} rows, the file holds {len(ts)}")
    starts = np.array(list(days), dtype="datetime64[D]").astype(np.int64) * DAY_MS
    lo, hi = np.searchsorted(ts, starts), np.searchsorted(ts, starts + DAY_MS)
    filled = np.flatnonzero(rows > 0)
    first = np.array([entries[i][1] for i in filled], dtype=np.int64)
    last = np.array([entries[i][2] for i in filled], dtype=np.int64)
    wrong = np.flatnonzero(hi - lo != rows)
    if not len(wrong):
        wrong = filled[(ts[lo[filled]] != first) | (ts[hi[filled] - 1] != last)] if len(filled) else wrong
    if len(wrong):
        i = int(wrong[0])
        raise CorruptStoreFile(
            path, f"bookkeeping of {list(days)[i]} says {entries[i][:3]}, the rows say {int(hi[i] - lo[i])} rows"
        )


def _load_period(path: str, data: pa.Buffer, file: _File, dataset: Dataset = CANDLES) -> _Period:
    """Decode one period file's bytes, refusing anything but exactly what the store wrote."""
    checksummed = _verify_checksum(path, data)
    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read()
    except Exception as error:  # noqa: BLE001 - any failure to decode these bytes means a bad file
        raise CorruptStoreFile(path, f"unreadable Parquet: {type(error).__name__}: {error}") from error
    if checksummed:  # exactly the bytes a version-2 writer wrote: the cheap checks suffice
        _check_frame(path, table, None, file, dataset)
        return _Period(path, table, file, checksummed)
    days, versioned = _bookkeeping(path, table.schema.metadata, file)
    if versioned:
        raise CorruptStoreFile(path, "bookkeeping has a checksum, the file has none")
    _check_frame(path, table, days, file, dataset)
    return _Period(path, table, file, checksummed, days)


# --------------------------------------------------------------------------------------------


class CandleStore:
    """Candles by (exchange, symbol, timeframe, UTC day), compacted into period Parquet files.

    A day is the unit of writing: ``write_day`` replaces the whole day, an empty frame records
    the day as stored-and-empty (for example before a listing), and ``complete`` records whether
    the day was closed when fetched. Every read verifies what it reads (see the module docstring)
    and raises ``CorruptStoreFile`` naming a bad file; ``verify`` checks a whole store.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, dataset: Dataset = CANDLES) -> None:
        if root is None:
            root = os.environ.get("ATLAS_HOME") or "~/.atlas"
        root = os.fspath(root)
        if "://" in root:
            fs, path = fsspec.core.url_to_fs(root)
            self._root = root.rstrip("/")
            self._io: _LocalIO | _FsspecIO = _LocalIO() if isinstance(fs, LocalFileSystem) else _FsspecIO(fs)
            base = path.rstrip("/")
        else:
            self._root = base = os.path.abspath(os.path.expanduser(root))
            self._io = _LocalIO()
        self._dataset = dataset
        self._base = f"{base}/{dataset.name}"
        self._quarantine = f"{base}/{_QUARANTINE}"

    @property
    def root(self) -> str:
        return self._root

    def __repr__(self) -> str:
        return f"CandleStore({self._root!r})"

    # ---- writing ------------------------------------------------------------------------

    def write_day(
        self, exchange: str, symbol: str, timeframe: str, day: dt.date, candles: pd.DataFrame, *, complete: bool
    ) -> None:
        """Replace everything stored for ``day`` with ``candles`` (empty = stored and empty)."""
        self.write_days(exchange, symbol, timeframe, {day: candles}, complete=complete)

    def write_days(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        days: Mapping[dt.date, pd.DataFrame],
        *,
        complete: bool | Mapping[dt.date, bool],
        sources: str | Mapping[dt.date, str] | None = None,
    ) -> None:
        """Replace several days at once, rewriting each period file once (a backfill's write).

        ``sources``: each day's provenance (one for all, or per day; None: not recorded), kept in
        the file's bookkeeping beside the day and read back by ``provenance``/``day_status``.
        Every day is checked before anything is written, so a bad day writes nothing. A corrupt
        period file in the way is quarantined (with a warning naming it) rather than failing every
        write forever: the new days are written, its other days are then not stored.
        """
        folder = self._series_dir(exchange, symbol, timeframe)
        by_file: dict[str, dict[dt.date, tuple[dict[str, np.ndarray], bool, str | None]]] = {}
        for raw_day, frame in days.items():
            day = _as_day(raw_day)
            label = _label(exchange, symbol, timeframe, day)
            flag = _complete_flag(complete, raw_day, day, label)
            source = _source_of(sources, raw_day, day, label)
            group = by_file.setdefault(_period_name(timeframe, day), {})
            if day in group:
                raise ValueError(f"{label}: given twice")
            group[day] = (_checked_arrays(frame, day, label, self._dataset), flag, source)
        if not by_file:
            return
        with self._io.lock(folder):
            self._check_symbol(folder, symbol, create=True)
            present = set(self._io.names(folder))
            for name in sorted(by_file):
                file = _layout_file(f"{name}.parquet", timeframe)
                self._rewrite(folder, file, file.name in present, by_file[name])

    def _rewrite(
        self, folder: str, file: _File, exists: bool, new_days: dict[dt.date, tuple[dict[str, np.ndarray], bool, str | None]]
    ) -> None:
        """Read-modify-write one period file: drop the replaced days' rows, add the new ones."""
        path = f"{folder}/{file.name}"
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self._dataset.columns}
        bookkeeping: dict[str, list] = {}
        old = self._load_or_quarantine(path, file) if exists else None
        if old is not None:
            bookkeeping = dict(old.days)
            old_ts = old.table.column("timestamp").to_numpy()
            replaced = np.array([(d - dt.date(1970, 1, 1)).days for d in new_days], dtype=np.int64)
            keep = ~np.isin(old_ts // DAY_MS, replaced)
            for c in self._dataset.columns:
                parts[c].append(old.table.column(c).to_numpy()[keep])
        for day, (arrays, flag, source) in new_days.items():
            ts = arrays["timestamp"]
            first, last = (int(ts[0]), int(ts[-1])) if len(ts) else (None, None)
            bookkeeping[day.isoformat()] = [len(ts), first, last, flag] + ([source] if source is not None else [])
            for c in self._dataset.columns:
                parts[c].append(arrays[c])
        columns = {c: np.concatenate(parts[c]) for c in self._dataset.columns}
        ts = columns["timestamp"]
        if len(ts) > 1 and not (np.diff(ts) > 0).all():
            order = np.argsort(ts, kind="stable")
            columns = {c: a[order] for c, a in columns.items()}
        self._write_period(path, columns, bookkeeping)

    def _write_period(self, path: str, columns: Mapping[str, object], days: Mapping[str, list]) -> None:
        meta = _bookkeeping_json(dict(sorted(days.items())))
        table = pa.table(dict(columns), schema=self._dataset.schema).replace_schema_metadata({_META_KEY: meta})
        self._io.write_table(path, table)

    def _load_or_quarantine(self, path: str, file: _File) -> _Period | None:
        """The file to rewrite; a corrupt one is moved aside (caller holds the series lock)."""
        try:
            return self._load_one(path, file)
        except CorruptStoreFile as error:
            moved = self._move_to_quarantine(path)
            logger.warning("%s; quarantined to %s: the days it held are no longer stored", error, moved)
            return None

    def set_first_candle(self, exchange: str, symbol: str, timeframe: str, ms: int) -> None:
        """Cache the market's first candle so backfills can skip the pre-listing history."""
        if isinstance(ms, bool) or not isinstance(ms, (int, np.integer)):
            raise ValueError(f"{exchange} {symbol} {timeframe}: first candle must be int ms, got {ms!r}")
        folder = self._series_dir(exchange, symbol, timeframe)
        with self._io.lock(folder):
            info = self._check_symbol(folder, symbol, create=False)
            self._write_series_info(folder, {**info, "first_candle": int(ms)})

    # ---- reading ------------------------------------------------------------------------

    def read(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
    ) -> pd.DataFrame:
        """Candles with open time in ``[start, end)``, sorted; an empty candle frame if none."""
        folder = self._series_dir(exchange, symbol, timeframe)
        lo, hi = _bounds(start, end)
        files = self._files(folder, timeframe, lo, hi)
        pieces = []
        for f, period in zip(files, self._load(folder, files)):
            if period is None:
                continue
            table = period.table
            if f.start < lo or f.end > hi:
                ts = table.column("timestamp").to_numpy()
                i, j = np.searchsorted(ts, [lo, hi])
                table = table.slice(i, j - i)
            if table.num_rows:
                pieces.append(table.replace_schema_metadata(None))
        if not pieces:
            return self._dataset.empty()
        return pa.concat_tables(pieces).to_pandas()

    def read_day(self, exchange: str, symbol: str, timeframe: str, day: TimeLike) -> pd.DataFrame | None:
        """The day's candles; None if the day was never stored, an empty frame if stored empty."""
        day = _as_day(day)
        folder = self._series_dir(exchange, symbol, timeframe)
        lo = day_start_ms(day)
        files = self._files(folder, timeframe, lo, lo + DAY_MS)
        for period in self._load(folder, files):
            if period is not None and day.isoformat() in period.days:
                i, j = np.searchsorted(period.table.column("timestamp").to_numpy(), [lo, lo + DAY_MS])
                if i == j:
                    return self._dataset.empty()
                return period.table.slice(i, j - i).replace_schema_metadata(None).to_pandas()
        return None

    def coverage(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
    ) -> pd.DataFrame:
        """One row per stored day overlapping ``[start, end)``, from Parquet footers only.

        Columns: day (datetime.date), rows (int64), first_timestamp and last_timestamp (Int64 ms,
        NA for empty days), complete (bool). The bookkeeping is checked against its own CRC; the
        candle bytes are not read, so only ``read`` and ``verify`` catch a flip in them.
        """
        entries = list(self.iter_coverage(exchange, symbol, timeframe, start, end))
        isos, rows, firsts, lasts, complete = zip(*entries) if entries else ((), (), (), (), ())
        return pd.DataFrame(
            {
                "day": pd.Series([dt.date.fromisoformat(iso) for iso in isos], dtype=object),
                "rows": pd.Series(rows, dtype="int64"),
                "first_timestamp": pd.Series(firsts, dtype="Int64"),
                "last_timestamp": pd.Series(lasts, dtype="Int64"),
                "complete": pd.Series(complete, dtype=bool),
            }
        )

    def iter_coverage(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
    ) -> Iterator[tuple[str, int, int | None, int | None, bool]]:
        """``coverage`` without the frame: ``(ISO day, rows, first, last, complete)`` per stored day,
        in time order, as the footers hold them (checked the same way). For callers aggregating
        over many series (``atlas data``): no per-day objects, so 9 years cost a few ms."""
        for iso, rows, first, last, complete, _source in self._footer_entries(exchange, symbol, timeframe, start, end):
            yield iso, rows, first, last, complete

    def provenance(
        self,
        exchange: str,
        symbol: str,
        timeframe: str,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
    ) -> pd.DataFrame:
        """Where each stored day overlapping ``[start, end)`` came from, from footers only.

        Columns: day (datetime.date), source (str: ``rest``, or ``archive:<path>#<sha256>`` for a
        day taken from a checksum-verified public archive file; None for days written without one).
        """
        statuses = self._statuses(exchange, symbol, timeframe, start, end)
        return pd.DataFrame(
            {
                "day": pd.Series([s.day for s in statuses], dtype=object),
                "source": pd.Series([s.source for s in statuses], dtype=object),
            }
        )

    def _footer_entries(
        self, exchange: str, symbol: str, timeframe: str, start: TimeLike | None, end: TimeLike | None
    ) -> Iterator[tuple[str, int, int | None, int | None, bool, str | None]]:
        """``(ISO day, rows, first, last, complete, source)`` per stored day overlapping the range,
        in time order, from the files' footers (checked when read)."""
        folder = self._series_dir(exchange, symbol, timeframe)
        lo, hi = _bounds(start, end)
        for f in self._files(folder, timeframe, lo, hi):
            book = self._footer_days(f"{folder}/{f.name}", f) or {}
            whole = lo <= f.start and f.end <= hi  # the whole file is inside the range
            for iso, (rows, first, last, complete, *source) in book.items():
                if not whole:
                    day_ms = day_start_ms(dt.date.fromisoformat(iso))
                    if not (day_ms + DAY_MS > lo and day_ms < hi):
                        continue
                yield iso, rows, first, last, complete, source[0] if source else None

    def day_status(self, exchange: str, symbol: str, timeframe: str, day: TimeLike) -> DayStatus | None:
        """The bookkeeping of one day from its file's footer; None if the day was never stored."""
        day = _as_day(day)
        statuses = self._statuses(exchange, symbol, timeframe, day, day + dt.timedelta(days=1))
        return statuses[0] if statuses else None

    def series(self, exchange: str | None = None) -> list[SeriesKey]:
        """Every (exchange, symbol, timeframe) with at least one stored day, sorted.

        A series whose ``series.json`` is unreadable is left out with a warning naming the file
        (its symbol is unknown; one bad file must not hide the whole exchange); ``verify`` reports
        it and the next write of the series repairs it.
        """
        exchanges = [_path_part("exchange", exchange)] if exchange is not None else self._io.subdirs(self._base)
        found = []
        for ex in exchanges:
            for sym in self._io.subdirs(f"{self._base}/{ex}"):
                for tf in self._io.subdirs(f"{self._base}/{ex}/{sym}"):
                    folder = f"{self._base}/{ex}/{sym}/{tf}"
                    if not _is_timeframe(tf) or not any(_layout_file(n, tf) for n in self._io.names(folder)):
                        continue
                    try:
                        symbol = self._series_info(folder).get("symbol", sym)
                    except CorruptStoreFile as error:
                        logger.warning("%s; series left out of series()", error)
                        continue
                    found.append(SeriesKey(ex, symbol, tf))
        return sorted(found)

    def first_candle(self, exchange: str, symbol: str, timeframe: str) -> int | None:
        """The market's first candle (ms) as cached by ``set_first_candle``; None if unknown.

        An unreadable ``series.json`` reads as unknown, with a warning: it is only a cache, which
        ingest fills again from the exchange (and the write repairs the file).
        """
        try:
            return self._series_info(self._series_dir(exchange, symbol, timeframe)).get("first_candle")
        except CorruptStoreFile as error:
            logger.warning("%s; first candle read as unknown", error)
            return None

    # ---- integrity ----------------------------------------------------------------------

    def verify(
        self,
        exchange: str | None = None,
        symbol: str | None = None,
        timeframe: str | None = None,
        *,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
    ) -> list[StoreProblem]:
        """Check every file of the selected series as a read would; the problems found, [] if none.

        Period files are read whole (checksum, bookkeeping, frame contract); ``start``/``end``
        limit which period files are read. Reports corrupt files, stray files and files written
        before checksums (see ``StoreProblem``).
        """
        if timeframe is not None:
            _path_part("timeframe", timeframe)
            timeframe_ms(timeframe)
        lo, hi = _bounds(start, end)
        problems: list[StoreProblem] = []
        exchanges = [_path_part("exchange", exchange)] if exchange is not None else self._io.subdirs(self._base)
        problems += self._strays(self._base, "", "", "")
        for ex in exchanges:
            keys = [symbol_key(symbol)] if symbol is not None else self._io.subdirs(f"{self._base}/{ex}")
            problems += self._strays(f"{self._base}/{ex}", ex, "", "") if symbol is None else []
            for key in keys:
                folder = f"{self._base}/{ex}/{_path_part('symbol', key)}"
                timeframes = [timeframe] if timeframe is not None else self._io.subdirs(folder)
                problems += self._strays(folder, ex, key, "") if timeframe is None else []
                for tf in timeframes:
                    if _is_timeframe(tf):
                        problems += self._verify_series(ex, key, tf, lo, hi)
                    else:
                        problems.append(StoreProblem(f"{folder}/{tf}", "stray", "not a timeframe folder", ex, key, tf))
        return problems

    def _verify_series(self, exchange: str, key: str, timeframe: str, lo: int, hi: int) -> list[StoreProblem]:
        folder = f"{self._base}/{exchange}/{key}/{timeframe}"
        found: list[tuple[str, str, str, tuple[dt.date, ...]]] = []  # path, kind, reason, days
        symbol = None
        try:
            info, checksummed = self._read_series_info(folder)
            symbol = info.get("symbol")
            if info and not checksummed:
                found.append((f"{folder}/{_SERIES_FILE}", "unverified", "written before checksums", ()))
        except CorruptStoreFile as error:
            found.append((error.path, "corrupt", error.reason, ()))
        example = f"{_period_name(timeframe, dt.date(2024, 3, 5))}.parquet"
        for name in sorted(self._io.subdirs(folder)):
            found.append((f"{folder}/{name}", "stray", "a folder inside a series folder; reads ignore it", ()))
        for name in sorted(self._io.names(folder)):
            if name.startswith(".") or name == _SERIES_FILE:
                continue  # the lock, and writers' temp files (a killed writer's are harmless)
            path, file = f"{folder}/{name}", _layout_file(name, timeframe)
            if file is None:
                found.append((path, "stray", f"not a period file of the {timeframe} layout (like {example}); reads ignore it", ()))
            elif file.end > lo and file.start < hi:
                found += self._verify_period(path, file)
        return [StoreProblem(p, kind, why, exchange, key, timeframe, symbol, days) for p, kind, why, days in found]

    def _verify_period(self, path: str, file: _File) -> list[tuple[str, str, str, tuple[dt.date, ...]]]:
        try:
            period = self._load_one(path, file)
        except CorruptStoreFile as error:
            return [(path, "corrupt", error.reason, self._days_held(path, file))]
        if period is not None and not period.checksummed:
            return [(path, "unverified", "written before checksums; --repair or the next write adds one", ())]
        return []

    def _days_held(self, path: str, file: _File) -> tuple[dt.date, ...]:
        """The days a bad file held: from its bookkeeping if that is intact, else its whole period."""
        try:
            days = self._footer_days(path, file)
        except CorruptStoreFile:
            return _period_days(file)
        return tuple(sorted(dt.date.fromisoformat(iso) for iso in days or {}))

    def _strays(self, folder: str, exchange: str, key: str, timeframe: str) -> list[StoreProblem]:
        """Files where the layout has only folders (the exchange and symbol levels)."""
        return [
            StoreProblem(f"{folder}/{name}", "stray", "a file where the store keeps folders", exchange, key, timeframe)
            for name in sorted(self._io.names(folder))
            if not name.startswith(".")
        ]

    def quarantine(self, path: str) -> str:
        """Move a bad file out of the store's series into ``<root>/quarantine/`` and return where.

        Kept, never deleted, at its place in the store plus the UTC time it was moved (e.g.
        ``quarantine/ohlcv/binance/BTC-USDT/1h/2024.parquet.20250102T030405.123456Z``). The days it
        held are then simply not stored, so the normal ingest fetches them again.
        """
        path = self._own_path(path)
        parts = path[len(self._base) + 1 :].split("/")
        if len(parts) != 4:
            return self._move_to_quarantine(path)
        with self._io.lock(path.rsplit("/", 1)[0]):
            return self._move_to_quarantine(path)

    def add_checksum(self, path: str) -> bool:
        """Rewrite a file written before checksums (period file or ``series.json``) with its
        checksum, content unchanged; False if it has one already (or is gone).

        Raises ``CorruptStoreFile`` for a file that fails the checks: quarantine that instead.
        """
        path = self._own_path(path)
        parts = path[len(self._base) + 1 :].split("/")
        if len(parts) != 4:
            raise ValueError(f"{path}: not a file of a series folder")
        folder, name, timeframe = path.rsplit("/", 1)[0], parts[3], parts[2]
        with self._io.lock(folder):
            if name == _SERIES_FILE:
                info, checksummed = self._read_series_info(folder)
                if checksummed or not info:
                    return False
                self._write_series_info(folder, info)
                return True
            file = _layout_file(name, timeframe) if _is_timeframe(timeframe) else None
            if file is None:
                raise ValueError(f"{path}: not a period file of the store's layout")
            period = self._load_one(path, file)
            if period is None or period.checksummed:
                return False
            self._write_period(path, {c: period.table.column(c) for c in self._dataset.columns}, period.days)
            return True

    def _own_path(self, path: str) -> str:
        path = os.path.abspath(path) if isinstance(self._io, _LocalIO) else path.split("://", 1)[-1]
        if not path.startswith(f"{self._base}/"):
            raise ValueError(f"{path} is not a file of the candle store under {self._base}")
        return path

    def _move_to_quarantine(self, path: str) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = f"{self._quarantine}/{self._dataset.name}/{path[len(self._base) + 1 :]}.{stamp}"
        while self._io.exists(target):
            target = f"{target}-{uuid.uuid4().hex[:6]}"
        self._io.move(path, target)
        return target

    # ---- internals ----------------------------------------------------------------------

    def _series_dir(self, exchange: str, symbol: str, timeframe: str) -> str:
        _path_part("timeframe", timeframe)
        timeframe_ms(timeframe)
        if not isinstance(symbol, str):
            raise ValueError(f"symbol {symbol!r} is not a string")
        return f"{self._base}/{_path_part('exchange', exchange)}/{_path_part('symbol', symbol_key(symbol))}/{timeframe}"

    def _files(self, folder: str, timeframe: str, lo: int, hi: int) -> list[_File]:
        """The layout's period files overlapping [lo, hi), in time order; other files are ignored."""
        files = [_layout_file(name, timeframe) for name in self._io.names(folder)]
        return sorted((f for f in files if f is not None and f.end > lo and f.start < hi), key=lambda f: f.start)

    def _load_one(self, path: str, file: _File) -> _Period | None:
        """One period file, verified; None if it vanished since it was listed (quarantined)."""
        try:
            data = self._io.read_bytes(path)
        except FileNotFoundError:
            return None
        return _load_period(path, data, file, self._dataset)

    def _load(self, folder: str, files: list[_File]) -> list[_Period | None]:
        def load(file: _File) -> _Period | None:
            return self._load_one(f"{folder}/{file.name}", file)

        if len(files) < 2 or not self._io.parallel:
            return [load(f) for f in files]
        # A pool per call, not a module-level one, so forked workers never inherit one.
        with ThreadPoolExecutor(max_workers=min(4, len(files))) as pool:
            return list(pool.map(load, files))

    def _footer_days(self, path: str, file: _File) -> dict[str, list] | None:
        """A period file's checked bookkeeping from its footer alone; None if the file vanished."""
        try:
            metadata = self._io.read_footer(path)
        except FileNotFoundError:
            return None
        except Exception as error:  # noqa: BLE001 - an unreadable footer is a bad file
            raise CorruptStoreFile(path, f"unreadable Parquet footer: {type(error).__name__}: {error}") from error
        return _bookkeeping(path, metadata, file)[0]

    def _statuses(
        self, exchange: str, symbol: str, timeframe: str, start: TimeLike | None, end: TimeLike | None
    ) -> list[DayStatus]:
        return [DayStatus(dt.date.fromisoformat(iso), *rest) for iso, *rest in self._footer_entries(exchange, symbol, timeframe, start, end)]

    def _series_info(self, folder: str) -> dict:
        return self._read_series_info(folder)[0]

    def _read_series_info(self, folder: str) -> tuple[dict, bool]:
        """``series.json`` checked ({} if absent), and whether it carries its CRC."""
        path = f"{folder}/{_SERIES_FILE}"
        try:
            text = self._io.read_text(path)
        except UnicodeDecodeError as error:
            raise CorruptStoreFile(path, f"not UTF-8 text: {error}") from None
        if text is None:
            return {}, True
        return _parse_series_info(path, text, folder.rsplit("/", 2)[-2])

    def _write_series_info(self, folder: str, info: Mapping[str, object]) -> None:
        fields = {"symbol": info["symbol"], "first_candle": info["first_candle"]}
        self._io.write_text(f"{folder}/{_SERIES_FILE}", json.dumps({**fields, "crc": _series_crc(fields)}))

    def _check_symbol(self, folder: str, symbol: str, *, create: bool) -> dict:
        """The series' info; refuses a second symbol that maps to the same path key.

        Under the series lock: an unreadable ``series.json`` is quarantined and written anew for
        ``symbol`` (the first candle cache is then unknown); one without a CRC gets one.
        """
        try:
            info, checksummed = self._read_series_info(folder)
        except CorruptStoreFile as error:
            moved = self._move_to_quarantine(error.path)
            logger.warning("%s; quarantined to %s and written anew for %s", error, moved, symbol)
            info, checksummed = {}, False
        if info and info["symbol"] != symbol:
            raise ValueError(
                f"symbol {symbol!r} maps to the same store path as stored symbol {info['symbol']!r} ({folder})"
            )
        if not info:
            info = {"symbol": symbol, "first_candle": None}
            if create:
                self._write_series_info(folder, info)
        elif create and not checksummed:
            self._write_series_info(folder, info)
        return info


def _is_timeframe(name: str) -> bool:
    try:
        timeframe_ms(name)
    except ValueError:
        return False
    return True


def _series_crc(fields: Mapping[str, object]) -> str:
    return _crc_hex(json.dumps({"symbol": fields["symbol"], "first_candle": fields["first_candle"]}).encode()).decode()


def _parse_series_info(path: str, text: str, key: str) -> tuple[dict, bool]:
    """Checked ``series.json`` content and whether it has a CRC (files from before have none)."""
    try:
        info = json.loads(text)
    except ValueError as error:
        raise CorruptStoreFile(path, f"not JSON: {error}") from None
    if not (isinstance(info, dict) and isinstance(info.get("symbol"), str) and "first_candle" in info):
        raise CorruptStoreFile(path, 'not a series file {"symbol": ..., "first_candle": ...}')
    first = info["first_candle"]
    if first is not None and not _is_int(first):
        raise CorruptStoreFile(path, f"first_candle {first!r} is not int ms")
    if symbol_key(info["symbol"]) != key:
        raise CorruptStoreFile(path, f"symbol {info['symbol']!r} does not belong in folder {key!r}")
    crc = info.pop("crc", None)
    if crc is None:
        return info, False
    if crc != _series_crc(info):
        raise CorruptStoreFile(path, "content does not match its crc")
    return info, True


def _source_of(sources: str | Mapping[dt.date, str] | None, raw_day: object, day: dt.date, label: str) -> str | None:
    source = sources.get(raw_day, sources.get(day)) if isinstance(sources, Mapping) else sources
    if source is not None and not (isinstance(source, str) and source):
        raise ValueError(f"{label}: source must be a non-empty string, got {source!r}")
    return source


def _complete_flag(complete: bool | Mapping[dt.date, bool], raw_day: object, day: dt.date, label: str) -> bool:
    if isinstance(complete, Mapping):
        if raw_day in complete:
            flag = complete[raw_day]
        elif day in complete:
            flag = complete[day]
        else:
            raise ValueError(f"{label}: no complete flag given for this day")
    else:
        flag = complete
    if not isinstance(flag, (bool, np.bool_)):
        raise ValueError(f"{label}: complete must be a bool, got {flag!r}")
    return bool(flag)
