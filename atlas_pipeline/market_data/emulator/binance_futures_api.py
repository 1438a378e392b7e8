"""Binance USDⓈ-M futures public REST, the part ccxt's ``binance`` (4.5.90) uses for perpetual
swaps: markets, trade and mark-price candles, funding rate history and the current funding rate.
Pure functions of (request, source, clock), like ``binance_api``; ``BinanceSpotAndFutures`` serves
both APIs from one server, as ccxt's ``binance`` calls both hosts (``api`` and ``fapi``).

What ccxt calls (with ``options={"fetchMarkets": {"types": ["spot", "linear"]}}``):
- ``load_markets`` -> ``GET /fapi/v1/exchangeInfo`` (and the spot one); a symbol with
  ``contractType: PERPETUAL`` and ``marginAsset`` is the swap ``BASE/QUOTE:SETTLE``;
- ``fetch_ohlcv(swap)`` -> ``GET /fapi/v1/klines``, and with ``params={"price": "mark"}``
  ``GET /fapi/v1/markPriceKlines`` (same parameters and rows as spot klines; mark rows carry
  ``"0"`` for every volume);
- ``fetch_funding_rate_history`` -> ``GET /fapi/v1/fundingRate`` with ``symbol``,
  ``startTime``, ``endTime``, ``limit`` (default 100, at most 1000): events with
  ``startTime <= fundingTime <= endTime``, oldest first, the first ``limit`` of them (only
  ``endTime``, or neither: the latest ``limit``); rows ``{"symbol", "fundingTime",
  "fundingRate", "markPrice"}``;
- ``fetch_funding_rate`` -> ``GET /fapi/v1/premiumIndex`` (``symbol``: one object, else a list).

Which swaps: every market of the source whose symbol is a swap (``BTC/USDT:USDT``, from a file
``binance_BTC-USDT_USDT_1h.parquet``), and the perpetual of every spot market (``ETH/BTC`` ->
``ETH/BTC:BTC``) over the same trade candles, so the real spot files and the synthetic markets
double as perps. Mark prices are the trade candles times ``1 + basis(t)``, a deterministic basis
of at most 0.05 % that depends on the candle's open time only. Funding events are every 8 hours
(00:00, 08:00, 16:00 UTC) from the market's first candle to now, with seeded rates of both signs
(mean 0.01 %), the same for a (seed, symbol, time) whatever is asked.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from atlas_pipeline.market_data.candles import timeframe_ms
from atlas_pipeline.market_data.emulator.binance_api import (
    PATHS as SPOT_PATHS,
    RATE_LIMIT_BODY,
    SYSTEM_ERROR,
    ApiError,
    BinanceApi,
    KlinesQuery,
    _num,
    kline_rows,
    market_id,
    parse_klines_query,
    select_klines,
)
from atlas_pipeline.market_data.emulator.faults import BINANCE_ROWS
from atlas_pipeline.market_data.emulator.sources import CandleSource, UnsupportedTimeframe

FUNDING_INTERVAL_MS = 8 * 3_600_000
PATHS = {
    "/fapi/v1/exchangeInfo": "fapiExchangeInfo",
    "/fapi/v1/klines": "fapiKlines",
    "/fapi/v1/markPriceKlines": "markPriceKlines",
    "/fapi/v1/fundingRate": "fundingRate",
    "/fapi/v1/premiumIndex": "premiumIndex",
    "/fapi/v1/time": "fapiTime",
    "/fapi/v1/ping": "fapiPing",
}
CANDLE_ENDPOINTS = ("fapiKlines", "markPriceKlines")
FUNDING_DEFAULT_LIMIT = 100
FUNDING_MAX_LIMIT = 1000
BASIS = 5e-4
"""Largest relative gap between mark and trade price."""
_LISTING_TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h", "1d")


def swap_symbol(symbol: str) -> str:
    """The linear perpetual of a spot symbol (``ETH/BTC`` -> ``ETH/BTC:BTC``); swaps unchanged."""
    return symbol if ":" in symbol else f"{symbol}:{symbol.split('/')[1]}"


def basis(stamps: np.ndarray) -> np.ndarray:
    """Mark / trade - 1 at open times ``stamps``: two slow waves, deterministic in time only."""
    days = stamps.astype(np.float64) / 86_400_000
    return BASIS * (0.6 * np.sin(2 * math.pi * days / 3.1) + 0.4 * np.sin(2 * math.pi * days / 0.37))


def mark_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Mark-price candles over trade candles: prices times ``1 + basis``, no volume."""
    factor = 1 + basis(frame["timestamp"].to_numpy(np.int64))
    mark = frame.copy()
    for column in ("open", "high", "low", "close"):
        mark[column] = frame[column].to_numpy() * factor
    mark["volume"] = 0.0
    return mark


def funding_rates(seed: int, symbol: str, times: np.ndarray) -> np.ndarray:
    """Seeded rates at funding times: 0.01 % + 0.03 % noise, clipped to Binance's +-0.75 %,
    rounded to 8 decimals like the API's strings."""
    key = zlib.crc32(symbol.encode())
    z = np.array([np.random.default_rng([seed, key, 3, int(t) // FUNDING_INTERVAL_MS]).standard_normal() for t in times])
    return np.round(np.clip(1e-4 + 3e-4 * z, -0.0075, 0.0075), 8) if len(times) else np.empty(0)


def _symbol_info(symbol: str, onboard: int | None, status: str) -> dict[str, Any]:
    base, quote = symbol.split(":")[0].split("/")
    settle = symbol.split(":")[1]
    return {
        "symbol": base + quote,
        "pair": base + quote,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": onboard or 0,
        "status": status,
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": base,
        "quoteAsset": quote,
        "marginAsset": settle,
        "pricePrecision": 8,
        "quantityPrecision": 3,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "1000000", "tickSize": "0.00000001"},
            {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000000", "stepSize": "0.001"},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "1000000", "stepSize": "0.001"},
            {"filterType": "MIN_NOTIONAL", "notional": "5"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    }


@dataclass
class BinanceFuturesApi:
    """Answers the USDⓈ-M endpoints for the swaps of one source (see the module docstring).
    ``delisted``/``removed`` name swap symbols; ``seed`` seeds the funding rates."""

    source: CandleSource
    delisted: frozenset[str] = field(default_factory=frozenset)
    removed: frozenset[str] = field(default_factory=frozenset)
    seed: int = 0

    paths = PATHS
    row_layout = BINANCE_ROWS
    rate_limit_body = RATE_LIMIT_BODY
    system_error = SYSTEM_ERROR

    def __post_init__(self) -> None:
        self.delisted, self.removed = frozenset(self.delisted), frozenset(self.removed)
        underlying = {swap_symbol(m): m for m in self.source.markets()}
        unknown = sorted((self.delisted | self.removed) - set(underlying))
        if unknown:
            raise ValueError(f"delisted/removed swaps {unknown} are not served ({sorted(underlying)})")
        self.underlying = {s: m for s, m in underlying.items() if s not in self.removed}
        self.symbols = {market_id(s): s for s in self.underlying}

    def answer(self, endpoint: str, params: Mapping[str, Sequence[str]], now: int) -> tuple[int, Any]:
        handlers = {
            "fapiPing": lambda: {},
            "fapiTime": lambda: {"serverTime": now},
            "fapiExchangeInfo": lambda: self.exchange_info(now),
            "fapiKlines": lambda: self.klines(params, now, mark=False),
            "markPriceKlines": lambda: self.klines(params, now, mark=True),
            "fundingRate": lambda: self.funding_history(params, now),
            "premiumIndex": lambda: self.premium_index(params, now),
        }
        if endpoint not in handlers:
            raise ValueError(f"not a Binance futures endpoint: {endpoint!r}")
        try:
            return 200, handlers[endpoint]()
        except ApiError as error:
            return error.status, error.body()

    def candle_page(self, endpoint: str, params: Mapping[str, Sequence[str]], status: int, payload: Any):
        """The rows of a successful candle answer, for data faults (as ``BinanceApi``'s)."""
        return (payload, None, lambda rows: rows) if endpoint in CANDLE_ENDPOINTS and status == 200 else None

    def exchange_info(self, now: int) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": now,
            "futuresType": "U_MARGINED",
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}],
            "exchangeFilters": [],
            "assets": [],
            "symbols": [
                _symbol_info(s, self.listing(s), "SETTLING" if s in self.delisted else "TRADING") for s in self.underlying
            ],
        }

    def listing(self, swap: str) -> int | None:
        """Open time of the market's first candle at the finest timeframe the source serves."""
        for timeframe in _LISTING_TIMEFRAMES:
            try:
                return self.source.first_candle(self.underlying[swap], timeframe)
            except UnsupportedTimeframe:
                continue
        return None

    def _swap(self, params: Mapping[str, Sequence[str]], required: bool = True) -> str | None:
        values = params.get("symbol")
        symbol_id = values[-1] if values else ""
        if not symbol_id:
            if required:
                raise ApiError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
            return None
        swap = self.symbols.get(symbol_id)
        if swap is None:
            raise ApiError(-1121, "Invalid symbol.")
        return swap

    def klines(self, params: Mapping[str, Sequence[str]], now: int, mark: bool) -> list[list[Any]]:
        query = parse_klines_query(params)
        swap = self._swap(params)
        frame = select_klines(self.source, self.underlying[swap], query, now)
        tf = timeframe_ms(query.interval)
        if not mark:
            return kline_rows(frame, tf)
        rows = kline_rows(mark_frame(frame), tf)
        for row in rows:  # mark-price klines carry no volumes
            row[5] = row[7] = row[9] = row[10] = "0"
        return rows

    def funding_times(self, swap: str, now: int) -> np.ndarray:
        listed = self.listing(swap)
        if listed is None:
            return np.empty(0, np.int64)
        first = -(-listed // FUNDING_INTERVAL_MS) * FUNDING_INTERVAL_MS
        return np.arange(first, now + 1, FUNDING_INTERVAL_MS, dtype=np.int64)

    def funding_history(self, params: Mapping[str, Sequence[str]], now: int) -> list[dict[str, Any]]:
        swap = self._swap(params)
        query = parse_klines_query({**params, "interval": ["8h"], "limit": params.get("limit") or [str(FUNDING_DEFAULT_LIMIT)]})
        if query.limit > FUNDING_MAX_LIMIT:
            raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        times = self.funding_times(swap, now)
        lo = 0 if query.start_time is None else int(np.searchsorted(times, query.start_time, side="left"))
        hi = len(times) if query.end_time is None else int(np.searchsorted(times, query.end_time, side="right"))
        picked = times[lo:hi][: query.limit] if query.start_time is not None else times[lo:hi][-query.limit :]
        rates = funding_rates(self.seed, swap, picked)
        return [
            {"symbol": market_id(swap), "fundingTime": int(t), "fundingRate": f"{r:.8f}", "markPrice": ""}
            for t, r in zip(picked.tolist(), rates.tolist())
        ]

    def premium_index(self, params: Mapping[str, Sequence[str]], now: int) -> dict[str, Any] | list[dict[str, Any]]:
        swap = self._swap(params, required=False)
        if swap is None:
            return [self._premium(s, now) for s in self.underlying]
        return self._premium(swap, now)

    def _premium(self, swap: str, now: int) -> dict[str, Any]:
        times = self.funding_times(swap, now)
        last_rate = funding_rates(self.seed, swap, times[-1:])
        frame = select_klines(self.source, self.underlying[swap], KlinesQuery(market_id(swap), "1h", 1, None, None), now) if len(times) else None
        close = float(mark_frame(frame)["close"].iloc[-1]) if frame is not None and len(frame) else 0.0
        return {
            "symbol": market_id(swap),
            "markPrice": _num(close),
            "indexPrice": _num(close),
            "estimatedSettlePrice": _num(close),
            "lastFundingRate": f"{float(last_rate[0]) if len(last_rate) else 0.0:.8f}",
            "interestRate": "0.00010000",
            "nextFundingTime": (now // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS,
            "time": now,
        }


class _SpotMarkets:
    """The spot markets of a source (its swaps are served by the futures API)."""

    def __init__(self, source: CandleSource) -> None:
        self.source = source

    def markets(self) -> list[str]:
        return [m for m in self.source.markets() if ":" not in m]

    def candles(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        return self.source.candles(symbol, timeframe, start_ms, end_ms)

    def first_candle(self, symbol: str, timeframe: str) -> int | None:
        return self.source.first_candle(symbol, timeframe)


class BinanceSpotAndFutures(BinanceApi):
    """Binance spot (``BinanceApi``, over the source's spot markets) and USDⓈ-M futures
    (``BinanceFuturesApi``, as ``futures``) on one server; ``delisted``/``removed`` may name spot
    markets and swaps; ``funding_seed`` seeds the funding rates."""

    def __init__(
        self,
        source: CandleSource,
        delisted: frozenset[str] = frozenset(),
        removed: frozenset[str] = frozenset(),
        funding_seed: int = 0,
    ) -> None:
        swaps = frozenset(n for n in delisted | removed if ":" in n)
        self.futures = BinanceFuturesApi(source, delisted & swaps, removed & swaps, funding_seed)
        super().__init__(_SpotMarkets(source), delisted - swaps, removed - swaps)
        self.paths = {**SPOT_PATHS, **PATHS}

    def answer(self, endpoint: str, params: Mapping[str, Sequence[str]], now: int) -> tuple[int, Any]:
        if endpoint in PATHS.values():
            return self.futures.answer(endpoint, params, now)
        return super().answer(endpoint, params, now)

    def candle_page(self, endpoint: str, params: Mapping[str, Sequence[str]], status: int, payload: Any):
        if endpoint in PATHS.values():
            return self.futures.candle_page(endpoint, params, status, payload)
        return super().candle_page(endpoint, params, status, payload)
