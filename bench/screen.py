"""Screen + confirm vs backtrader-only, and a 1,000-candidate walk-forward (``bench/sweep.py --grid``).

Kept beside ``bench/sweep.py`` (which calls ``main`` here) so the 4x4 pool bench stays as it was.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import time

import numpy as np
import pandas as pd

from atlas_pipeline.research.engine import BacktestSpec
from atlas_pipeline.research.sweep import BacktestJob, BacktestPool, Objective, SweepFilters, run_sweep
from atlas_pipeline.research.walkforward import WalkForwardPlan, run_walk_forward

SPEC = BacktestSpec("sma_crossover", cash=10_000.0, fraction=0.95, commission=0.001, slippage=0.0005)
BAR_RATE = 300.0
BAR_RATIO = 50.0
BAR_WALK_S = 60.0


def grid_of(size: int) -> list[dict[str, int]]:
    """``size`` (fast, slow) pairs, fast in 2.., slow in 50.. step 10 (40 fast x 25 slow for 1,000)."""
    fasts = list(range(2, 42))
    slows = list(range(50, 50 + 10 * math.ceil(size / len(fasts)), 10))
    return [{"fast": f, "slow": s} for s in slows for f in fasts][:size]


def main(size: int, days: int, sample: int, full: bool, candles: pd.DataFrame, timeframe: str) -> int:
    cores = os.cpu_count() or 1
    grid = grid_of(size)
    objective, filters = Objective("sharpe"), SweepFilters(min_trades=5)
    print(f"{len(grid)} sma_crossover candidates x {len(candles):,} {timeframe} bars ({days} days), {cores} workers, "
          f"load average {os.getloadavg()[0]:.2f}")

    began = time.perf_counter()
    with BacktestPool(candles, SPEC, timeframe, workers=cores, isolate=True) as pool:
        pool.run([BacktestJob(grid[0], None, None)])  # start the workers: startup is timed apart
        started = time.perf_counter()
        marks: list[tuple[float, str]] = []
        screened = run_sweep(pool, grid, objective, filters, progress=lambda m: marks.append((time.perf_counter(), m)))
        screen_s = time.perf_counter() - started
        total_s = time.perf_counter() - began
    # the stages of that one sweep, from its progress lines: the screen ends with "screen N/N"
    screen_end = next(t for t, m in marks if f"screen {len(grid)}/{len(grid)}" in m)
    stage_screen, stage_confirm = screen_end - started, started + screen_s - screen_end
    confirmed = screened.table[screened.table["evaluated_by"] == "backtrader"]
    rate = len(grid) / screen_s
    print(f"screen + confirm: {screen_s:6.2f} s  {rate:8.1f} candidates/s  {rate * len(candles) / 1e6:6.2f} M bars/s "
          f"({len(confirmed)} confirmed by backtrader; pool startup {started - began:.2f} s, "
          f"{len(grid) / total_s:.1f} candidates/s with it)")
    print(f"  stages: twin screen of {len(grid)} {stage_screen:.2f} s ({stage_screen / len(grid) * 1e3 * cores:.2f} ms of "
          f"a core per candidate), backtrader confirmation of {len(confirmed)} and ranking {stage_confirm:.2f} s")
    print(f"  chosen {screened.chosen} sharpe={screened.chosen_row['objective']:.6g}")

    # backtrader-only: every candidate (--bt-all) or a seeded sample timed and extrapolated
    chosen_index = int(screened.table.index[screened.table["chosen"]][0])
    if full:
        picked = list(range(len(grid)))
    else:
        rng = random.Random(7)
        picked = sorted(set(rng.sample(range(len(grid)), min(sample, len(grid)))) | set(confirmed.index))
    with BacktestPool(candles, SPEC, timeframe, workers=cores, isolate=True) as pool:
        pool.run([BacktestJob(grid[0], None, None)])
        started = time.perf_counter()
        outcomes = pool.run([BacktestJob(grid[i], None, None) for i in picked])
        bt_s = time.perf_counter() - started
    bt_rate = len(picked) / bt_s
    how = "all candidates" if full else f"a seeded sample of {len(picked)} (incl. the {len(confirmed)} confirmed), extrapolated"
    print(f"backtrader-only:  {len(grid) / bt_rate:6.1f} s  {bt_rate:8.2f} candidates/s  ({how})")
    ratio = rate / bt_rate
    # same choice: backtrader's objective where it ran, else the twin's (checked equal to
    # backtrader's to 1e-9 on every sampled candidate below, and by tests/test_vector.py)
    bt_sharpe = {i: o.metrics["sharpe"] if o.metrics else math.nan for i, o in zip(picked, outcomes)}
    worst = max(abs(bt_sharpe[i] - screened.table.loc[i, "sharpe"]) / max(abs(bt_sharpe[i]), 1e-300)
                for i in picked if not math.isnan(bt_sharpe[i]))
    objective_values = screened.table["objective"].copy()
    for i, value in bt_sharpe.items():
        objective_values[i] = value
    eligible = objective_values.where(screened.table["passed"])
    bt_choice = int(np.flatnonzero(eligible.to_numpy() == np.nanmax(eligible.to_numpy()))[0])
    same = bt_choice == chosen_index
    print(f"  twin vs backtrader sharpe on the {len(picked)} backtrader runs: worst relative difference {worst:.2e}")
    print(f"  backtrader-only choice {grid[bt_choice]} ({'all candidates run' if full else 'backtrader where run, twin (== backtrader to 1e-9) elsewhere'}); same as screen + confirm: {same}")
    if not full:
        print("  (a full backtrader-only sweep takes ~2 minutes of both cores: run with --bt-all to time every candidate; "
              "the per-candidate cost does not depend on the params, so a sample's rate is the sweep's rate)")
    ok = rate >= BAR_RATE and ratio >= BAR_RATIO and same and worst <= 1e-9
    print(f"candidates/s {rate:.1f} (bar >= {BAR_RATE:.0f}), screen+confirm / backtrader-only {ratio:.1f}x "
          f"(bar >= {BAR_RATIO:.0f}x) -> {'ok' if ok else 'UNDER THE BAR'}")
    return 0 if ok else 1


def walk_forward(size: int, candles: pd.DataFrame, timeframe: str, plan: WalkForwardPlan) -> int:
    cores = os.cpu_count() or 1
    grid = grid_of(size)
    began = time.perf_counter()
    with BacktestPool(candles, SPEC, timeframe, workers=cores, isolate=True) as pool:
        result = run_walk_forward(pool, grid, Objective("sharpe"), SweepFilters(min_trades=5), plan)
    seconds = time.perf_counter() - began
    windows = len(result.windows)
    print(f"walk-forward: {len(grid)} candidates x {windows} windows (train {plan.train_days} d, test "
          f"{plan.test_days} d) on one market: {seconds:.1f} s incl. pool startup "
          f"({len(grid) * windows / seconds:.0f} train candidates/s), bar < {BAR_WALK_S:.0f} s -> "
          f"{'ok' if seconds < BAR_WALK_S and windows >= 10 else 'UNDER THE BAR'}")
    return 0 if seconds < BAR_WALK_S and windows >= 10 else 1


__all__ = ["main", "walk_forward", "grid_of", "dt"]
