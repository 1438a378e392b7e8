"""Worker-side screening: many candidates through a strategy's twin on one candle frame.

The bars of each candle range are built once per worker and keep their indicator cache, so a
grid of 1,000 SMA pairs computes each SMA period once per window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from atlas_pipeline.research.engine.exits import with_params
from atlas_pipeline.research.strategy_loader import load_strategy, validate_params
from atlas_pipeline.research.vector.signals import Bars
from atlas_pipeline.research.vector.twin import TwinRun, has_twin, run_twin, twin_metrics, twin_mismatch

DAY_MS = 86_400_000
_MAX_CACHED = 64
"""Candle ranges whose bars a worker keeps (a walk-forward has one per window)."""


class BarsCache:
    """Bars per ``[lo, hi)`` row range of one candle frame."""

    def __init__(self, candles: pd.DataFrame) -> None:
        self.all = Bars.from_candles(candles)
        self._ranges: dict[tuple[int, int], Bars] = {}

    def get(self, lo: int, hi: int) -> Bars:
        if (lo, hi) not in self._ranges:
            if len(self._ranges) >= _MAX_CACHED:
                self._ranges.clear()
            a = self.all
            self._ranges[(lo, hi)] = Bars(a.timestamp[lo:hi], a.open[lo:hi], a.high[lo:hi], a.low[lo:hi], a.close[lo:hi])
        return self._ranges[(lo, hi)]


def daily_of(timestamp_ms: int, daily: np.ndarray) -> tuple[int, np.ndarray]:
    """Daily returns keyed by their first UTC day number: return j is for day ``first + 1 + j``."""
    return int(timestamp_ms // DAY_MS), np.asarray(daily, dtype=np.float64)


def twin_for(bars: Bars, cls: Any, spec: Any, params: dict[str, Any], trade_from_ms: int | None) -> TwinRun:
    """The twin's run of one job: ``params`` (strategy params and ``exits.<key>`` values) applied to
    ``spec`` as the engine applies them. Raises ``twin.ExitsNotTwinned`` for a candidate with exits
    and ``ValueError``/``StrategyError`` where the engine would refuse it."""
    spec = with_params(spec, params)
    params = dict(spec.params)
    validate_params(spec.strategy, cls, params)
    trade_from_bar = None
    if trade_from_ms is not None:
        if len(bars) == 0 or trade_from_ms > bars.timestamp[-1]:
            raise ValueError("trade_from is after the last candle")
        trade_from_bar = int(np.searchsorted(bars.timestamp, trade_from_ms, side="left"))
    return run_twin(cls, bars, params, spec, trade_from_bar)


def screen(
    cache: BarsCache, spec: Any, strategies_dir: Any, jobs: Sequence[tuple[dict[str, Any], int, int, int | None]]
) -> list[tuple[dict[str, Any], tuple[int, np.ndarray]] | None]:
    """(metrics, daily returns) per job ``(params, lo, hi, trade_from_ms)``; None where the
    strategy has no twin, the candidate has protective exits (``spec.exits`` or an ``exits.<key>``
    grid value: the simulator does not fill exits) or the twin cannot run the candidate
    (backtrader then runs it, and reports the refusal in its own words)."""
    try:
        cls = load_strategy(spec.strategy, strategies_dir)
    except Exception:  # noqa: BLE001 - backtrader reports it per candidate
        return [None] * len(jobs)
    if not has_twin(cls):
        return [None] * len(jobs)
    out: list[tuple[dict[str, Any], tuple[int, np.ndarray]] | None] = []
    for params, lo, hi, trade_from_ms in jobs:
        try:
            bars = cache.get(lo, hi)
            twin = twin_for(bars, cls, spec, params, trade_from_ms)
            metrics, daily = twin_metrics(twin, bars)
        except Exception:  # noqa: BLE001 - any refusal: the candidate goes to backtrader
            out.append(None)
            continue
        out.append((metrics, daily_of(int(twin.timestamp[0]), daily)))
    return out


def confirm(cache: BarsCache, spec: Any, strategies_dir: Any, params: dict[str, Any], lo: int, hi: int,
            trade_from_ms: int | None, result: Any) -> str | None:
    """Where the twin departs from backtrader's ``result`` for this job (None: they agree)."""
    cls = load_strategy(spec.strategy, strategies_dir)
    try:
        twin = twin_for(cache.get(lo, hi), cls, spec, params, trade_from_ms)
    except Exception as error:  # noqa: BLE001 - backtrader ran it, so the twin should have
        return f"the twin raised {type(error).__name__}: {error}"
    return twin_mismatch(twin, result)
