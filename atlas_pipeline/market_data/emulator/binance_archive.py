"""Binance's public data archive (``data.binance.vision``) for the candles the emulator serves over
REST: the same source, so archive and REST agree candle for candle.

Served under ``/data/`` (DESIGN.md section 11): ``spot/`` and ``futures/um/``, ``monthly/`` and
``daily/`` klines zips, each with its ``.CHECKSUM`` (``<sha256>  <file name>``). What the real
archive does and this reproduces:
- a monthly file is published ``monthly_lag_ms`` after its month ends (default 3 days), a daily
  file ``daily_lag_ms`` after its day (default 12 h); before that, and for periods before the
  market's first candle, a 404 (XML body, as the real S3 bucket answers);
- spot open/close times are microseconds in files from 2025-01-01, milliseconds before; futures
  are milliseconds throughout;
- older files have no header row; files from ``header_from[market]`` on have one (default: futures
  from 2022-01-01, spot never);
- ``missing``: periods (``YYYY-MM`` or ``YYYY-MM-DD``) never published (404), as the real archive
  lacks some months of some markets.
Zips are deterministic (fixed member time), so a file and its ``.CHECKSUM`` always agree. Futures
files serve the same candles as spot (the emulator has one price path per market).

Faults (``faults.py``, endpoint ``archive``) act on one fetch of a file: decided when its
``.CHECKSUM`` is asked for and applied to the zip asked for next (or decided on the zip itself if
no ``.CHECKSUM`` came first).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from atlas_pipeline.market_data.candles import DAY_MS, day_start_ms, timeframe_ms
from atlas_pipeline.market_data.emulator.binance_api import derived_columns
from atlas_pipeline.market_data.emulator.faults import FaultRule
from atlas_pipeline.market_data.emulator.sources import CandleSource, UnknownSymbol, UnsupportedTimeframe
from atlas_pipeline.market_data.sources.binance_archive import CSV_COLUMNS, expects_microseconds, period_bounds

_PATH = re.compile(
    r"^/data/(?P<market>spot|futures/um)/(?P<cadence>monthly|daily)/klines/(?P<id>[A-Z0-9]+)/(?P<tf>[0-9]+[smhd])/"
    r"(?P=id)-(?P=tf)-(?P<period>\d{4}-\d{2}(?:-\d{2})?)\.zip(?P<checksum>\.CHECKSUM)?$"
)
_NOT_FOUND = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>'
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ArchiveReply:
    status: int
    body: bytes
    content_type: str


@dataclass
class BinanceArchiveApi:
    """Answers ``/data/...`` paths from ``source``; ``symbols`` maps Binance ids to ccxt symbols."""

    source: CandleSource
    symbols: Mapping[str, str]
    monthly_lag_ms: int = 3 * DAY_MS
    daily_lag_ms: int = DAY_MS // 2
    missing: set[str] = field(default_factory=set)
    header_from: dict[str, dt.date | None] = field(default_factory=lambda: {"spot": None, "futures/um": dt.date(2022, 1, 1)})
    cache_files: int = 8
    """Built zips kept in memory (a fetch asks for a file's .CHECKSUM, then its zip)."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._files: OrderedDict[tuple, bytes] = OrderedDict()
        self._pending: dict[str, tuple[FaultRule, ...]] = {}

    @staticmethod
    def parse(path: str) -> re.Match[str] | None:
        match = _PATH.match(path)
        if match is None or (match["cadence"] == "monthly") != (len(match["period"]) == 7):
            return None
        return match

    def answer(self, path: str, faults: Iterable[FaultRule], now: int) -> ArchiveReply:
        match = self.parse(path)
        kinds = {rule.kind for rule in faults}
        if match is None or "not_found" in kinds:
            return ArchiveReply(404, _NOT_FOUND, "application/xml")
        zipped = self._published(match, kinds, now)
        if zipped is None:
            return ArchiveReply(404, _NOT_FOUND, "application/xml")
        name = path.rsplit("/", 1)[-1].removesuffix(".CHECKSUM")
        if match["checksum"]:
            return ArchiveReply(200, f"{hashlib.sha256(zipped).hexdigest()}  {name}\n".encode(), "text/plain")
        if "bad_checksum" in kinds:  # damaged in transit: the published checksum is of the true file
            zipped = bytearray(zipped)
            zipped[len(zipped) // 2] ^= 0xFF
            zipped = bytes(zipped)
        return ArchiveReply(200, zipped, "application/zip")

    # ---- fault decisions carried from a .CHECKSUM to its zip ----------------------------------

    def remember(self, name: str, faults: tuple[FaultRule, ...]) -> None:
        with self._lock:
            self._pending[name] = faults

    def forget(self) -> None:
        """Drop carried decisions (the fault rules changed)."""
        with self._lock:
            self._pending.clear()

    def recall(self, name: str) -> tuple[FaultRule, ...] | None:
        with self._lock:
            return self._pending.pop(name, None)

    # ---- files --------------------------------------------------------------------------------

    def _published(self, match: re.Match[str], kinds: set[str], now: int) -> bytes | None:
        """The zip as published now (None: not published); content faults change the published file."""
        symbol = self.symbols.get(match["id"])
        period, market, timeframe = match["period"], match["market"], match["tf"]
        if symbol is None or period in self.missing:
            return None
        start, end = period_bounds(period)
        lag = self.monthly_lag_ms if len(period) == 7 else self.daily_lag_ms
        if end + lag > now:
            return None
        content = tuple(sorted(kinds & {"truncated_zip", "wrong_columns", "wrong_unit", "outside_period", "altered"}))
        key = (market, symbol, timeframe, period, content)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        zipped = self._build(market, symbol, match["id"], timeframe, period, start, end, set(content))
        with self._lock:
            self._files[key] = zipped
            while len(self._files) > self.cache_files:
                self._files.popitem(last=False)
        return zipped

    def _build(
        self, market: str, symbol: str, market_id: str, timeframe: str, period: str, start: int, end: int, faults: set[str]
    ) -> bytes | None:
        try:
            tf = timeframe_ms(timeframe)
            frame = self.source.candles(symbol, timeframe, start, end)
        except (UnknownSymbol, UnsupportedTimeframe, ValueError):
            return None
        if frame.empty:
            return None  # nothing traded in the period (before the listing): no file
        csv = klines_csv(
            frame["timestamp"].to_numpy(dtype="int64"),
            frame.loc[:, ["open", "high", "low", "close", "volume"]].to_numpy(dtype="float64"),
            tf,
            microseconds=expects_microseconds(market, start) != ("wrong_unit" in faults),
            header=self._header(market, start),
            faults=faults,
            period_end=end,
        )
        sink = io.BytesIO()
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            archive.writestr(zipfile.ZipInfo(f"{market_id}-{timeframe}-{period}.csv", _ZIP_TIME), csv)
        zipped = sink.getvalue()
        return zipped[: len(zipped) // 2] if "truncated_zip" in faults else zipped

    def _header(self, market: str, start: int) -> bool:
        since = self.header_from.get(market)
        return since is not None and start >= day_start_ms(since)


def klines_csv(
    stamps: np.ndarray,
    values: np.ndarray,
    tf_ms: int,
    *,
    microseconds: bool,
    header: bool,
    faults: set[str] = frozenset(),
    period_end: int | None = None,
) -> bytes:
    """Binance archive CSV rows for candles (``values``: open, high, low, close, volume). Derived
    columns are the klines rows' (``binance_api.derived_columns``); floats are written
    as Arrow's shortest round-trip text, so a reader gets the source's float64 values exactly."""
    stamps = stamps.copy()
    values = values.copy()
    if "outside_period" in faults and period_end is not None and len(stamps):
        stamps[-1] = period_end  # the next period's first candle
    if "altered" in faults and len(stamps):
        values[0, 4] += 1.0  # a wrong volume of the first candle: a valid candle, only not the true one
    scale = 1000 if microseconds else 1
    quote, count, taker_base, taker_quote = derived_columns(values)
    arrays = [
        stamps * scale, values[:, 0], values[:, 1], values[:, 2], values[:, 3], values[:, 4],
        (stamps + tf_ms) * scale - 1, quote, count, taker_base, taker_quote, np.zeros(len(stamps), dtype="int64"),
    ]
    columns = dict(zip(CSV_COLUMNS, arrays))
    if "wrong_columns" in faults:
        del columns["ignore"]
    sink = io.BytesIO()
    if header:
        sink.write((",".join(columns) + "\n").encode())
    pacsv.write_csv(pa.table(columns), sink, pacsv.WriteOptions(include_header=False))
    return sink.getvalue()
