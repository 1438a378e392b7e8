"""Walk-forward optimization on real Binance candles with the real engine and strategies.

Window boundaries are checked on timestamps; the stitched out-of-sample curve against fresh
``run_backtest`` runs of each winner on its train + test candles, trading from the test start.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.market_data.candles import DAY_MS
from atlas_pipeline.research.charts import walkforward_chart
from atlas_pipeline.research.engine import BacktestSpec, run_backtest
from atlas_pipeline.research.sweep import BacktestPool, Objective, SweepFilters, expand_grid, run_sweep
from atlas_pipeline.research.walkforward import (
    NO_WINNER,
    WalkForwardPlan,
    plan_windows,
    run_walk_forward,
)
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles

SPEC = BacktestSpec("sma_crossover", cash=10_000.0)
GRID = expand_grid({"fast": [5, 10], "slow": [20, 40]})
DAY = pd.Timedelta(days=1)


def assert_disjoint(windows, plan: WalkForwardPlan, first_ms: int, end_ms: int) -> None:
    assert windows[0].train_start == pd.Timestamp(first_ms - first_ms % DAY_MS, unit="ms", tz="UTC")
    for w in windows:
        assert w.train_start < w.train_end == w.test_start < w.test_end
        assert w.train_end <= w.test_start  # [train) and [test) do not overlap
        assert w.test_end - w.test_start == plan.test_days * DAY
        assert w.test_end <= pd.Timestamp(end_ms, unit="ms", tz="UTC")
        assert w.train_start == (windows[0].train_start if plan.anchored else windows[0].train_start + w.index * plan.step * DAY)
        assert w.train_end - windows[0].train_start == (w.index * plan.step + plan.train_days) * DAY
    for before, after in zip(windows, windows[1:]):
        assert before.test_end <= after.test_start  # test windows do not overlap
    # one more window would end past the data
    assert windows[-1].test_end + plan.step * DAY > pd.Timestamp(end_ms, unit="ms", tz="UTC")


@pytest.mark.parametrize("anchored", [False, True])
@pytest.mark.parametrize("step", [None, 3])
def test_windows_never_overlap(anchored, step):
    first_ms = pd.Timestamp("2024-03-01 07:13", tz="UTC").value // 1_000_000
    end_ms = first_ms + 40 * DAY_MS
    plan = WalkForwardPlan(train_days=10, test_days=3, step_days=step, anchored=anchored)
    windows = plan_windows(first_ms, end_ms, plan)
    assert len(windows) == (40 - 10 - 3) // plan.step + 1  # midnight start gains no day: 07:13 + 40 d
    assert_disjoint(windows, plan, first_ms, end_ms)


def test_plan_validation():
    with pytest.raises(ValueError, match="test windows would overlap"):
        WalkForwardPlan(train_days=10, test_days=5, step_days=4)
    with pytest.raises(ValueError, match="positive days: train_days=0"):
        WalkForwardPlan(train_days=0, test_days=5)
    with pytest.raises(ValueError, match="test_days=-1"):
        WalkForwardPlan(train_days=3, test_days=-1)
    assert WalkForwardPlan(10, 5).step == 5
    with pytest.raises(ValueError, match=r"no walk-forward window fits.*9\.0 days.*train_days \+ test_days = 10 days"):
        plan_windows(0, 9 * DAY_MS, WalkForwardPlan(7, 3))


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return shared_candles("binance_ETH-BTC_5m")


class CountingPool(BacktestPool):
    """A real pool that notes each ``run`` call's size, whether it kept results and whether it
    confirmed twin runs, and each ``screen`` call's size."""

    calls: list[tuple[int, bool, bool]]
    screens: list[int]

    def run(self, jobs, keep_results=False, progress=None, confirm=False):
        self.calls = [*getattr(self, "calls", []), (len(jobs), keep_results, confirm)]
        return super().run(jobs, keep_results, progress, confirm)

    def screen(self, jobs, progress=None):
        self.screens = [*getattr(self, "screens", []), len(jobs)]
        return super().screen(jobs, progress)


# rolling: min_trades 40 leaves windows 0-3 and 7 without a winner on these candles (flat, then a
# segment scaled from a flat end); anchored: every window has one (the first segment starts at cash)
@pytest.fixture(scope="module", params=[(WalkForwardPlan(4, 2), 40), (WalkForwardPlan(5, 3, anchored=True), 5)],
                ids=["rolling", "anchored"])
def walk(request, candles):
    plan, min_trades = request.param
    pool = CountingPool(candles, SPEC, "5m", workers=1)
    messages: list[str] = []
    result = run_walk_forward(pool, GRID, Objective("total_return"), SweepFilters(min_trades=min_trades), plan,
                              progress=messages.append)
    return plan, pool, result, messages, min_trades


def window_candles(candles: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    ms = candles["timestamp"]
    lo, hi = start.value // 1_000_000, end.value // 1_000_000
    return candles[(ms >= lo) & (ms < hi)].reset_index(drop=True)


@needs_shared_candles
def test_windows_and_pool_calls(walk, candles):
    plan, pool, result, messages, _ = walk
    n = len(result.windows)
    assert n >= 3 and len(result.sweeps) == len(result.segments) == n
    with_winner = result.windows["params"].notna()
    assert with_winner.any() and (not with_winner.all()) == (plan.anchored is False), "both cases are exercised"
    # every train candidate screened in one call; each window's top 5 and winner confirmed
    # through backtrader (in as few calls as ties allow); then every test segment in one call
    assert pool.screens == [n * len(GRID)]
    confirms = pool.calls[:-1]
    assert confirms and all(confirm and not keep for _, keep, confirm in confirms)
    assert sum(size for size, _, _ in confirms) <= n * 6
    assert pool.calls[-1] == (result.summary["windows_with_winner"], True, False)
    for sweep, row in zip(result.sweeps, result.windows.itertuples()):
        table = sweep.table
        assert set(table["evaluated_by"]) <= {"twin", "backtrader"}
        if sweep.chosen is not None:
            assert table.loc[table["chosen"], "evaluated_by"].item() == "backtrader"
    stamps = candles["timestamp"]
    rows = result.windows
    windows = plan_windows(int(stamps.iloc[0]), int(stamps.iloc[-1]) + 300_000, plan)
    assert_disjoint(windows, plan, int(stamps.iloc[0]), int(stamps.iloc[-1]) + 300_000)
    assert list(rows["test_start"]) == [w.test_start for w in windows]
    assert (rows["train_end"] <= rows["test_start"]).all()
    assert (rows["test_end"].iloc[:-1].to_numpy() <= rows["test_start"].iloc[1:].to_numpy()).all()
    # the stitched curve has only test-window bars, each once, in time order
    oos = result.oos_equity
    assert oos.index.is_monotonic_increasing and oos.index.is_unique
    for row in rows.itertuples():
        times = oos.index[oos["window"] == row.index]
        assert len(times) and times.min() >= row.test_start and times.max() < row.test_end
    assert messages[-1].startswith("walk-forward done: ")


@needs_shared_candles
def test_winners_are_the_train_sweeps_choice(walk, candles):
    _, _, result, _, min_trades = walk
    with BacktestPool(candles, SPEC, "5m", workers=1) as pool:
        for i in sorted({0, 4, len(result.windows) - 1}):
            row = result.windows.iloc[i]
            start, end = row["train_start"].value // 1_000_000, row["train_end"].value // 1_000_000
            sweep = run_sweep(pool, GRID, Objective("total_return"), SweepFilters(min_trades=min_trades), start, end)
            assert (None if pd.isna(row["params"]) else json.loads(row["params"])) == sweep.chosen
            if sweep.chosen is not None:
                assert row["is_total_return"] == sweep.chosen_row["total_return"] == row["is_objective"]
    assert result.summary["latest_params"] == result.sweeps[-1].chosen


@needs_shared_candles
def test_stitched_equity_equals_each_winner_warmed_up_on_its_train_window(walk, candles):
    """Each segment is the winner run on [train_start, test_end) trading from test_start: it covers
    its whole test window (no warm-up hole), and nothing is bought or sold before test_start."""
    _, _, result, _, _ = walk
    oos = result.oos_equity["equity"]
    assert oos.iloc[0] == SPEC.cash
    prev_end = SPEC.cash
    for row in result.windows.itertuples():
        stitched = oos[result.oos_equity["window"] == row.index]
        test = window_candles(candles, row.test_start, row.test_end)
        test_times = pd.DatetimeIndex(pd.to_datetime(test["timestamp"], unit="ms", utc=True), name="time")
        assert stitched.index.equals(test_times)  # every test bar once, from the first
        if pd.isna(row.params):
            assert row.note == NO_WINNER
            assert (stitched == prev_end).all()
        else:
            rerun = run_backtest(window_candles(candles, row.train_start, row.test_end),
                                 BacktestSpec("sma_crossover", json.loads(row.params), cash=SPEC.cash), "5m",
                                 trade_from_ms=row.test_start.value // 1_000_000)
            assert rerun.equity.index[0] == row.test_start == test_times[0]  # no warm-up hole
            assert rerun.warmup_bars == len(window_candles(candles, row.train_start, row.train_end))
            assert (rerun.orders["created_time"] >= row.test_start).all()
            assert stitched.index.equals(rerun.equity.index)
            segment = result.segments[row.index]
            pd.testing.assert_frame_equal(segment.trades, rerun.trades, check_exact=True)
            np.testing.assert_allclose(stitched / stitched.iloc[0], rerun.equity["equity"] / SPEC.cash, rtol=1e-12)
            assert stitched.iloc[0] == pytest.approx(prev_end, rel=1e-12)  # starts where the last ended
            assert row.oos_total_return == pytest.approx(rerun.equity["equity"].iloc[-1] / SPEC.cash - 1, rel=1e-12)
        prev_end = stitched.iloc[-1]
    assert result.summary["oos_final_equity"] == oos.iloc[-1]


@needs_shared_candles
def test_efficiency_and_summary(walk):
    _, _, result, _, _ = walk
    rows = result.windows
    for row in rows.itertuples():
        if not row.is_cagr > 0:
            assert math.isnan(row.efficiency)
        else:
            assert row.efficiency == row.oos_cagr / row.is_cagr
    won = rows[rows["params"].notna()]
    assert result.summary["windows"] == len(rows) and result.summary["windows_with_winner"] == len(won)
    assert result.summary["is_cagr"] == pytest.approx(won["is_cagr"].mean(), rel=1e-12)
    expected = result.summary["oos_cagr"] / result.summary["is_cagr"] if result.summary["is_cagr"] > 0 else math.nan
    assert result.summary["efficiency"] == expected or (math.isnan(expected) and math.isnan(result.summary["efficiency"]))
    assert result.summary["oos_trade_count"] == sum(len(s.trades) for s in result.segments if s is not None)


@needs_shared_candles
def test_windows_without_winner_hold_flat(candles):
    part = candles.iloc[: 8 * 288]  # 8 days
    with BacktestPool(part, SPEC, "5m", workers=1) as pool:
        everything = run_walk_forward(pool, GRID, Objective(), SweepFilters(min_trades=10**6), WalkForwardPlan(3, 2))
    assert (everything.windows["note"] == NO_WINNER).all() and everything.windows["params"].isna().all()
    assert everything.segments == [None] * len(everything.windows)
    assert (everything.oos_equity["equity"] == SPEC.cash).all()
    assert len(everything.oos_equity) == len(window_candles(part, everything.windows["test_start"].iloc[0],
                                                            everything.windows["test_end"].iloc[-1]))
    assert everything.summary["windows_with_winner"] == 0 and everything.summary["latest_params"] is None
    assert everything.summary["oos_total_return"] == 0.0


@needs_shared_candles
def test_two_workers_equal_one(candles):
    part = candles.iloc[: 8 * 288]
    plan = WalkForwardPlan(3, 2)
    with BacktestPool(part, SPEC, "5m", workers=1) as pool:
        one = run_walk_forward(pool, GRID, Objective(), SweepFilters(), plan)
    with BacktestPool(part, SPEC, "5m", workers=2) as pool:
        two = run_walk_forward(pool, GRID, Objective(), SweepFilters(), plan)
    pd.testing.assert_frame_equal(one.windows, two.windows, check_exact=True)
    pd.testing.assert_frame_equal(one.oos_equity, two.oos_equity, check_exact=True)


@needs_shared_candles
def test_chart_is_png(walk):
    png = walkforward_chart(walk[2], "ETH/BTC 5m sma_crossover")
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
