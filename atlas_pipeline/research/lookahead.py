"""Lookahead-bias check: rerun a strategy on truncated histories and flag signals that change.

A strategy that only looks back decides the same on bar t whether or not candles after t exist.
One that peeks (``self.data.close[1]``, an indicator on a forward-shifted line such as
``self.data.close(1)``, a "centered" average) decides differently once the future is cut off.
Like freqtrade's ``lookahead-analysis``, this reruns the strategy on truncated candles and
compares.

Rules:

- **Signal** of a bar (``engine.run_backtest_with_signals``): for an ``AtlasStrategy`` its target
  after that bar's ``next`` (``LONG``/``FLAT``/``SHORT``); for a plain backtrader strategy the
  sides of the orders it created on that bar (``buy``, ``sell``, ``sell+buy``, ``""`` for none).
  Order sizes are not compared (they follow equity, which a truncated run shares anyway).
- **Window.** Only the last ``max_bars`` candles are used: bias is structural, so a recent
  window finds it as well as years of 5m data do, at a bounded cost.
- **Cuts.** The full window is run once. Truncation points are chosen among its bars after
  warm-up (never the last bar, which is the full run): first bars whose signal differs from the
  bar before (entries, exits, order bars and the bar after), evenly spread over them when there
  are more than ``cuts``; then, if fewer, evenly spaced other bars fill up to ``cuts``.
- **Comparison.** For each cut c the strategy reruns on ``candles[: c + 1]``; the signal of EVERY
  bar of that run after its warm-up is compared with the full run's signal on the same bar. Any
  difference is a row of ``differences`` and makes the report ``biased``. A rerun too short for
  the warm-up is skipped; any other error (a ``StrategyError``) propagates.

Cost: every rerun replays its whole prefix, so a check is ~``1 + cuts / 2`` backtests of
``max_bars`` bars (defaults: 12 reruns of at most 4,000 bars, ~1 s for the shipped strategies on
a 2-core box).

Known limits: it finds bias only at the bars it cuts at (a peek that matters once in a
year may fall between cuts); a strategy drawing random numbers differs between any two runs and
is flagged; one whose decisions depend on the number of bars remaining (``len(self.data)`` against
``buflen()``, e.g. "exit on the last bar") is flagged although it does not use future prices;
and bias that only shows in order sizes, not in direction or sides, is not seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from atlas_pipeline.research.engine import BacktestSpec, TooFewCandlesError, run_backtest_with_signals

__all__ = ["DEFAULT_CUTS", "DEFAULT_MAX_BARS", "DIFFERENCE_COLUMNS", "LookaheadReport", "check_lookahead"]

DEFAULT_CUTS = 12
"""Truncated reruns per check."""
DEFAULT_MAX_BARS = 4_000
"""Candles checked (the newest); ~14 days of 5m, ~167 days of 1h."""
DIFFERENCE_COLUMNS = ("time", "cut", "full_signal", "truncated_signal")
"""time: the bar whose signal changed; cut: the last bar time of the truncated history (both
tz-aware UTC bar open times); full_signal / truncated_signal: the signal in each run."""


@dataclass
class LookaheadReport:
    """What a lookahead check found."""

    biased: bool
    cuts: int
    """Truncated reruns done (skipped ones, too short for the warm-up, not counted)."""
    bars_checked: int
    """Bar signals compared, summed over the reruns."""
    differences: pd.DataFrame
    """One row per (bar, cut) whose signal differed (``DIFFERENCE_COLUMNS``), by time then cut."""
    seconds: float
    message: str
    """One line for a check's description or a log."""


def check_lookahead(
    candles: pd.DataFrame,
    spec: BacktestSpec,
    timeframe: str,
    strategies_dir: Path | None = None,
    cuts: int = DEFAULT_CUTS,
    max_bars: int | None = DEFAULT_MAX_BARS,
) -> LookaheadReport:
    """Check ``spec``'s strategy for lookahead bias on (the last ``max_bars`` of) ``candles``."""
    if cuts < 1 or (max_bars is not None and max_bars < 2):
        raise ValueError(f"need cuts >= 1 and max_bars >= 2 (or None), got cuts={cuts} max_bars={max_bars}")
    began = time.perf_counter()
    if max_bars is not None:
        candles = candles.iloc[-max_bars:]
    candles = candles.reset_index(drop=True)
    _, full = run_backtest_with_signals(candles, spec, timeframe, strategies_dir)
    first = len(candles) - len(full)  # the full run's warm-up

    found: list[pd.DataFrame] = []
    done = checked = 0
    for cut in _cut_bars(full.to_numpy(), cuts) + first:
        try:
            _, truncated = run_backtest_with_signals(candles.iloc[: cut + 1], spec, timeframe, strategies_dir)
        except TooFewCandlesError:
            continue
        done += 1
        checked += len(truncated)
        expected = full.reindex(truncated.index)
        changed = truncated.to_numpy() != expected.to_numpy()
        if changed.any():
            found.append(
                pd.DataFrame(
                    {
                        "time": truncated.index[changed],
                        "cut": truncated.index[-1],
                        "full_signal": expected.to_numpy()[changed],
                        "truncated_signal": truncated.to_numpy()[changed],
                    }
                )
            )
    differences = _differences(found)
    return LookaheadReport(
        biased=not differences.empty,
        cuts=done,
        bars_checked=checked,
        differences=differences,
        seconds=time.perf_counter() - began,
        message=_message(differences, done),
    )


def _cut_bars(signals: np.ndarray, cuts: int) -> np.ndarray:
    """Positions (in ``signals``) to cut at: signal changes first, evenly spread, then other bars.

    The last position is never cut at (that is the full run). Sorted, unique.
    """
    candidates = np.arange(len(signals) - 1)
    if len(candidates) == 0:
        return candidates
    changes = candidates[1:][signals[1:-1] != signals[:-2]]
    chosen = _spread(changes, cuts)
    rest = np.setdiff1d(candidates, chosen, assume_unique=True)
    return np.sort(np.concatenate([chosen, _spread(rest, cuts - len(chosen))]))


def _spread(bars: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` of ``bars``, evenly spaced from first to last (all when fewer)."""
    if count <= 0 or len(bars) == 0:
        return bars[:0]
    if len(bars) <= count:
        return bars
    return np.unique(bars[np.linspace(0, len(bars) - 1, count).round().astype(np.int64)])


def _differences(found: list[pd.DataFrame]) -> pd.DataFrame:
    if not found:
        empty_times = pd.DatetimeIndex([], tz="UTC")
        return pd.DataFrame(
            {"time": empty_times, "cut": empty_times, "full_signal": [], "truncated_signal": []}
        ).astype({"full_signal": object, "truncated_signal": object})
    frame = pd.concat(found, ignore_index=True)
    return frame.sort_values(["time", "cut"], kind="stable").reset_index(drop=True)


def _message(differences: pd.DataFrame, reruns: int) -> str:
    if reruns == 0:
        return "lookahead not checked: no truncated rerun was possible (too few bars after warm-up)"
    if differences.empty:
        return f"no lookahead: {reruns} truncated reruns, 0 signals changed"
    first = differences.iloc[0]
    after = "it" if first["cut"] == first["time"] else _when(first["cut"])
    return (
        f"lookahead bias: signal at {_when(first['time'])} changed from {_shown(first['full_signal'])} "
        f"to {_shown(first['truncated_signal'])} when candles after {after} were removed "
        f"({differences['cut'].nunique()} of {reruns} reruns, {len(differences)} signals changed)"
    )


def _when(stamp: pd.Timestamp) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M" if stamp.second == 0 else "%Y-%m-%d %H:%M:%S")


def _shown(signal: str) -> str:
    return signal or "no order"
