"""Candle store speed: 9 years (2017-01-01 -> 2026-01-01) of synthetic 1h and 1m candles.

Run: ``/work/venv/bin/python bench/store_read.py [ROOT]`` (default: a temp folder). Prints the
backfill write time (``write_days``), the whole-range read time (best of 3), the coverage time, the
time ``verify`` takes to check every file, and a one-day write into an existing file. Reads include
checking each file's CRC and the frame contract. ``bench/ingest.py`` reuses ``measure_store_reads``.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.candles import day_start_ms, split_by_day, timeframe_ms

START, END = dt.date(2017, 1, 1), dt.date(2026, 1, 1)
EXCHANGE, SYMBOL = "bench", "BTC/USDT"


def synthetic_candles(timeframe: str, start: dt.date = START, end: dt.date = END, seed: int = 0) -> pd.DataFrame:
    """A random walk with valid OHLC (low <= open, close <= high), on the timeframe's grid."""
    step = timeframe_ms(timeframe)
    timestamps = np.arange(day_start_ms(start), day_start_ms(end), step, dtype=np.int64)
    rng = np.random.default_rng(seed)
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 1e-3, len(timestamps))))
    open_ = np.concatenate(([close[0]], close[:-1]))
    spread = 1 + rng.random(len(timestamps)) * 1e-3
    return pd.DataFrame(
        {
            "timestamp": timestamps,
            "open": open_,
            "high": np.maximum(open_, close) * spread,
            "low": np.minimum(open_, close) / spread,
            "close": close,
            "volume": rng.random(len(timestamps)) * 10,
        }
    )


def _best_of(fn: Callable[[], object], runs: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(runs):
        began = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - began)
    return best, result


def measure_store_reads(root: str, timeframes: tuple[str, ...] = ("1h", "1m")) -> dict[str, float]:
    """Backfill each timeframe into ``root`` and time write, read, coverage and a one-day rewrite.

    Returns seconds (and row counts) keyed like ``write 9y 1h``, ``read 9y 1h``, ``rows 9y 1h``.
    """
    store = CandleStore(root)
    numbers: dict[str, float] = {}
    for timeframe in timeframes:
        days = split_by_day(synthetic_candles(timeframe))
        began = time.perf_counter()
        store.write_days(EXCHANGE, SYMBOL, timeframe, days, complete=True)
        numbers[f"write 9y {timeframe}"] = time.perf_counter() - began
        numbers[f"read 9y {timeframe}"], frame = _best_of(lambda: store.read(EXCHANGE, SYMBOL, timeframe, START, END))
        numbers[f"rows 9y {timeframe}"] = len(frame)
        numbers[f"coverage 9y {timeframe}"], _ = _best_of(lambda: store.coverage(EXCHANGE, SYMBOL, timeframe))
        numbers[f"verify 9y {timeframe}"], _ = _best_of(lambda: store.verify(EXCHANGE, SYMBOL, timeframe))
        day = dt.date(2024, 6, 1)
        numbers[f"write 1 day {timeframe}"], _ = _best_of(
            lambda: store.write_day(EXCHANGE, SYMBOL, timeframe, day, days[day], complete=True)
        )
    return numbers


def print_numbers(numbers: dict[str, float]) -> None:
    for key, value in numbers.items():
        if key.startswith("rows"):
            continue
        timeframe = key.rsplit(" ", 1)[1]
        rows = numbers.get(f"rows 9y {timeframe}")
        suffix = f" ({int(rows):,} rows)" if key.startswith("read") and rows is not None else ""
        print(f"store {key}: {value:.3f} s{suffix}")


def main() -> None:
    if len(sys.argv) > 1:
        print_numbers(measure_store_reads(sys.argv[1]))
        return
    with tempfile.TemporaryDirectory(prefix="atlas-store-bench-") as root:
        print_numbers(measure_store_reads(root))


if __name__ == "__main__":
    main()
