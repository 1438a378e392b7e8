"""Walk-forward optimization: sweep on a train window, trade the winner on the next test window.

Rules:

- **Windows** start at the UTC midnight of the first candle's day. Window i trains on
  ``[s + i*step, s + i*step + train)`` (anchored: ``[s, s + i*step + train)``) and tests on the
  ``test_days`` after it; only windows whose test end is <= the data's end (last open + one bar)
  are kept. All ranges are half-open on candle open time. ``step_days >= test_days`` so test
  windows never overlap (the stitched out-of-sample curve needs each bar once).
- **Winner** of a window: ``sweep.sweep_result`` over the train window (same filters and
  objective rules as a sweep). All windows' train jobs are screened by the strategy's twin in
  one call and each window's ``confirm_top`` best and its winner confirmed through backtrader
  (``sweep.evaluate_candidates``), then all test jobs go to backtrader in another call, so both
  cores stay busy across window boundaries. Test segments always run through backtrader.
- **Test segment**: the winner rerun on the candles of ``[train_start, test_end)`` with
  ``trade_from_ms = test_start`` (``engine.run_backtest``'s trade-from rule, freqtrade's startup
  candles): its indicators warm up on the train window it was optimized on, no order is sent
  before ``test_start``, and it starts the test window flat with ``spec.cash``, entering at its
  next ``target()`` call (a shipped strategy's next signal). The winner ran on the train
  window, so its warm-up ends inside it and the segment's equity covers the test window from its
  first candle (it could start later only if the warm-up were longer than the train window). A test run that fails (e.g. no candle in the
  test window) sits out like a window without a winner, with the error in ``note``.
- **Stitching**: segment i's equity (test-window bars only) is scaled to start where segment
  i-1 ended: ``stitched = prev_end * equity / spec.cash`` (``prev_end = spec.cash`` for the
  first), so segments can run independently; its trades (all opened in the test window) get the
  same scale on their money columns (size, pnl, fees). A window without a winner holds
  ``prev_end`` flat over its test candles.
- **Efficiency** (Pardo's walk-forward efficiency): annualized out-of-sample return /
  annualized in-sample return, ``oos_cagr / is_cagr``; NaN when ``is_cagr`` is <= 0 or NaN (a
  ratio to a losing or undefined in-sample result means nothing). Note CAGR annualizes short
  windows aggressively; compare efficiencies between plans with the same window lengths.
- ``windows.params`` is the winner's params as a JSON string (sorted keys; missing, ``pd.isna``,
  without a winner): one scalar per row, so the frame goes to Parquet and Dagster metadata as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from atlas_pipeline.market_data.candles import DAY_MS, ms_to_iso, timeframe_ms
from atlas_pipeline.research.metrics import compute_metrics
from atlas_pipeline.research.results import TRADE_COLUMNS, BacktestResult
from atlas_pipeline.research.sweep import (
    CONFIRM_TOP,
    BacktestJob,
    BacktestPool,
    Objective,
    SweepFilters,
    SweepResult,
    describe_choice,
    evaluate_candidates,
    progress_every,
    sweep_result,
)

__all__ = ["WINDOW_METRICS", "WalkForwardPlan", "WalkForwardResult", "Window", "plan_windows", "run_walk_forward"]

WINDOW_METRICS = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "trade_count", "win_rate")
"""In-sample and out-of-sample metrics kept per window (plus the objective's metric)."""
NO_WINNER = "no candidate passed the filters"
_MONEY_COLUMNS = ("size", "gross_pnl", "fees", "net_pnl")


@dataclass(frozen=True)
class WalkForwardPlan:
    train_days: int
    test_days: int
    step_days: int | None = None
    """Days between window starts; None -> ``test_days`` (back-to-back test windows)."""
    anchored: bool = False
    """Every train window starts at the first window's start (growing train windows)."""

    def __post_init__(self) -> None:
        bad = [f"{n}={getattr(self, n)!r}" for n in ("train_days", "test_days", "step_days")
               if getattr(self, n) is not None and getattr(self, n) <= 0]
        if bad:
            raise ValueError(f"walk-forward plan needs positive days: {', '.join(bad)}")
        if self.step < self.test_days:
            raise ValueError(
                f"walk-forward step_days={self.step_days} < test_days={self.test_days}: test windows would "
                "overlap, and the stitched out-of-sample equity needs each bar once"
            )

    @property
    def step(self) -> int:
        return self.test_days if self.step_days is None else self.step_days


@dataclass(frozen=True)
class Window:
    """One train/test split (UTC, half-open; ``test_start == train_end``)."""

    index: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    @staticmethod
    def _ms(stamp: pd.Timestamp) -> int:
        return int(stamp.value // 1_000_000)

    @property
    def train_ms(self) -> tuple[int, int]:
        return self._ms(self.train_start), self._ms(self.train_end)

    @property
    def test_ms(self) -> tuple[int, int]:
        return self._ms(self.test_start), self._ms(self.test_end)


def _stamp(ms: int) -> pd.Timestamp:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC")


def plan_windows(first_ms: int, end_ms: int, plan: WalkForwardPlan) -> list[Window]:
    """The plan's windows over data from ``first_ms`` to ``end_ms`` (exclusive)."""
    start = first_ms - first_ms % DAY_MS
    windows = []
    while True:
        i = len(windows)
        train_end = start + (i * plan.step + plan.train_days) * DAY_MS
        test_end = train_end + plan.test_days * DAY_MS
        if test_end > end_ms:
            break
        train_start = start if plan.anchored else start + i * plan.step * DAY_MS
        windows.append(Window(i, _stamp(train_start), _stamp(train_end), _stamp(train_end), _stamp(test_end)))
    if not windows:
        raise ValueError(
            f"no walk-forward window fits the data from {ms_to_iso(start)} to {ms_to_iso(end_ms)} "
            f"({(end_ms - start) / DAY_MS:.1f} days): one window needs train_days + test_days = "
            f"{plan.train_days + plan.test_days} days"
        )
    return windows


@dataclass
class WalkForwardResult:
    windows: pd.DataFrame
    """Per window: ``index``, ``train_start``, ``train_end``, ``test_start``, ``test_end``,
    ``params`` (JSON, NA without winner), ``is_<metric>``/``oos_<metric>`` for ``WINDOW_METRICS``, the
    objective's metric and ``objective``, ``efficiency``, ``note`` ("" or why it sat out)."""
    oos_equity: pd.DataFrame
    """Stitched out-of-sample equity: UTC ``time`` index, columns ``equity``, ``window``."""
    sweeps: list[SweepResult]
    segments: list[BacktestResult | None]
    summary: dict[str, Any] = field(default_factory=dict)
    """``oos_<metric>`` of the stitched curve, ``is_<metric>`` means over windows with a winner,
    ``efficiency``, ``windows``, ``windows_with_winner``, ``latest_params``."""

    @property
    def objective(self) -> Objective:
        return self.sweeps[0].objective


def _efficiency(oos_cagr: float, is_cagr: float) -> float:
    if math.isnan(is_cagr) or is_cagr <= 0 or math.isnan(oos_cagr):
        return math.nan
    return oos_cagr / is_cagr


def _kept(metrics: dict[str, Any] | None, names: Sequence[str], prefix: str) -> dict[str, float]:
    return {f"{prefix}{n}": float(metrics[n]) if metrics else math.nan for n in names}


def run_walk_forward(
    pool: BacktestPool,
    grid: list[dict[str, Any]],
    objective: Objective,
    filters: SweepFilters,
    plan: WalkForwardPlan,
    progress: Callable[[str], None] | None = None,
    confirm_top: int | None = CONFIRM_TOP,
) -> WalkForwardResult:
    """Optimize on each train window, trade the winner on its test window, stitch (module doc)."""
    say = progress or (lambda _message: None)
    candles, spec = pool.candles, pool.spec
    stamps = candles["timestamp"].to_numpy(np.int64)
    if not len(stamps):
        raise ValueError("no candles to walk forward on")
    windows = plan_windows(int(stamps[0]), int(stamps[-1]) + timeframe_ms(pool.timeframe), plan)
    names = tuple(dict.fromkeys([objective.metric, *WINDOW_METRICS]))

    sections = [(grid, [BacktestJob(dict(p), *w.train_ms) for p in grid]) for w in windows]
    say(f"walk-forward: {len(windows)} windows x {len(grid)} candidates = {len(windows) * len(grid)} train backtests")
    evaluated = evaluate_candidates(pool, sections, objective, filters, confirm_top, say, label="walk-forward train")
    sweeps = []
    for w, chunk in zip(windows, evaluated):
        try:
            sweeps.append(sweep_result(grid, chunk, objective, filters))
        except ValueError as error:
            raise ValueError(f"walk-forward window {w.index} (train {w.train_start} to {w.train_end}): {error}") from None
        say(f"window {w.index} train {w.train_start:%Y-%m-%d} to {w.train_end:%Y-%m-%d}: {describe_choice(sweeps[-1])}")

    tested = [w for w, s in zip(windows, sweeps) if s.chosen is not None]
    # warm the winner up on its train window; trade (and stitch) from the test window's start only
    test_jobs = [BacktestJob(dict(sweeps[w.index].chosen), w.train_ms[0], w.test_ms[1], trade_from_ms=w.test_ms[0])
                 for w in tested]
    tick = progress_every(len(test_jobs), lambda d, t: say(f"walk-forward test {d}/{t} backtests"))
    test_outcomes = dict(zip((w.index for w in tested), pool.run(test_jobs, keep_results=True, progress=tick)))

    rows, parts, trades, closes, segments = [], [], [], [], []
    prev_end = spec.cash
    for w, sweep in zip(windows, sweeps):
        outcome = test_outcomes.get(w.index)
        segment = outcome.result if outcome is not None else None
        note = NO_WINNER if sweep.chosen is None else "" if segment else f"test run failed: {outcome.error.splitlines()[0]}"
        row: dict[str, Any] = {
            "index": w.index, "train_start": w.train_start, "train_end": w.train_end,
            "test_start": w.test_start, "test_end": w.test_end,
            "params": json.dumps(sweep.chosen, sort_keys=True) if sweep.chosen is not None else None,
        }
        chosen = sweep.chosen_row
        row.update(_kept(chosen.to_dict() if chosen is not None else None, names, "is_"))
        row.update(_kept(outcome.metrics if segment else None, names, "oos_"))
        row["is_objective"], row["oos_objective"] = row[f"is_{objective.metric}"], row[f"oos_{objective.metric}"]
        row["efficiency"] = _efficiency(row["oos_cagr"], row["is_cagr"])
        row["note"] = note
        rows.append(row)
        segments.append(segment)
        if segment is not None:
            scale = prev_end / spec.cash
            part = pd.DataFrame({"equity": segment.equity["equity"] * scale, "window": w.index,
                                 "in_market": segment.equity["in_market"]})
            traded = segment.trades.copy()
            traded.loc[:, list(_MONEY_COLUMNS)] = traded.loc[:, list(_MONEY_COLUMNS)] * scale
            trades.append(traded)
            closes.append(segment.close)
        else:
            lo, hi = np.searchsorted(stamps, w.test_ms, side="left")
            index = pd.DatetimeIndex(pd.to_datetime(stamps[lo:hi], unit="ms", utc=True), name="time")
            part = pd.DataFrame({"equity": prev_end, "window": w.index, "in_market": False}, index=index)
            closes.append(pd.Series(candles["close"].to_numpy(float)[lo:hi], index=index, name="close"))
        if len(part):
            prev_end = float(part["equity"].iloc[-1])
        parts.append(part)

    stitched = pd.concat(parts).astype({"equity": "float64", "window": "int64", "in_market": "bool"})
    stitched.index.name = "time"
    table = pd.DataFrame(rows)
    summary = _summary(stitched, trades, closes, table, names)
    say(f"walk-forward done: {len(windows)} windows, {summary['windows_with_winner']} with a winner, "
        f"oos {objective.metric}={summary.get('oos_' + objective.metric, math.nan):.4g}, "
        f"efficiency={summary['efficiency']:.3g}")
    return WalkForwardResult(table, stitched.loc[:, ["equity", "window"]], sweeps, segments, summary)


def _summary(
    stitched: pd.DataFrame,
    trades: list[pd.DataFrame],
    closes: list[pd.Series],
    table: pd.DataFrame,
    names: Sequence[str],
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if len(stitched):
        all_trades = pd.concat(trades, ignore_index=True) if trades else pd.DataFrame(columns=list(TRADE_COLUMNS))
        oos = compute_metrics(stitched, all_trades, pd.concat(closes))
        summary.update({f"oos_{k}": v for k, v in oos.items()})
    won = table[table["params"].notna()]
    summary.update({f"is_{n}": float(won[f"is_{n}"].mean()) if len(won) else math.nan for n in names})
    summary["efficiency"] = _efficiency(float(summary.get("oos_cagr", math.nan)), summary["is_cagr"])
    summary["windows"] = len(table)
    summary["windows_with_winner"] = len(won)
    last = table["params"].iloc[-1]
    summary["latest_params"] = None if pd.isna(last) else json.loads(last)
    return summary
