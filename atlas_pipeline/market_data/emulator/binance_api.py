"""Binance spot REST, the part ccxt's ``binance`` uses for markets and candles: request parsing,
error codes, the JSON shapes, and what a klines request selects. Pure functions of (request,
source, clock) so the HTTP layer only moves bytes.

Binance behaviour reproduced (as documented, and as ccxt 4.5.90 relies on):
- ``GET /api/v3/klines``: ``limit`` default 500, at most 1000 (more is error -1130, not a clamp);
  ``startTime`` -> candles opening at or after it; ``endTime`` -> opening at or before it; only
  ``endTime`` -> the ``limit`` candles up to it; neither -> the latest ``limit`` candles including
  the still-open one. Rows are ``[openTime, "o", "h", "l", "c", "v", closeTime, "quoteVolume",
  trades, "takerBuyBase", "takerBuyQuote", "0"]``.
- errors are HTTP 400 with ``{"code": -11xx, "msg": ...}``: -1121 unknown symbol (ccxt
  ``BadSymbol``), -1120 bad interval, -1130 bad limit, -1100/-1102 malformed/missing parameters
  (ccxt ``BadRequest``).
- ``GET /api/v3/ticker/24hr`` (what ccxt's ``fetch_tickers()`` calls on spot): without
  ``symbol`` a list of every listed market's 24-hour statistics; with ``symbol`` one object; with
  ``symbols=["A","B"]`` those. Computed from the source's last day of candles (the 24 hours up
  to now, or up to the source's last candle when its data ends earlier), with the same derived
  quote volume as the klines rows. ccxt reads a ticker as spot only when it has ``bidQty``.
- market status: markets in ``delisted`` are listed in exchangeInfo with ``status: "BREAK"``
  (ccxt: ``active: False``), keep their klines (Binance keeps history) and have no volume in
  their ticker; markets in ``removed`` are not served at all (exchangeInfo omits them, klines and
  ticker answer -1121 like for a symbol Binance never had).
Intervals Binance has but Atlas cannot store (``3d``, ``1w``, ``1M``: not whole candles per day)
are answered as invalid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from atlas_pipeline.market_data.candles import DAY_MS, empty_candles, timeframe_ms
from atlas_pipeline.market_data.emulator.faults import BINANCE_ROWS
from atlas_pipeline.market_data.emulator.sources import (
    CandleSource,
    VALUE_COLUMNS,
    UnknownSymbol,
    UnsupportedTimeframe,
    served_markets,
)

KLINE_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
PATHS = {
    "/api/v3/klines": "klines",
    "/api/v3/exchangeInfo": "exchangeInfo",
    "/api/v3/ping": "ping",
    "/api/v3/time": "time",
    "/api/v3/ticker/24hr": "ticker24hr",
}
# Candles the 24-hour statistics are computed from: the finest the source can serve.
TICKER_TIMEFRAMES = ("1m", "5m", "15m", "1h")
_DIGITS = re.compile(r"^[0-9]{1,20}$")
RATE_LIMIT_BODY = {
    "code": -1003,
    "msg": "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per minute. "
    "Please use the websocket for live updates to avoid polling the API.",
}
SYSTEM_ERROR = (500, {"code": -1000, "msg": "An unknown error occurred while processing the request."})
_MIN_NOTIONAL = {"USDT": "5.00000000", "USDC": "5.00000000", "FDUSD": "5.00000000", "BTC": "0.00010000", "ETH": "0.00100000", "BNB": "0.01000000"}


class ApiError(Exception):
    """A Binance error reply: HTTP status and the ``{"code", "msg"}`` body."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status, self.code, self.msg = status, code, msg

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def market_id(symbol: str) -> str:
    """Binance's id for a ccxt spot symbol: ``ETH/BTC`` -> ``ETHBTC``."""
    base, quote = split_symbol(symbol)
    return base + quote


def split_symbol(symbol: str) -> tuple[str, str]:
    base, sep, quote = symbol.partition(":")[0].partition("/")
    if not sep or not base or not quote:
        raise ValueError(f"{symbol!r} is not a ccxt spot symbol such as 'BTC/USDT'")
    return base, quote


def exchange_info(symbols: Sequence[str], server_time: int, delisted: Collection[str] = ()) -> dict[str, Any]:
    """``/api/v3/exchangeInfo`` with the fields ccxt's ``parse_market`` reads, for spot markets;
    ``delisted`` ones have ``status: "BREAK"`` (trading halted)."""
    return {
        "timezone": "UTC",
        "serverTime": server_time,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": [_symbol_info(symbol, "BREAK" if symbol in delisted else "TRADING") for symbol in symbols],
    }


def _symbol_info(symbol: str, status: str = "TRADING") -> dict[str, Any]:
    base, quote = split_symbol(symbol)
    return {
        "symbol": base + quote,
        "status": status,
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "1000000.00000000", "tickSize": "0.00000001"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000000.00000000", "stepSize": "0.00001000"},
            {
                "filterType": "NOTIONAL",
                "minNotional": _MIN_NOTIONAL.get(quote, "1.00000000"),
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
        "permissions": ["SPOT"],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


@dataclass(frozen=True)
class KlinesQuery:
    symbol_id: str
    interval: str
    limit: int
    start_time: int | None
    end_time: int | None


def parse_klines_query(params: Mapping[str, Sequence[str]]) -> KlinesQuery:
    """The klines parameters from a parsed query string, or the ApiError Binance would send."""

    def value(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values and values[-1] != "" else None

    def number(name: str) -> int | None:
        raw = value(name)
        if raw is not None and not _DIGITS.match(raw):
            raise ApiError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
        return None if raw is None else int(raw)

    for name in ("symbol", "interval"):
        if value(name) is None:
            raise ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    interval = value("interval")
    if interval not in KLINE_INTERVALS:
        raise ApiError(-1120, "Invalid interval.")
    limit = number("limit")
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
    start, end = number("startTime"), number("endTime")
    if start is not None and end is not None and start > end:
        raise ApiError(-1023, "Start time is greater than end time.")
    return KlinesQuery(value("symbol"), interval, limit or DEFAULT_LIMIT, start, end)


def select_klines(source: CandleSource, symbol: str, query: KlinesQuery, now: int) -> pd.DataFrame:
    """The candles Binance would answer ``query`` with, from any source, gaps included.

    Sources answer a time window, so this asks for the window ``limit`` candles would fill and,
    where gaps leave it short, widens it (x4) until it holds ``limit`` candles or reaches the
    first candle / the bound: a few window reads even for a file that ended years ago.
    """
    try:
        tf = timeframe_ms(query.interval)
    except ValueError:  # 3d, 1w, 1M: Binance has them, but they are not whole candles per day
        raise ApiError(-1120, "Invalid interval.") from None
    try:
        first = source.first_candle(symbol, query.interval)
    except UnknownSymbol:
        raise ApiError(-1121, "Invalid symbol.") from None
    except UnsupportedTimeframe:
        raise ApiError(-1120, "Invalid interval.") from None
    bound = min(now, query.end_time if query.end_time is not None else now) + 1  # open time <= both
    limit = query.limit
    if first is None or bound <= first:
        return empty_candles()
    span = limit * tf
    if query.start_time is not None:
        lo = max(query.start_time, first)
        while True:
            hi = min(lo + span, bound)
            frame = source.candles(symbol, query.interval, lo, max(lo, hi))
            if len(frame) >= limit or hi >= bound:
                return frame.iloc[:limit].reset_index(drop=True)
            span *= 4
    while True:
        lo = max(bound - span, first)
        frame = source.candles(symbol, query.interval, lo, bound)
        if len(frame) >= limit or lo <= first:
            return frame.iloc[-limit:].reset_index(drop=True)
        span *= 4


def kline_rows(frame: pd.DataFrame, tf_ms: int) -> list[list[Any]]:
    """Binance kline rows for a candle frame. Numbers are the shortest strings that read back as
    the same float64, so a client gets the source's values exactly. Quote volume, trades and
    taker volumes are not in a candle frame: they are derived (plausibly, deterministically)."""
    stamps = frame["timestamp"].to_numpy(dtype="int64")
    values = frame.loc[:, list(VALUE_COLUMNS)].to_numpy(dtype="float64")
    quote, count, taker_base, taker_quote = derived_columns(values)
    numbers = np.column_stack((values, quote, taker_base, taker_quote))
    texts = [_num(x) for x in numbers.ravel().tolist()]
    trades = count.tolist()
    rows = []
    for i, (t, n) in enumerate(zip(stamps.tolist(), trades)):
        o, h, l, c, v, q, tb, tq = texts[8 * i : 8 * i + 8]
        rows.append([t, o, h, l, c, v, t + tf_ms - 1, q, n, tb, tq, "0"])
    return rows


def derived_columns(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quote volume, trade count and taker buy base/quote volumes for candles (``values``: open,
    high, low, close, volume), which a candle frame does not hold: plausible and deterministic, the
    same in klines rows and archive files."""
    volume = values[:, 4]
    quote = np.round(volume * values[:, 1:4].mean(axis=1), 8)
    count = np.where(volume > 0, np.sqrt(volume) * 7 + 1, 0).astype("int64")
    return quote, count, np.round(volume / 2, 8), np.round(quote / 2, 8)


def ticker_24hr(source: CandleSource, symbol: str, now: int, trading: bool = True) -> dict[str, Any]:
    """Binance's spot 24-hour statistics of ``symbol`` from the source's last day of candles.

    The day is the 24 hours up to ``now``, or up to the last candle's close when the source ends
    earlier (a file of old candles still ranks by its last day). Volume and quote volume are the
    sums of the klines rows' (so ccxt's ``quoteVolume`` equals what those rows add up to); a
    market that is not ``trading`` (delisted) has no trades: zero volume, unchanged price.
    """
    frame, tf = _last_day(source, symbol, now)
    rows = kline_rows(frame, tf)
    close_time = min(now, int(rows[-1][6])) if rows else now
    o = h = l = c = volume = quote = "0"
    count = 0
    if rows:
        o, c = rows[0][1], rows[-1][4]
        h = _num(max(float(r[2]) for r in rows))
        l = _num(min(float(r[3]) for r in rows))
        volume = _num(float(np.round(sum(float(r[5]) for r in rows), 8)))
        quote = _num(float(np.round(sum(float(r[7]) for r in rows), 8)))
        count = sum(int(r[8]) for r in rows)
    if not trading:
        o = h = l = c
        volume = quote = "0"
        count = 0
    change = float(c) - float(o)
    percent = 0.0 if float(o) == 0 else 100 * change / float(o)
    weighted = float(quote) / float(volume) if float(volume) > 0 else float(c)
    return {
        "symbol": market_id(symbol),
        "priceChange": _num(float(np.round(change, 8))),
        "priceChangePercent": f"{percent:.3f}",
        "weightedAvgPrice": _num(float(np.round(weighted, 8))),
        "prevClosePrice": o,
        "lastPrice": c,
        "lastQty": "0" if count == 0 else "1",
        "bidPrice": c,
        "bidQty": "1",
        "askPrice": c,
        "askQty": "1",
        "openPrice": o,
        "highPrice": h,
        "lowPrice": l,
        "volume": volume,
        "quoteVolume": quote,
        "openTime": close_time - DAY_MS,
        "closeTime": close_time,
        "firstId": 1 if count else -1,  # Binance answers -1 for both when nothing traded
        "lastId": count if count else -1,
        "count": count,
    }


def _last_day(source: CandleSource, symbol: str, now: int) -> tuple[pd.DataFrame, int]:
    """The source's candles of the last day up to ``now`` at its finest ticker timeframe."""
    for timeframe in TICKER_TIMEFRAMES:
        try:
            source.first_candle(symbol, timeframe)
        except UnsupportedTimeframe:
            continue
        tf = timeframe_ms(timeframe)
        per_day = DAY_MS // tf
        query = KlinesQuery(market_id(symbol), timeframe, per_day, None, None)
        frame = select_klines(source, symbol, query, now)
        if not frame.empty:
            last_open = int(frame["timestamp"].iloc[-1])
            frame = frame[frame["timestamp"] > last_open + tf - DAY_MS - 1].reset_index(drop=True)
        return frame, tf
    return empty_candles(), timeframe_ms("1h")


def _num(x: float) -> str:
    text = repr(x)
    return np.format_float_positional(x, trim="-") if "e" in text else text


@dataclass
class BinanceApi:
    """Answers the public endpoints for one source: ``(status, JSON payload)`` per request.

    ``delisted`` markets are listed with status BREAK; ``removed`` ones are not served at all."""

    source: CandleSource
    delisted: frozenset[str] = field(default_factory=frozenset)
    removed: frozenset[str] = field(default_factory=frozenset)

    exchange = "binance"
    paths = PATHS
    row_layout = BINANCE_ROWS
    rate_limit_body = RATE_LIMIT_BODY
    system_error = SYSTEM_ERROR

    def __post_init__(self) -> None:
        self.delisted, self.removed = frozenset(self.delisted), frozenset(self.removed)
        self.symbols = served_markets(self.source, self.delisted, self.removed, market_id)

    def answer(self, endpoint: str, params: Mapping[str, Sequence[str]], now: int) -> tuple[int, Any]:
        try:
            if endpoint == "ping":
                return 200, {}
            if endpoint == "time":
                return 200, {"serverTime": now}
            if endpoint == "exchangeInfo":
                return 200, exchange_info(list(self.symbols.values()), now, self.delisted)
            if endpoint == "ticker24hr":
                return 200, self.tickers(params, now)
            if endpoint == "klines":
                return 200, self.klines(params, now)
        except ApiError as error:
            return error.status, error.body()
        raise ValueError(f"not a Binance endpoint: {endpoint!r}")

    def candle_page(self, endpoint: str, params: Mapping[str, Sequence[str]], status: int, payload: Any):
        """The rows of a successful klines answer, for data faults: ``(rows, tf_ms, rebuild)``."""
        if endpoint != "klines" or status != 200:
            return None
        return payload, None, lambda rows: rows

    def tickers(self, params: Mapping[str, Sequence[str]], now: int) -> dict[str, Any] | list[dict[str, Any]]:
        """``/api/v3/ticker/24hr``: one object for ``symbol``, else a list (all, or ``symbols``)."""
        one = (params.get("symbol") or [""])[-1]
        many = (params.get("symbols") or [""])[-1]
        if one:
            return self._ticker(one, now)
        if many:
            try:
                ids = json.loads(many)
            except ValueError:
                raise ApiError(-1100, "Illegal characters found in parameter 'symbols'.") from None
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ApiError(-1100, "Illegal characters found in parameter 'symbols'.")
            return [self._ticker(i, now) for i in ids]
        return [self._ticker(i, now) for i in self.symbols]

    def _ticker(self, symbol_id: str, now: int) -> dict[str, Any]:
        symbol = self.symbols.get(symbol_id)
        if symbol is None:
            raise ApiError(-1121, "Invalid symbol.")
        return ticker_24hr(self.source, symbol, now, trading=symbol not in self.delisted)

    def klines(self, params: Mapping[str, Sequence[str]], now: int) -> list[list[Any]]:
        query = parse_klines_query(params)
        symbol = self.symbols.get(query.symbol_id)
        if symbol is None:
            raise ApiError(-1121, "Invalid symbol.")
        frame = select_klines(self.source, symbol, query, now)
        return kline_rows(frame, timeframe_ms(query.interval))
