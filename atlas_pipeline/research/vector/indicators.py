"""backtrader's indicators, recomputed on numpy arrays to the same bits.

A twin's signal must flip on exactly the bars where backtrader's does; on real candles equal
prices repeat (a flat hour of a thin market), so a fast SMA equal to the slow one is common and a
sum rounded differently would invent a cross. So every indicator here follows backtrader's own
arithmetic in its ``once`` (runonce) path: ``Average`` is ``math.fsum(window) / period``
(reproduced by ``_fsum``, CPython's correctly rounded summation), ``ExponentialSmoothing`` is a
sequential ``prev * (1 - alpha) + x * alpha`` seeded with that average, ``StdDev`` is
``pow(abs(mean(x^2) - mean(x)^2), 0.5)``, ``Highest``/``Lowest`` are window max/min. Values
before an indicator's minimum period are NaN (backtrader leaves them unset).

numba compiles the two loops that cannot be vectorized without changing the rounding (fsum per
window, the recursive smoothing); ``cache=True`` keeps the machine code beside this file, so a
worker process loads it instead of compiling.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _add(partials: np.ndarray, n: int, x: float) -> int:
    """Add ``x`` to the exact sum held as non-overlapping ``partials[:n]`` (Shewchuk's grow step,
    as in CPython's ``math.fsum``); returns the new count."""
    i = 0
    for j in range(n):
        y = partials[j]
        if abs(x) < abs(y):
            x, y = y, x
        high = x + y
        low = y - (high - x)
        if low != 0.0:
            partials[i] = low
            i += 1
        x = high
    if x != 0.0:  # (CPython's inf/nan special cases are left out: candles are finite)
        partials[i] = x
        i += 1
    return i


@numba.njit(cache=True)
def _round(partials: np.ndarray, n: int) -> float:
    """The exact sum ``partials[:n]`` rounded once, half to even (the end of ``math.fsum``)."""
    high = 0.0
    if n > 0:
        n -= 1
        high = partials[n]
        low = 0.0
        while n > 0:
            x = high
            n -= 1
            y = partials[n]
            high = x + y
            low = y - (high - x)
            if low != 0.0:
                break
        if n > 0 and ((low < 0.0 and partials[n - 1] < 0.0) or (low > 0.0 and partials[n - 1] > 0.0)):
            y = low * 2.0
            x = high + y
            if y == x - high:
                high = x
    return high


@numba.njit(cache=True)
def _fsum(values: np.ndarray, lo: int, hi: int) -> float:
    """``math.fsum(values[lo:hi])``."""
    partials = np.empty(64)
    n = 0
    for k in range(lo, hi):
        n = _add(partials, n, values[k])
    return _round(partials, n)


@numba.njit(cache=True)
def _rolling_mean(values: np.ndarray, period: int, first: int) -> np.ndarray:
    """``math.fsum(window) / period`` per window, sliding an exact sum: add the new value,
    subtract the old one, round once. The exact sum is the same whatever its partials, and
    ``fsum`` is correctly rounded, so each value equals ``fsum`` of its window (the test checks)."""
    out = np.full(len(values), np.nan)
    if first >= len(values):
        return out
    partials = np.empty(128)
    n = 0
    for k in range(first - period + 1, first + 1):
        n = _add(partials, n, values[k])
    out[first] = _round(partials, n) / period
    for i in range(first + 1, len(values)):
        n = _add(partials, n, values[i])
        n = _add(partials, n, -values[i - period])
        out[i] = _round(partials, n) / period
    return out


def sma(values: np.ndarray, period: int, start: int = 0) -> np.ndarray:
    """backtrader ``SMA``/``Average``: ``fsum`` of the last ``period`` values / period, from the
    first index where the window lies inside ``values[start:]`` (``start``: the input's own
    first valid index)."""
    return _rolling_mean(np.ascontiguousarray(values, dtype=np.float64), int(period), int(start + period - 1))


@numba.njit(cache=True)
def _smoothing(values: np.ndarray, period: int, start: int, alpha: float) -> np.ndarray:
    out = np.full(len(values), np.nan)
    seed = start + period - 1
    if seed >= len(values):
        return out
    prev = _fsum(values, start, seed + 1) / period
    out[seed] = prev
    alpha1 = 1.0 - alpha
    for i in range(seed + 1, len(values)):
        prev = prev * alpha1 + values[i] * alpha
        out[i] = prev
    return out


def smoothed(values: np.ndarray, period: int, start: int = 0) -> np.ndarray:
    """backtrader ``SmoothedMovingAverage`` (Wilder's): alpha = 1 / period, seeded with the
    average of the first ``period`` valid values (those from ``start``)."""
    return _smoothing(np.ascontiguousarray(values, dtype=np.float64), int(period), int(start), 1.0 / period)


def rsi_safe(close: np.ndarray, period: int) -> np.ndarray:
    """backtrader ``RSI(period, safediv=True)``: Wilder's RSI; 0/0 (no moves) reads 50, x/0 (no
    losses) reads 100. Valid from index ``period``."""
    change = np.full(len(close), np.nan)
    change[1:] = close[1:] - close[:-1]
    back = np.full(len(close), np.nan)
    back[1:] = close[:-1] - close[1:]
    up = np.where(np.isnan(change), np.nan, np.maximum(change, 0.0))
    down = np.where(np.isnan(back), np.nan, np.maximum(back, 0.0))
    maup, madown = smoothed(up, period, 1), smoothed(down, period, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rs = np.where(madown == 0.0, np.where(maup == 0.0, 1.0, np.inf), maup / madown)
        return 100.0 - 100.0 / (1.0 + rs)


def stddev(values: np.ndarray, mean: np.ndarray, period: int) -> np.ndarray:
    """backtrader ``StdDev(data, mean, period)`` with ``safepow``: ``pow(|SMA(x^2) - mean^2|, 0.5)``
    (``np.power`` calls the C library's ``pow`` as Python's ``**`` does; ``sqrt`` may round
    differently)."""
    meansq = sma(values ** 2, period)
    return np.power(np.abs(meansq - mean ** 2), 0.5)


def bollinger(close: np.ndarray, period: int, devfactor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """backtrader ``BollingerBands``: (mid, top, bot) = SMA, SMA +- devfactor x StdDev."""
    mid = sma(close, period)
    width = devfactor * stddev(close, mid, period)
    return mid, mid + width, mid - width


def _window(values: np.ndarray, period: int, reduce) -> np.ndarray:
    out = np.full(len(values), np.nan)
    if len(values) >= period:
        out[period - 1 :] = reduce(np.lib.stride_tricks.sliding_window_view(values, period), axis=1)
    return out


def highest_before(values: np.ndarray, period: int) -> np.ndarray:
    """backtrader ``Highest(data(-1), period)``: max of the ``period`` values before each bar."""
    out = np.full(len(values), np.nan)
    out[1:] = _window(values[:-1], period, np.max)
    return out


def lowest_before(values: np.ndarray, period: int) -> np.ndarray:
    """backtrader ``Lowest(data(-1), period)``: min of the ``period`` values before each bar."""
    out = np.full(len(values), np.nan)
    out[1:] = _window(values[:-1], period, np.min)
    return out


@numba.njit(cache=True)
def _crossover(fast: np.ndarray, slow: np.ndarray, first: int) -> np.ndarray:
    out = np.zeros(len(fast), dtype=np.int8)
    if first >= len(fast):
        return out
    nzd = fast[first - 1] - slow[first - 1]  # the seed, zero included
    for i in range(first, len(fast)):
        diff = fast[i] - slow[i]
        if nzd < 0.0 and diff > 0.0:
            out[i] = 1
        elif nzd > 0.0 and diff < 0.0:
            out[i] = -1
        if diff != 0.0:
            nzd = diff
    return out


def crossover(fast: np.ndarray, slow: np.ndarray, first: int) -> np.ndarray:
    """backtrader ``CrossOver(fast, slow)`` from index ``first`` (the slower input's first valid
    index + 1): +1 where the last non-zero ``fast - slow`` before the bar was < 0 and
    ``fast > slow`` now, -1 for the mirror, else 0. ``NonZeroDifference`` is seeded at
    ``first - 1`` with the raw difference (zero included)."""
    return _crossover(np.ascontiguousarray(fast, dtype=np.float64), np.ascontiguousarray(slow, dtype=np.float64),
                      int(first))
