"""A seeded, deterministic market: years of 1m candles per symbol, generated lazily and cheaply.

The price path has two levels so any day can be generated without the days before it:
- one log price per UTC midnight, a mean-reverting random walk per symbol (seeded by (seed,
  symbol)), computed once in blocks of 1,024 days: tiny, and fixed however far "now" moves;
- inside a day, a Brownian bridge of 1,440 minutes between that day's and the next day's
  midnight prices, seeded by (seed, symbol, day). A minute's close is the next minute's open,
  across midnight too.
Every coarser timeframe is the aggregate of these minutes, so timeframes agree exactly. The
minute containing "now" is the open candle: its close, wicks and volume are scaled by the elapsed
fraction of the minute, so it only grows towards the finished candle as time passes.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from atlas_pipeline.market_data.candles import DAY_MS, to_ms
from atlas_pipeline.market_data.emulator.sources import (
    CandleArrays,
    UnknownSymbol,
    aggregate,
    check_multiple,
)

MINUTE_MS = 60_000
MINUTES_PER_DAY = DAY_MS // MINUTE_MS
_BLOCK_DAYS = 1024
_MEAN_REVERSION = 0.002  # per day: a half-life of about a year keeps prices in a plausible band

DEFAULT_MARKETS: dict[str, str] = {
    "BTC/USDT": "2017-08-17",
    "ETH/USDT": "2017-08-17",
    "ETH/BTC": "2017-08-17",
    "BNB/USDT": "2017-11-06",
    "LTC/USDT": "2017-12-13",
    "ADA/USDT": "2018-04-17",
    "XRP/USDT": "2018-05-04",
    "DOGE/USDT": "2019-07-05",
    "SOL/USDT": "2020-08-11",
}
# Roughly the real prices at listing, so charts look familiar; other symbols get one from their hash.
_START_PRICES: dict[str, float] = {
    "BTC/USDT": 4300.0,
    "ETH/USDT": 300.0,
    "ETH/BTC": 0.07,
    "BNB/USDT": 1.5,
    "LTC/USDT": 300.0,
    "ADA/USDT": 0.25,
    "XRP/USDT": 0.45,
    "DOGE/USDT": 0.0025,
    "SOL/USDT": 3.0,
}


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def price_decimals(price: float) -> int:
    """A market's fixed tick as decimals: about 8 significant digits at ``price``, never finer
    than Binance's 1e-8."""
    return int(min(max(7 - math.floor(math.log10(price)), 0), 8))


def round_prices(prices: np.ndarray, decimals: int) -> np.ndarray:
    """Prices on the tick grid, at least one tick. Rounding is monotonic, so high >= open/close
    >= low survives it."""
    scale = 10.0**decimals
    return np.maximum(np.round(prices * scale) / scale, 1.0 / scale)


@dataclass
class _Market:
    """One symbol's parameters and its lazily extended midnight log prices."""

    seed: int
    symbol: str
    listing_ms: int
    key: int = field(init=False)
    start_price: float = field(init=False)
    decimals: int = field(init=False)
    daily_sigma: float = field(init=False)
    units_per_minute: float = field(init=False)
    _midnights: np.ndarray = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.key = zlib.crc32(self.symbol.encode())
        u = np.random.default_rng([self.seed, self.key, 2]).random(2)
        self.start_price = _START_PRICES.get(self.symbol, float(10 ** (4 * u[0] - 2)))
        self.decimals = price_decimals(self.start_price)
        self.daily_sigma = 0.03 + 0.03 * float(u[1])
        self.units_per_minute = 1000.0 / math.sqrt(self.start_price)
        self._midnights = np.empty(0)

    @property
    def listing_day(self) -> int:
        return self.listing_ms // DAY_MS

    def midnight_log_prices(self, day: int) -> tuple[float, float]:
        """Log prices at the start of ``day`` and of the next day."""
        k = day - self.listing_day
        with self._lock:
            while len(self._midnights) < k + 2:
                self._extend()
            return float(self._midnights[k]), float(self._midnights[k + 1])

    def _extend(self) -> None:
        block = len(self._midnights) // _BLOCK_DAYS
        shocks = np.random.default_rng([self.seed, self.key, 0, block]).standard_normal(_BLOCK_DAYS)
        anchor = math.log(self.start_price)
        x = self._midnights[-1] if len(self._midnights) else anchor
        out = np.empty(_BLOCK_DAYS)
        for i in range(_BLOCK_DAYS):  # sequential recursion; once per 1,024 days and symbol
            out[i] = x
            x = x + self.daily_sigma * shocks[i] - _MEAN_REVERSION * (x - anchor)
        self._midnights = np.concatenate((self._midnights, out))


@lru_cache(maxsize=256)
def _minute_day(seed: int, key: int, day: int, l0: float, l1: float, sigma: float, p0: float, units: float, decimals: int) -> CandleArrays:
    """The 1,440 minutes of one UTC day; pure in its arguments, hence cacheable."""
    rng = np.random.default_rng([seed, key, 1, day])
    z = rng.standard_normal((4, MINUTES_PER_DAY))
    step = sigma / math.sqrt(MINUTES_PER_DAY)
    walk = np.zeros(MINUTES_PER_DAY + 1)
    np.cumsum(z[0] * step, out=walk[1:])
    t = np.arange(MINUTES_PER_DAY + 1) / MINUTES_PER_DAY
    log_path = l0 + t * (l1 - l0) + walk - t * walk[-1]
    log_path[0], log_path[-1] = l0, l1  # exact chaining to the neighbouring days
    path = round_prices(np.exp(log_path), decimals)
    open_, close = path[:-1], path[1:]
    top, bottom = np.maximum(open_, close), np.minimum(open_, close)
    high = np.maximum(round_prices(top * np.exp(np.abs(z[1]) * step * 0.8), decimals), top)
    low = np.minimum(round_prices(bottom * np.exp(-np.abs(z[2]) * step * 0.8), decimals), bottom)
    activity = 0.5 + np.abs(np.log(close / open_)) / step
    volume = np.round(units * (p0 / open_) * np.exp(0.5 * z[3] - 0.125) * activity, 8)
    stamps = day * DAY_MS + np.arange(MINUTES_PER_DAY, dtype="int64") * MINUTE_MS
    return CandleArrays(stamps, np.column_stack((open_, high, low, close, volume)))


def _closed_day(seed: int, key: int, day: int, l0: float, l1: float, sigma: float, p0: float, units: float, decimals: int, from_ms: int, tf_ms: int) -> CandleArrays:
    """A finished day (from ``from_ms``, the listing minute on the listing day) at ``tf_ms``."""
    minutes = _minute_day(seed, key, day, l0, l1, sigma, p0, units, decimals).window(from_ms, (day + 1) * DAY_MS)
    return minutes if tf_ms == MINUTE_MS else aggregate(minutes, tf_ms)


# Finished days at 1h and coarser are a few rows each: keep many, so re-paging history is instant.
# Finer timeframes are rebuilt from the (smaller) minute cache instead of holding years of rows.
_closed_day_cached = lru_cache(maxsize=8192)(_closed_day)
_CACHED_FROM_MS = 3_600_000


def _open_minute(minutes: CandleArrays, fraction: float, decimals: int) -> CandleArrays:
    """The last minute as it looks ``fraction`` of the way through it."""
    values = minutes.values.copy()
    o, h, l, c, v = values[-1]
    close = o + fraction * (c - o)
    high = max(o, close) + fraction * (h - max(o, c))
    low = min(o, close) - fraction * (min(o, c) - l)
    close, high, low = round_prices(np.array([close, high, low]), decimals)
    values[-1] = (o, max(high, o, close), min(low, o, close), close, round(fraction * v, 8))
    return CandleArrays(minutes.timestamp, values)


class SyntheticCandleSource:
    """Deterministic candles for ``markets`` (ccxt symbol -> listing date or datetime, UTC) from
    the listing until ``now()`` (ms, the wall clock unless injected); same seed, same candles."""

    def __init__(
        self,
        seed: int,
        markets: Mapping[str, str | dt.date] | None = None,
        now: Callable[[], int] | None = None,
    ) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"synthetic seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self._clock = now or wall_clock_ms
        listings = DEFAULT_MARKETS if markets is None else markets
        self._markets = {symbol: _Market(self.seed, symbol, to_ms(listed)) for symbol, listed in listings.items()}

    def now(self) -> int:
        return int(self._clock())

    def markets(self) -> list[str]:
        return list(self._markets)

    def listing_ms(self, symbol: str) -> int:
        return self._market(symbol).listing_ms

    def first_candle(self, symbol: str, timeframe: str) -> int | None:
        tf_ms = check_multiple(timeframe, MINUTE_MS)
        listing = self._market(symbol).listing_ms
        return None if listing > self.now() else listing - listing % tf_ms

    def candles(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        return self.candle_arrays(symbol, timeframe, start_ms, end_ms).to_frame()

    def candle_arrays(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> CandleArrays:
        tf_ms = check_multiple(timeframe, MINUTE_MS)
        market = self._market(symbol)
        now = self.now()
        first_minute = market.listing_ms - market.listing_ms % MINUTE_MS
        now_minute = now - now % MINUTE_MS
        # candles are whole buckets: minutes from the first requested bucket to the end of the last
        lo = max(-(-start_ms // tf_ms) * tf_ms, first_minute)
        hi = min(-(-end_ms // tf_ms) * tf_ms, now_minute + MINUTE_MS)
        if lo >= hi:
            return CandleArrays.concat([])
        parts = []
        for day in range(lo // DAY_MS, (hi - 1) // DAY_MS + 1):
            l0, l1 = market.midnight_log_prices(day)
            args = (self.seed, market.key, day, l0, l1, market.daily_sigma, market.start_price, market.units_per_minute, market.decimals)
            day_from = max(day * DAY_MS, first_minute)
            if (day + 1) * DAY_MS <= now_minute:
                closed_day = _closed_day_cached if tf_ms >= _CACHED_FROM_MS else _closed_day
                parts.append(closed_day(*args, day_from, tf_ms))
                continue
            minutes = _minute_day(*args).window(day_from, now_minute + MINUTE_MS)
            minutes = _open_minute(minutes, (now - now_minute) / MINUTE_MS, market.decimals)
            parts.append(minutes if tf_ms == MINUTE_MS else aggregate(minutes, tf_ms))
        return CandleArrays.concat(parts).window(start_ms, end_ms)

    def _market(self, symbol: str) -> _Market:
        try:
            return self._markets[symbol]
        except KeyError:
            raise UnknownSymbol(symbol) from None
