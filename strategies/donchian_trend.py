"""Donchian channel trend following (the Turtle rules without pyramiding)."""

from __future__ import annotations

import backtrader as bt

from atlas_pipeline.research.strategy_base import FLAT, LONG, SHORT, AtlasStrategy
from atlas_pipeline.research.vector import Bars, Signals, indicators


class DonchianTrend(AtlasStrategy):
    """Long when the close exceeds the highest high of the previous ``entry_period`` bars, out
    when it falls below the lowest low of the previous ``exit_period`` bars; with
    ``allow_short``, the mirror image (short below the entry channel's low, covered above the
    exit channel's high).

    Channels exclude the current bar, so a breakout is measured against the past only.

    Params:
        entry_period (int, default 20): bars in the breakout channel; >= 1.
        exit_period (int, default 10): bars in the (usually shorter) exit channel; >= 1.
        allow_short (bool, default False): trade downside breakouts too.
    """

    params = (("entry_period", 20), ("exit_period", 10))

    def __init__(self) -> None:
        super().__init__()
        self.check_params(self.p)
        high, low = self.data.high(-1), self.data.low(-1)
        # subplot=False: the channels are prices, drawn over the candles in the report
        entry, exit_ = self.p.entry_period, self.p.exit_period
        self.entry_high = bt.ind.Highest(high, period=entry, subplot=False, plotname="entry high")
        self.entry_low = bt.ind.Lowest(low, period=entry, subplot=False, plotname="entry low")
        self.exit_high = bt.ind.Highest(high, period=exit_, subplot=False, plotname="exit high")
        self.exit_low = bt.ind.Lowest(low, period=exit_, subplot=False, plotname="exit low")

    @staticmethod
    def check_params(p) -> None:
        if p.entry_period < 1 or p.exit_period < 1:
            raise ValueError(f"periods must be >= 1, got {p.entry_period}, {p.exit_period}")

    @classmethod
    def vector_signals(cls, bars: Bars, p) -> Signals:
        """The vectorized twin of ``next`` (``research/vector``)."""
        cls.check_params(p)
        high = lambda period: bars.cached(("highest", period), lambda: indicators.highest_before(bars.high, period))  # noqa: E731
        low = lambda period: bars.cached(("lowest", period), lambda: indicators.lowest_before(bars.low, period))  # noqa: E731
        close = bars.close
        return Signals(first=max(p.entry_period, p.exit_period),
                       long_entry=close > high(p.entry_period), short_entry=close < low(p.entry_period),
                       long_exit=close < low(p.exit_period), short_exit=close > high(p.exit_period))

    def next(self) -> None:
        close, held = self.data.close[0], self.position.size
        if close > self.entry_high[0]:
            self.target(LONG)
        elif close < self.entry_low[0]:
            self.target(SHORT)
        elif (held > 0 and close < self.exit_low[0]) or (held < 0 and close > self.exit_high[0]):
            self.target(FLAT)
