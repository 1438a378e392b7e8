"""The candle frame every layer passes around, and the time arithmetic on it.

A candle frame is a pandas DataFrame with exactly ``CANDLE_COLUMNS``: ``timestamp`` is the candle's
open time in integer milliseconds since the epoch (UTC), prices and volume are float64. Integer
milliseconds are what ccxt speaks and what Parquet stores compactly; convert to datetimes only at
the edges (charts, backtrader feeds).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import numpy as np
import pandas as pd

CANDLE_COLUMNS: tuple[str, ...] = ("timestamp", "open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
CANDLE_DTYPES: dict[str, str] = {"timestamp": "int64", **{c: "float64" for c in CANDLE_COLUMNS[1:]}}

DAY_MS = 86_400_000
_TIMEFRAME = re.compile(r"^([1-9][0-9]*)([smhdwM])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}


def timeframe_ms(timeframe: str) -> int:
    """Length of one candle in ms for a ccxt timeframe string such as ``5m`` or ``1h``.

    Only timeframes that divide a UTC day evenly are accepted: day partitions must hold whole
    candles, so ``1w`` and ``1M`` (and oddities such as ``7m``) are refused with a clear error.
    """
    match = _TIMEFRAME.match(timeframe)
    if match is None or match.group(2) not in _UNIT_MS:
        raise ValueError(f"timeframe {timeframe!r} is not a ccxt timeframe such as '1m', '1h' or '1d'")
    ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if ms > DAY_MS or DAY_MS % ms != 0:
        raise ValueError(f"timeframe {timeframe!r} does not divide a UTC day into whole candles")
    return ms


def candles_per_day(timeframe: str) -> int:
    return DAY_MS // timeframe_ms(timeframe)


def to_ms(value: dt.datetime | dt.date | pd.Timestamp | str | int) -> int:
    """Milliseconds since the epoch for a date, a datetime (naive means UTC), a string or ms."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.tz_convert("UTC").value // 1_000_000)


def ms_to_iso(ms: int) -> str:
    """ISO 8601 UTC text of a ms timestamp, for metadata and YAML."""
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").isoformat()


def day_start_ms(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * DAY_MS


def day_of_ms(ms: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(ms) // DAY_MS)


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Days in ``[start, end)``."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def consecutive_ranges(days: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Sorted days as ``[start, end)`` ranges of consecutive days."""
    ranges: list[tuple[dt.date, dt.date]] = []
    for day in days:
        if ranges and ranges[-1][1] == day:
            ranges[-1] = (ranges[-1][0], day + dt.timedelta(days=1))
        else:
            ranges.append((day, day + dt.timedelta(days=1)))
    return ranges


def round_to_second(stamps: Any) -> Any:
    """Funding times rounded to the second: Binance stamps some events (over REST and in its
    archive files) a few ms after the grid time."""
    return (stamps + 500) // 1000 * 1000


def empty_candles() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in CANDLE_DTYPES.items()})


def normalize_candles(frame: pd.DataFrame) -> pd.DataFrame:
    """Exactly ``CANDLE_COLUMNS`` with their dtypes, sorted by time, one row per timestamp.

    Exchanges answer pages that overlap and sometimes repeat or reorder rows; the last row seen for
    a timestamp wins, which is the newest answer when pages are concatenated in request order.
    """
    if frame.empty:
        return empty_candles()
    out = frame.loc[:, list(CANDLE_COLUMNS)].astype(CANDLE_DTYPES)
    out = out.drop_duplicates(subset="timestamp", keep="last").sort_values("timestamp", kind="stable")
    return out.reset_index(drop=True)


def split_by_day(frame: pd.DataFrame) -> dict[dt.date, pd.DataFrame]:
    """Group a candle frame into one frame per UTC day (days without rows are absent)."""
    if frame.empty:
        return {}
    day_index = frame["timestamp"].to_numpy() // DAY_MS
    boundaries = np.flatnonzero(np.diff(day_index)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(frame)]))
    epoch = dt.date(1970, 1, 1)
    return {
        epoch + dt.timedelta(days=int(day_index[s])): frame.iloc[s:e].reset_index(drop=True)
        for s, e in zip(starts, ends)
    }


def symbol_key(symbol: str) -> str:
    """Partition and path key for a ccxt symbol: ``BTC/USDT`` -> ``BTC-USDT``."""
    return symbol.replace("/", "-").replace(":", "_")
