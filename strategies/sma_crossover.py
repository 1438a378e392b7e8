"""SMA crossover: trend following on two simple moving averages of the close."""

from __future__ import annotations

import backtrader as bt

from atlas_pipeline.research.strategy_base import LONG, SHORT, AtlasStrategy
from atlas_pipeline.research.vector import Bars, Signals, indicators


class SmaCrossover(AtlasStrategy):
    """Long when the fast SMA crosses above the slow one; flat (or short) when it crosses below.

    Acts on the cross itself (backtrader's ``CrossOver``: the last non-zero difference changes
    sign), so the first position is taken at the first cross after warm-up, not at once.

    Params:
        fast (int, default 20): bars in the fast SMA; must be >= 1 and < slow.
        slow (int, default 50): bars in the slow SMA.
        allow_short (bool, default False): short on a downward cross instead of going flat.
    """

    params = (("fast", 20), ("slow", 50))

    def __init__(self) -> None:
        super().__init__()
        self.check_params(self.p)
        fast = bt.ind.SMA(self.data.close, period=self.p.fast)
        slow = bt.ind.SMA(self.data.close, period=self.p.slow)
        self.cross = bt.ind.CrossOver(fast, slow, plot=False)  # a signal, not a chart line

    @staticmethod
    def check_params(p) -> None:
        if not 1 <= p.fast < p.slow:
            raise ValueError(f"need 1 <= fast < slow, got fast={p.fast} slow={p.slow}")

    @classmethod
    def vector_signals(cls, bars: Bars, p) -> Signals:
        """The vectorized twin of ``next`` (``research/vector``): the same cross on every bar."""
        cls.check_params(p)
        fast = bars.cached(("sma", p.fast), lambda: indicators.sma(bars.close, p.fast))
        slow = bars.cached(("sma", p.slow), lambda: indicators.sma(bars.close, p.slow))
        cross = indicators.crossover(fast, slow, p.slow)
        return Signals(first=p.slow, long_entry=cross > 0, short_entry=cross < 0)

    def next(self) -> None:
        cross = self.cross[0]
        if cross > 0:
            self.target(LONG)
        elif cross < 0:
            self.target(SHORT)
