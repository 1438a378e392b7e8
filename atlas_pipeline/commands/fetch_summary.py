"""The one line ``atlas fetch`` ends with: what the range holds now, what is new, how long it took.

Counted from the candle store's coverage (footers only) before and after the runs, so it says
what was stored, whatever the runs reported.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

from atlas_pipeline.defs.run_results import LaunchedRun
from atlas_pipeline.market_data.store import CandleStore


class FetchSummary:
    """Made before a fetch (counts the range's stored candles); ``line`` after it counts again."""

    def __init__(self, exchange: str, symbols: Sequence[str], timeframes: Sequence[str], start: dt.date, end: dt.date) -> None:
        self.exchange, self.symbols, self.timeframes, self.start, self.end = exchange, symbols, timeframes, start, end
        self.store = CandleStore()
        self.before = self._counts()
        self.began = time.perf_counter()

    def _counts(self) -> tuple[int, int]:
        """(candles, missing days: days in the range not stored) over every market and timeframe."""
        candles = unstored = 0
        days = (self.end - self.start).days
        for symbol in self.symbols:
            for timeframe in self.timeframes:
                coverage = self.store.coverage(self.exchange, symbol, timeframe, self.start, self.end)
                candles += int(coverage["rows"].sum())
                unstored += days - len(coverage)
        return candles, unstored

    def line(self, runs: Sequence[LaunchedRun]) -> str:
        candles, unstored = self._counts()
        ok = sum(run.success for run in runs)
        runs_text = f"{len(runs)} run{'s' if len(runs) != 1 else ''} ({ok} ok, {len(runs) - ok} failed)" if runs else "no run needed"
        return (
            f"atlas fetch: {len(self.symbols)} market(s) x {len(self.timeframes)} timeframe(s), "
            f"{self.start}..{self.end - dt.timedelta(days=1)}: {runs_text}; {candles:,} candles stored in the range "
            f"({candles - self.before[0]:+,}), {unstored:,} market-days not stored; {time.perf_counter() - self.began:.1f} s"
        )
