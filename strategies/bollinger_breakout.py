"""Bollinger-band breakout: follow a close outside the bands until it returns to the mean."""

from __future__ import annotations

import backtrader as bt

from atlas_pipeline.research.strategy_base import FLAT, LONG, SHORT, AtlasStrategy


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
        if self.p.period < 2 or self.p.devfactor <= 0:
            raise ValueError(f"need period >= 2 and devfactor > 0, got {self.p.period}, {self.p.devfactor}")
        self.bands = bt.ind.BollingerBands(self.data.close, period=self.p.period, devfactor=self.p.devfactor)

    def next(self) -> None:
        close, held, bands = self.data.close[0], self.position.size, self.bands
        if close > bands.top[0]:
            self.target(LONG)
        elif close < bands.bot[0]:
            self.target(SHORT)
        elif (held > 0 and close < bands.mid[0]) or (held < 0 and close > bands.mid[0]):
            self.target(FLAT)
