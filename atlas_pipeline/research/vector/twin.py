"""Run a strategy's twin on candles, give its result in the engine's shapes, and compare it with
backtrader's (a twin that drifted is a bug: the sweep fails naming the first differing bar)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from atlas_pipeline.research.results import BacktestResult
from atlas_pipeline.research.strategy_loader import strategy_params
from atlas_pipeline.research.vector.fast_metrics import daily_equity_index, fast_metrics
from atlas_pipeline.research.vector.signals import Bars, Signals
from atlas_pipeline.research.vector.simulator import Simulation, simulate

REL = 1e-9
"""Largest relative difference a confirmed candidate's twin may have from backtrader."""


def has_twin(cls: type[bt.Strategy]) -> bool:
    return callable(getattr(cls, "vector_signals", None))


@dataclass
class TwinRun:
    simulation: Simulation
    timestamp: np.ndarray
    """Open times of the equity bars (from ``simulation.start``)."""
    equity: np.ndarray
    close: np.ndarray

    def metrics(self, day_index: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
        """``compute_metrics``'s numbers and the daily returns, from arrays (``fast_metrics``);
        ``day_index``: ``daily_equity_index(self.timestamp)`` when the caller has it cached."""
        s = self.simulation
        trades = s.trades
        return fast_metrics(self.timestamp, self.equity, self.close, s.position[s.start :] != 0,
                            trades["gross_pnl"] - trades["fees"], trades["size"] * trades["entry_price"], day_index)


class ExitsNotTwinned(ValueError):
    """The spec has protective exits, which the simulator does not fill: backtrader runs it."""


def run_twin(
    cls: type[bt.Strategy],
    bars: Bars,
    params: dict[str, Any],
    spec: Any,
    trade_from_bar: int | None = None,
) -> TwinRun:
    """The twin of ``cls`` with ``params`` (over its defaults) on ``bars``, sized and charged as
    ``spec`` (an ``engine.BacktestSpec``). Raises what the twin raises (a bad param), or
    ``ValueError`` when the candles are fewer than the warm-up, ``ExitsNotTwinned`` when ``spec``
    has exits (docs/walkforward.md: candidates with exits go to backtrader)."""
    if getattr(spec, "exits", None):
        raise ExitsNotTwinned(f"exits {spec.exits.as_dict()} are filled by backtrader only, not by the twin's simulator")
    p = SimpleNamespace(**{**strategy_params(cls), **params})
    signals: Signals = cls.vector_signals(bars, p)
    if signals.first >= len(bars):
        raise ValueError(f"{len(bars)} candles are too few for strategy {spec.strategy!r}: its indicators need "
                         f"{signals.first} bars of warm-up before the first decision")
    sim = simulate(bars.open, bars.close, signals, allow_short=bool(p.allow_short), cash=spec.cash,
                   fraction=spec.fraction, commission=spec.commission, slippage=spec.slippage,
                   cushion=spec.cushion, trade_from_bar=trade_from_bar)
    return TwinRun(sim, bars.timestamp[sim.start :], sim.equity(bars.close), bars.close[sim.start :])


def twin_metrics(twin: TwinRun, bars: Bars) -> tuple[dict[str, Any], np.ndarray]:
    """``twin.metrics()`` with the daily index cached on ``bars`` per equity start."""
    start = twin.simulation.start
    days = bars.cached(("days", start), lambda: daily_equity_index(bars.timestamp[start:]))
    return twin.metrics(days)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=0.0) or (a == b)


def twin_mismatch(twin: TwinRun, result: BacktestResult) -> str | None:
    """Where the twin first departs from backtrader's ``result`` (bar time and what), else None."""
    bt_ms = pd.DatetimeIndex(result.equity.index).as_unit("ms").asi8
    if len(bt_ms) != len(twin.timestamp) or (len(bt_ms) and bt_ms[0] != twin.timestamp[0]):
        return (f"equity starts at bar {result.warmup_bars} ({len(bt_ms)} bars) in backtrader, at bar "
                f"{twin.simulation.start} ({len(twin.timestamp)} bars) in the twin")
    bt_equity = result.equity["equity"].to_numpy(float)
    scale = np.maximum(np.abs(bt_equity), np.abs(twin.equity))
    bad = np.flatnonzero(np.abs(bt_equity - twin.equity) > REL * scale)
    trades = result.trades
    sim = twin.simulation.trades
    candle_ms = np.concatenate([np.full(twin.simulation.start, -1), twin.timestamp])  # bar -> open time
    first_trade = None
    for k in range(max(len(trades), len(sim["entry"]))):
        if k >= len(trades) or k >= len(sim["entry"]):
            first_trade = k
            break
        row = trades.iloc[k]
        same = (
            int(pd.Timestamp(row["entry_time"]).value // 1_000_000) == candle_ms[sim["entry"][k]]
            and int(pd.Timestamp(row["exit_time"]).value // 1_000_000) == candle_ms[sim["exit"][k]]
            and _close(float(row["size"]), float(sim["size"][k]))
            and _close(float(row["entry_price"]), float(sim["entry_price"][k]))
            and _close(float(row["exit_price"]), float(sim["exit_price"][k]))
            and _close(float(row["fees"]), float(sim["fees"][k]))
        )
        if not same:
            first_trade = k
            break
    if not len(bad) and first_trade is None:
        return None
    notes = []
    if len(bad):
        i = int(bad[0])
        notes.append(f"equity first differs at {pd.Timestamp(int(twin.timestamp[i]), unit='ms', tz='UTC').isoformat()} "
                     f"(bar {twin.simulation.start + i}): backtrader {bt_equity[i]!r}, twin {twin.equity[i]!r}")
    if first_trade is not None:
        bt_entry = str(trades["entry_time"].iloc[first_trade]) if first_trade < len(trades) else "none"
        tw_entry = (pd.Timestamp(int(candle_ms[sim["entry"][first_trade]]), unit="ms", tz="UTC").isoformat()
                    if first_trade < len(sim["entry"]) else "none")
        notes.append(f"trade {first_trade} differs (entry backtrader {bt_entry}, twin {tw_entry}; "
                     f"{len(trades)} vs {len(sim['entry'])} trades)")
    return "; ".join(notes)


def twin_result(twin: TwinRun) -> dict[str, np.ndarray]:
    """The twin's equity columns (``EQUITY_COLUMNS``) as arrays, for tests and notebooks."""
    s = twin.simulation
    return {"equity": twin.equity, "cash": s.cash[s.start :], "position": s.position[s.start :],
            "in_market": s.position[s.start :] != 0}


__all__ = ["REL", "TwinRun", "has_twin", "run_twin", "twin_metrics", "twin_mismatch", "twin_result"]
