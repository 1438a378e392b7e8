"""RSI mean reversion: buy oversold, sell overbought, exit when RSI is back to neutral."""

from __future__ import annotations

import backtrader as bt
import numpy as np

from atlas_pipeline.research.strategy_base import FLAT, LONG, SHORT, AtlasStrategy
from atlas_pipeline.research.vector import Bars, Signals, indicators


class RsiMeanReversion(AtlasStrategy):
    """Long when RSI falls below ``oversold``, out when it rises back above ``exit_level``; with
    ``allow_short``, short when RSI rises above ``overbought``, covered below ``exit_level``.

    RSI is Wilder's (smoothed averages of gains and losses); a window with no losses reads 100
    and one with no moves reads 50, instead of dividing by zero on flat markets.

    Params:
        period (int, default 14): RSI lookback in bars; >= 2.
        oversold (float, default 30.0): RSI level below which the market is bought.
        overbought (float, default 70.0): RSI level above which it is shorted (with allow_short).
        exit_level (float, default 50.0): RSI level at which a position is closed; must lie
            strictly between oversold and overbought.
        allow_short (bool, default False): take the overbought side too.
    """

    params = (("period", 14), ("oversold", 30.0), ("overbought", 70.0), ("exit_level", 50.0))

    def __init__(self) -> None:
        super().__init__()
        self.check_params(self.p)
        self.rsi = bt.ind.RSI(self.data.close, period=self.p.period, safediv=True)

    @staticmethod
    def check_params(p) -> None:
        if p.period < 2 or not 0 <= p.oversold < p.exit_level < p.overbought <= 100:
            raise ValueError(
                f"need period >= 2 and 0 <= oversold < exit_level < overbought <= 100, got "
                f"period={p.period} oversold={p.oversold} exit_level={p.exit_level} overbought={p.overbought}"
            )

    @classmethod
    def vector_signals(cls, bars: Bars, p) -> Signals:
        """The vectorized twin of ``next`` (``research/vector``)."""
        cls.check_params(p)
        rsi = bars.cached(("rsi", p.period), lambda: indicators.rsi_safe(bars.close, p.period))
        with np.errstate(invalid="ignore"):
            return Signals(first=p.period, long_entry=rsi < p.oversold, short_entry=rsi > p.overbought,
                           long_exit=rsi > p.exit_level, short_exit=rsi < p.exit_level)

    def next(self) -> None:
        rsi, held = self.rsi[0], self.position.size
        if rsi < self.p.oversold:
            self.target(LONG)
        elif rsi > self.p.overbought:
            self.target(SHORT)
        elif (held > 0 and rsi > self.p.exit_level) or (held < 0 and rsi < self.p.exit_level):
            self.target(FLAT)
