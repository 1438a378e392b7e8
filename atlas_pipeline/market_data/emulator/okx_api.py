"""OKX v5 public REST, the part ccxt's ``okx`` (4.5.90) uses for spot markets, candles and
tickers: request parsing, error codes, the JSON shapes, and what a candles request selects. Pure
functions of (request, source, clock), like ``binance_api``, so the HTTP layer only moves bytes.

What ccxt calls (spot only, ``options={"fetchMarkets": {"types": ["spot"]}}``; without API keys
``fetch_currencies`` makes no request):
- ``load_markets`` -> ``GET /api/v5/public/instruments?instType=SPOT``;
- ``fetch_ohlcv`` -> ``GET /api/v5/market/candles`` or ``/api/v5/market/history-candles`` with
  ``instId``, ``bar`` (ccxt's ``1h`` is ``1H``; timeframes of 6h and more get OKX's UTC variants
  ``6Hutc``, ``12Hutc``, ``1Dutc``), ``limit`` (ccxt caps it at 300) and the cursors
  ``before = since - 1`` and ``after = since + limit x timeframe``, or ``after = until`` when
  ``params={"until": ...}``; it picks history-candles when ``since`` is older than 1,439 candles
  (``params={"type": "Candles" | "HistoryCandles"}`` overrides);
- ``fetch_tickers`` -> ``GET /api/v5/market/tickers?instType=SPOT``;
- ``fetch_time`` -> ``GET /api/v5/public/time``.

OKX behaviour reproduced (its v5 docs, and as ccxt relies on):
- every answer is ``{"code": "0", "msg": "", "data": [...]}``; an error has a non-zero ``code``:
  ``50014`` a required parameter is missing and ``51000`` a parameter is wrong (HTTP 400, ccxt
  ``BadRequest``), ``51001`` unknown instrument (HTTP 200, ccxt ``BadSymbol``), ``50011`` rate
  limit (HTTP 429, ccxt ``RateLimitExceeded``; sent by the server's ``rate_limit`` fault), and
  ``50026`` system error (HTTP 500, ccxt ``ExchangeNotAvailable``) when the source itself fails;
- candles page BACKWARD: ``after=ts`` -> records older than ts, ``before=ts`` -> records newer
  than ts, both -> the window between; every answer is the newest ``limit`` records of the
  selection, newest first (``before`` alone: the latest records). So ``after`` alone never answers
  empty while older candles exist; with both cursors, empty means the window holds none;
- ``limit``: default 100, at most 300 on market/candles and ``history_limit`` (default 300, as
  OKX documents it since 2025; older docs and freqtrade saw 100) on market/history-candles; a
  larger limit is capped, not refused (a short page to a client that asked for more);
- market/candles serves only the latest 1,440 candles (by their slots; older ones are answered
  by history-candles only); history-candles serves every candle up to the open one;
- rows are ``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]``, all text: ``vol`` in base
  currency, both quote volumes (spot) in quote currency, ``confirm`` ``"0"`` for the still-open
  candle and ``"1"`` once closed. Numbers are the shortest text that reads back as the source's
  float64, and the quote volume is derived as in the Binance rows, so both APIs serve the same
  candles and the same volumes;
- market status: markets in ``delisted`` are listed with ``state: "suspend"`` (ccxt
  ``active: False``), keep their candles and have no volume in their ticker; ``removed`` ones
  are not served at all (instruments omits them, candles answer 51001).
Bars Atlas cannot store (``2D``, ``3D``, ``1W``, ``1M``, ``3M`` and their ``utc`` forms) and the
Hong Kong-aligned ``6H``/``12H``/``1D`` (candles opening at 16:00 UTC, not whole UTC days) are
answered ``51000 Parameter bar error``; ccxt asks the UTC forms. A listed market's ``listTime``
is its first candle at the finest timeframe the source has.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from atlas_pipeline.market_data.candles import DAY_MS, empty_candles, timeframe_ms
from atlas_pipeline.market_data.emulator.binance_api import kline_rows, split_symbol, ticker_24hr
from atlas_pipeline.market_data.emulator.faults import OKX_ROWS
from atlas_pipeline.market_data.emulator.sources import (
    CandleSource,
    UnknownSymbol,
    UnsupportedTimeframe,
    served_markets,
)

PATHS = {
    "/api/v5/public/instruments": "instruments",
    "/api/v5/public/time": "time",
    "/api/v5/market/candles": "candles",
    "/api/v5/market/history-candles": "history-candles",
    "/api/v5/market/tickers": "tickers",
}
CANDLE_ENDPOINTS = ("candles", "history-candles")
INST_TYPES = ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION")
# OKX bars -> Atlas timeframes, for the bars the emulator serves (UTC-aligned, whole candles per day).
BARS = {
    "1m": "1m", "3m": "3m", "5m": "5m", "15m": "15m", "30m": "30m",
    "1H": "1h", "2H": "2h", "4H": "4h", "6Hutc": "6h", "12Hutc": "12h", "1Dutc": "1d",
}  # fmt: skip
# Bars OKX has that the emulator answers as invalid (see the module docstring).
UNSERVED_BARS = ("1s", "6H", "12H", "1D", "2D", "3D", "1W", "1M", "3M", "2Dutc", "3Dutc", "1Wutc", "1Mutc", "3Mutc")
DEFAULT_LIMIT = 100
CANDLES_LIMIT = 300
HISTORY_LIMIT = 300
RECENT_CANDLES = 1440
"""market/candles answers only the latest 1,440 candles."""
# Finest first: a market's listTime is its first candle at the finest timeframe the source serves.
_LISTING_TIMEFRAMES = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
_TICKER_TIMEFRAMES = ("1m", "5m", "15m", "1h")
_DIGITS = re.compile(r"^[0-9]{1,20}$")
_HK_OFFSET_MS = 8 * 3_600_000

RATE_LIMIT_BODY = {"msg": "Too Many Requests", "code": "50011"}
SYSTEM_ERROR = (500, {"code": "50026", "data": [], "msg": "System error. Try again later"})


class ApiError(Exception):
    """An OKX error reply: HTTP status and the ``{"code", "data", "msg"}`` body."""

    def __init__(self, code: str, msg: str, status: int = 400) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status, self.code, self.msg = status, code, msg

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "data": [], "msg": self.msg}


def missing(name: str) -> ApiError:
    return ApiError("50014", f"Parameter {name} can not be empty.")


def invalid(name: str) -> ApiError:
    return ApiError("51000", f"Parameter {name} error")


def unknown_instrument() -> ApiError:
    return ApiError("51001", "Instrument ID doesn't exist.", status=200)


def inst_id(symbol: str) -> str:
    """OKX's id for a ccxt spot symbol: ``ETH/BTC`` -> ``ETH-BTC``."""
    base, quote = split_symbol(symbol)
    return f"{base}-{quote}"


def ok(data: list[Any]) -> dict[str, Any]:
    return {"code": "0", "msg": "", "data": data}


@dataclass(frozen=True)
class CandlesQuery:
    inst_id: str
    bar: str
    timeframe: str
    limit: int
    after: int | None  # records older than this
    before: int | None  # records newer than this


def parse_candles_query(params: Mapping[str, Sequence[str]], max_limit: int) -> CandlesQuery:
    """The candles parameters from a parsed query string, or the ApiError OKX would send."""
    value = _reader(params)

    def number(name: str) -> int | None:
        raw = value(name)
        if raw is not None and not _DIGITS.match(raw):
            raise invalid(name)
        return None if raw is None else int(raw)

    instrument = value("instId")
    if instrument is None:
        raise missing("instId")
    bar = value("bar") or "1m"
    if bar not in BARS:
        raise invalid("bar")
    limit = number("limit")
    if limit is not None and limit < 1:
        raise invalid("limit")
    return CandlesQuery(instrument, bar, BARS[bar], min(limit or DEFAULT_LIMIT, max_limit), number("after"), number("before"))


def select_candles(source: CandleSource, symbol: str, query: CandlesQuery, now: int, recent_only: bool) -> pd.DataFrame:
    """The candles OKX would answer ``query`` with, oldest first (the caller reverses them).

    The selection is every candle with ``before < open time < after`` that has opened by ``now``
    (and, for market/candles, ``recent_only``: is among the latest 1,440 slots); the answer is its
    newest ``limit``. Sources answer windows, so this reads the window ``limit`` candles would
    fill below the upper bound and widens it (x4) past gaps until it holds ``limit`` candles or
    reaches the lower bound / the first candle.
    """
    tf = timeframe_ms(query.timeframe)
    try:
        first = source.first_candle(symbol, query.timeframe)
    except UnsupportedTimeframe:
        raise invalid("bar") from None
    hi = now - now % tf + tf  # open times below this have opened
    if query.after is not None:
        hi = min(hi, query.after)
    lo = 0 if query.before is None else query.before + 1
    if recent_only:
        lo = max(lo, now - now % tf - (RECENT_CANDLES - 1) * tf)
    if first is None:
        return empty_candles()
    lo = max(lo, first)
    if hi <= lo:
        return empty_candles()
    span = query.limit * tf
    while True:
        start = max(hi - span, lo)
        frame = source.candles(symbol, query.timeframe, start, hi)
        if len(frame) >= query.limit or start <= lo:
            return frame.iloc[-query.limit :].reset_index(drop=True)
        span *= 4


def candle_rows(frame: pd.DataFrame, tf_ms: int, now: int) -> list[list[str]]:
    """OKX rows, newest first, for a candle frame (oldest first)."""
    rows = []
    for t, o, h, l, c, v, _close, quote, *_ in reversed(kline_rows(frame, tf_ms)):
        rows.append([str(t), o, h, l, c, v, quote, quote, "1" if t + tf_ms <= now else "0"])
    return rows


def instrument(symbol: str, list_time: int | None, state: str = "live", code: int = 0) -> dict[str, Any]:
    """A spot instrument as ``/api/v5/public/instruments`` lists it (the fields ccxt reads, and
    OKX's others with plausible values)."""
    base, quote = split_symbol(symbol)
    return {
        "alias": "",
        "auctionEndTime": "",
        "baseCcy": base,
        "category": "1",
        "contTdSwTime": "",
        "ctMult": "",
        "ctType": "",
        "ctVal": "",
        "ctValCcy": "",
        "expTime": "",
        "futureSettlement": False,
        "instFamily": "",
        "instId": f"{base}-{quote}",
        "instIdCode": code,
        "instType": "SPOT",
        "lever": "",
        "listTime": "" if list_time is None else str(list_time),
        "lotSz": "0.00000001",
        "maxIcebergSz": "9999999999.0000000000000000",
        "maxLmtAmt": "20000000",
        "maxLmtSz": "9999999999",
        "maxMktAmt": "1000000",
        "maxMktSz": "1000000",
        "maxStopSz": "1000000",
        "maxTriggerSz": "9999999999.0000000000000000",
        "maxTwapSz": "9999999999.0000000000000000",
        "minSz": "0.00001",
        "openType": "",
        "optType": "",
        "quoteCcy": quote,
        "ruleType": "normal",
        "settleCcy": "",
        "state": state,
        "stk": "",
        "tickSz": "0.00000001",
        "tradeQuoteCcyList": [quote],
        "uly": "",
    }


def ticker(source: CandleSource, symbol: str, now: int, trading: bool = True) -> dict[str, Any]:
    """OKX's spot ticker of ``symbol``: the 24-hour statistics Binance's would have (same last
    day of candles, same volumes), in OKX's fields; ``sodUtc0``/``sodUtc8`` are the opens of the
    first candles at or after the last UTC and Hong Kong (16:00 UTC) midnights."""
    stats = ticker_24hr(source, symbol, now, trading)
    ts = int(stats["closeTime"])
    sod_utc0 = sod_utc8 = stats["openPrice"]
    if trading:
        sod_utc0 = _open_at(source, symbol, ts - ts % DAY_MS, ts, stats["openPrice"])
        hk_midnight = ts - (ts + _HK_OFFSET_MS) % DAY_MS
        sod_utc8 = _open_at(source, symbol, hk_midnight, ts, stats["openPrice"])
    return {
        "instType": "SPOT",
        "instId": inst_id(symbol),
        "last": stats["lastPrice"],
        "lastSz": stats["lastQty"],
        "askPx": stats["askPrice"],
        "askSz": stats["askQty"],
        "bidPx": stats["bidPrice"],
        "bidSz": stats["bidQty"],
        "open24h": stats["openPrice"],
        "high24h": stats["highPrice"],
        "low24h": stats["lowPrice"],
        "volCcy24h": stats["quoteVolume"],
        "vol24h": stats["volume"],
        "ts": str(ts),
        "sodUtc0": sod_utc0,
        "sodUtc8": sod_utc8,
    }


def _open_at(source: CandleSource, symbol: str, start: int, end: int, default: str) -> str:
    for timeframe in _TICKER_TIMEFRAMES:
        try:
            frame = source.candles(symbol, timeframe, start, max(end, start + 1))
        except UnsupportedTimeframe:
            continue
        return default if frame.empty else kline_rows(frame.iloc[:1], timeframe_ms(timeframe))[0][1]
    return default


def _reader(params: Mapping[str, Sequence[str]]):
    def value(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values and values[-1] != "" else None

    return value


@dataclass
class OkxApi:
    """Answers OKX's public endpoints for one source: ``(status, JSON payload)`` per request.

    ``delisted`` markets are listed with state ``suspend``; ``removed`` ones are not served at
    all. ``history_limit``: the most rows market/history-candles answers (OKX documents 300)."""

    source: CandleSource
    delisted: frozenset[str] = field(default_factory=frozenset)
    removed: frozenset[str] = field(default_factory=frozenset)
    history_limit: int = HISTORY_LIMIT

    exchange = "okx"
    paths = PATHS
    row_layout = OKX_ROWS
    rate_limit_body = RATE_LIMIT_BODY
    system_error = SYSTEM_ERROR

    def __post_init__(self) -> None:
        self.delisted, self.removed = frozenset(self.delisted), frozenset(self.removed)
        if not 1 <= self.history_limit <= HISTORY_LIMIT:
            raise ValueError(f"history_limit must be 1..{HISTORY_LIMIT}, got {self.history_limit}")
        self.symbols = served_markets(self.source, self.delisted, self.removed, inst_id)
        self._list_times: dict[str, int | None] = {}

    def answer(self, endpoint: str, params: Mapping[str, Sequence[str]], now: int) -> tuple[int, Any]:
        try:
            if endpoint == "time":
                return 200, ok([{"ts": str(now)}])
            if endpoint == "instruments":
                return 200, ok(self.instruments(params))
            if endpoint == "tickers":
                return 200, ok(self.tickers(params, now))
            if endpoint in CANDLE_ENDPOINTS:
                return 200, ok(self.candles(endpoint, params, now))
        except ApiError as error:
            return error.status, error.body()
        raise ValueError(f"not an OKX endpoint: {endpoint!r}")

    def candle_page(self, endpoint: str, params: Mapping[str, Sequence[str]], status: int, payload: Any):
        """The rows of a successful candle answer, for data faults: ``(rows, tf_ms, rebuild)``."""
        if endpoint not in CANDLE_ENDPOINTS or status != 200 or payload.get("code") != "0":
            return None
        tf = timeframe_ms(BARS[_reader(params)("bar") or "1m"])
        return payload["data"], tf, lambda rows: {**payload, "data": rows}

    def instruments(self, params: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        value = _reader(params)
        inst_type = value("instType")
        if inst_type is None:
            raise missing("instType")
        if inst_type not in INST_TYPES:
            raise invalid("instType")
        if inst_type != "SPOT":
            return []  # the emulator lists spot markets only
        wanted = value("instId")
        if wanted is not None and wanted not in self.symbols:
            raise unknown_instrument()
        return [
            instrument(symbol, self._list_time(symbol), "suspend" if symbol in self.delisted else "live", code)
            for code, (identifier, symbol) in enumerate(self.symbols.items(), 1)
            if wanted is None or identifier == wanted
        ]

    def tickers(self, params: Mapping[str, Sequence[str]], now: int) -> list[dict[str, Any]]:
        inst_type = _reader(params)("instType")
        if inst_type is None:
            raise missing("instType")
        if inst_type not in INST_TYPES:
            raise invalid("instType")
        if inst_type != "SPOT":
            return []
        return [ticker(self.source, symbol, now, trading=symbol not in self.delisted) for symbol in self.symbols.values()]

    def candles(self, endpoint: str, params: Mapping[str, Sequence[str]], now: int) -> list[list[str]]:
        history = endpoint == "history-candles"
        query = parse_candles_query(params, self.history_limit if history else CANDLES_LIMIT)
        symbol = self.symbols.get(query.inst_id)
        if symbol is None:
            raise unknown_instrument()
        try:
            frame = select_candles(self.source, symbol, query, now, recent_only=not history)
        except UnknownSymbol:
            raise unknown_instrument() from None
        return candle_rows(frame, timeframe_ms(query.timeframe), now)

    def _list_time(self, symbol: str) -> int | None:
        if symbol not in self._list_times:
            listing = getattr(self.source, "listing_ms", None)
            found: int | None = None
            if listing is not None:
                found = int(listing(symbol))
            else:
                for timeframe in _LISTING_TIMEFRAMES:
                    try:
                        found = self.source.first_candle(symbol, timeframe)
                    except UnsupportedTimeframe:
                        continue
                    break
            self._list_times[symbol] = found
        return self._list_times[symbol]


def served_bar(timeframe: str) -> str:
    """The OKX bar ccxt sends for an Atlas timeframe (``1h`` -> ``1H``, ``1d`` -> ``1Dutc``)."""
    for bar, tf in BARS.items():
        if tf == timeframe:
            return bar
    raise ValueError(f"no OKX bar for timeframe {timeframe!r}")

