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

USDⓈ-M futures also get, from the futures REST API's own data (``futures``:
``BinanceFuturesApi``), so archive and REST agree:
- ``futures/um/{monthly,daily}/markPriceKlines/<ID>/<tf>/...``: the mark-price candles
  ``/fapi/v1/markPriceKlines`` serves, volumes 0;
- ``futures/um/monthly/fundingRate/<ID>/<ID>-fundingRate-YYYY-MM.zip``: the month's funding
  events of ``/fapi/v1/fundingRate``, header ``calc_time,funding_interval_hours,last_funding_rate``,
  rates as the API's 8-decimal strings, and ``calc_time`` 0-3 ms after the grid time as Binance
  stamps some events (the client rounds to the second, as it does over REST). Monthly only: a
  daily funding path is a 404.
The content faults act on these files too (``wrong_unit``: funding times in µs; ``wrong_columns``:
a column short; ``outside_period``: the next month's first event; ``altered``: a wrong first rate).

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
from atlas_pipeline.market_data.emulator.binance_futures_api import FUNDING_INTERVAL_MS, BinanceFuturesApi, funding_rates, mark_frame
from atlas_pipeline.market_data.emulator.faults import FaultRule
from atlas_pipeline.market_data.emulator.sources import CandleSource, UnknownSymbol, UnsupportedTimeframe
from atlas_pipeline.market_data.sources.binance_archive import (
    CSV_COLUMNS,
    FUNDING_CSV_COLUMNS,
    FUNDING_RATE,
    FUTURES_UM,
    KLINES,
    MARK_PRICE_KLINES,
    expects_microseconds,
    period_bounds,
)

_PATH = re.compile(
    r"^/data/(?P<market>spot|futures/um)/(?P<cadence>monthly|daily)/(?P<kind>klines|markPriceKlines|fundingRate)/(?P<id>[A-Z0-9]+)/"
    r"(?:(?P<tf>[0-9]+[smhd])/(?P=id)-(?P=tf)|(?P=id)-fundingRate)-(?P<period>\d{4}-\d{2}(?:-\d{2})?)\.zip(?P<checksum>\.CHECKSUM)?$"
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
    """Answers ``/data/...`` paths from ``source``; ``symbols`` maps Binance ids to ccxt symbols;
    ``futures``: the USDⓈ-M API whose swaps, mark prices and funding the futures files hold (None:
    futures files hold the spot markets' candles, and no mark-price or funding files)."""

    source: CandleSource
    symbols: Mapping[str, str]
    futures: BinanceFuturesApi | None = None
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
        if (match["kind"] == FUNDING_RATE) != (match["tf"] is None):
            return None
        if match["kind"] != KLINES and (match["market"] != FUTURES_UM or (match["kind"] == FUNDING_RATE and match["cadence"] != "monthly")):
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
        period, market, timeframe, kind = match["period"], match["market"], match["tf"], match["kind"]
        swap = self.futures.symbols.get(match["id"]) if self.futures is not None and market == FUTURES_UM else None
        symbol = self.futures.underlying[swap] if swap is not None else self.symbols.get(match["id"])
        if symbol is None or period in self.missing or (kind != KLINES and swap is None):
            return None
        start, end = period_bounds(period)
        lag = self.monthly_lag_ms if len(period) == 7 else self.daily_lag_ms
        if end + lag > now:
            return None
        content = tuple(sorted(kinds & {"truncated_zip", "wrong_columns", "wrong_unit", "outside_period", "altered"}))
        key = (market, kind, symbol, timeframe, period, content)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        if kind == FUNDING_RATE:
            zipped = self._build_funding(swap, match["id"], period, start, end, set(content), now)
        else:
            zipped = self._build(market, symbol, match["id"], timeframe, period, start, end, set(content), kind == MARK_PRICE_KLINES)
        with self._lock:
            self._files[key] = zipped
            while len(self._files) > self.cache_files:
                self._files.popitem(last=False)
        return zipped

    def _build(
        self, market: str, symbol: str, market_id: str, timeframe: str, period: str, start: int, end: int, faults: set[str],
        mark: bool = False,
    ) -> bytes | None:
        try:
            tf = timeframe_ms(timeframe)
            frame = self.source.candles(symbol, timeframe, start, end)
        except (UnknownSymbol, UnsupportedTimeframe, ValueError):
            return None
        if frame.empty:
            return None  # nothing traded in the period (before the listing): no file
        if mark:
            frame = mark_frame(frame)
        csv = klines_csv(
            frame["timestamp"].to_numpy(dtype="int64"),
            frame.loc[:, ["open", "high", "low", "close", "volume"]].to_numpy(dtype="float64"),
            tf,
            microseconds=expects_microseconds(market, start) != ("wrong_unit" in faults),
            header=self._header(market, start),
            faults=faults,
            period_end=end,
        )
        return _zipped(f"{market_id}-{timeframe}-{period}.csv", csv, faults)

    def _build_funding(self, swap: str, market_id: str, period: str, start: int, end: int, faults: set[str], now: int) -> bytes | None:
        assert self.futures is not None
        times = self.futures.funding_times(swap, now)
        times = times[(times >= start) & (times < end)]
        if not len(times):
            return None  # before the listing: no file
        csv = funding_csv(times, funding_rates(self.futures.seed, swap, times), faults, end)
        return _zipped(f"{market_id}-{FUNDING_RATE}-{period}.csv", csv, faults)

    def _header(self, market: str, start: int) -> bool:
        since = self.header_from.get(market)
        return since is not None and start >= day_start_ms(since)


def _zipped(member: str, csv: bytes, faults: set[str]) -> bytes:
    """A deterministic zip of one CSV (half of it for ``truncated_zip``)."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        archive.writestr(zipfile.ZipInfo(member, _ZIP_TIME), csv)
    zipped = sink.getvalue()
    return zipped[: len(zipped) // 2] if "truncated_zip" in faults else zipped


def funding_csv(times: np.ndarray, rates: np.ndarray, faults: set[str], period_end: int) -> bytes:
    """A ``fundingRate`` file's CSV (header row; ``calc_time`` a few ms after the grid time)."""
    stamps = times + (times // FUNDING_INTERVAL_MS) % 4
    rates = rates.copy()
    if "outside_period" in faults:
        stamps[-1] = period_end  # the next month's first event
    if "altered" in faults:
        rates[0] += 1e-4
    if "wrong_unit" in faults:
        stamps = stamps * 1000
    hours = FUNDING_INTERVAL_MS // 3_600_000
    rows = [[str(int(t)), str(hours), f"{r:.8f}"] for t, r in zip(stamps.tolist(), rates.tolist())]
    columns = list(FUNDING_CSV_COLUMNS)
    if "wrong_columns" in faults:
        columns, rows = columns[::2], [row[::2] for row in rows]
    return ("\n".join(",".join(row) for row in [columns, *rows]) + "\n").encode()


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
