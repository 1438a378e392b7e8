"""Imported by the sweep pool's fork server: loads the twins' compiled code once, so every
worker forked from it starts with the simulator and indicators ready (no per-worker load)."""

import numpy as np

from atlas_pipeline.research.vector import fast_metrics, indicators
from atlas_pipeline.research.vector.signals import Signals
from atlas_pipeline.research.vector.simulator import simulate


def _warm() -> None:
    close = np.linspace(1.0, 2.0, 8)
    indicators.sma(close, 2)
    indicators.rsi_safe(close, 2)
    indicators.crossover(close, close[::-1].copy(), 2)
    flags = np.zeros(8, dtype=bool)
    fast_metrics.fast_metrics(np.arange(8, dtype=np.int64) * 86_400_000, close, close, flags, close[:0], close[:0])
    simulate(close, close, Signals(2, flags, flags), allow_short=False, cash=1.0, fraction=1.0, commission=0.0,
             slippage=0.0, cushion=0.0)


_warm()
