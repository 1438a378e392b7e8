"""Bollinger-band breakout: follow a close outside the bands until it returns to the mean."""

from __future__ import annotations

import backtrader as bt

from atlas_pipeline.research.strategy_base import FLAT, LONG, SHORT, AtlasStrategy
from atlas_pipeline.research.vector import Bars, Signals, indicators


class BollingerBreakout(AtlasStrategy):
    """Long when the close breaks above the upper band, out when it closes below the middle band
    (the SMA); with ``allow_short``, short below the lower band, covered above the middle band.

    Params:
        period (int, default 20): bars in the middle band's SMA and the standard deviation; >= 2.
        devfactor (float, default 2.0): band width in standard deviations; > 0.
        allow_short (bool, default False): trade downside breakouts too.
    """

    params = (("period", 20), ("devfactor", 2.0))

    def __init__(self) -> None:
        super().__init__()
        self.check_params(self.p)
        self.bands = bt.ind.BollingerBands(self.data.close, period=self.p.period, devfactor=self.p.devfactor)

    @staticmethod
    def check_params(p) -> None:
        if p.period < 2 or p.devfactor <= 0:
            raise ValueError(f"need period >= 2 and devfactor > 0, got {p.period}, {p.devfactor}")

    @classmethod
    def vector_signals(cls, bars: Bars, p) -> Signals:
        """The vectorized twin of ``next`` (``research/vector``)."""
        cls.check_params(p)
        mid, top, bot = bars.cached(("bollinger", p.period, p.devfactor),
                                    lambda: indicators.bollinger(bars.close, p.period, p.devfactor))
        close = bars.close
        return Signals(first=p.period - 1, long_entry=close > top, short_entry=close < bot,
                       long_exit=close < mid, short_exit=close > mid)

    def next(self) -> None:
        close, held, bands = self.data.close[0], self.position.size, self.bands
        if close > bands.top[0]:
            self.target(LONG)
        elif close < bands.bot[0]:
            self.target(SHORT)
        elif (held > 0 and close < bands.mid[0]) or (held < 0 and close > bands.mid[0]):
            self.target(FLAT)
