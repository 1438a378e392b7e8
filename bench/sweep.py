"""Sweep speed: one 4x4 SMA crossover sweep serial (in-process) vs a ``BacktestPool`` of all cores.

Run: ``/work/venv/bin/python bench/sweep.py [--days 240] [--timeframe 5m]``. One run sweeps
``fast`` x ``slow`` (16 valid candidates) of ``strategies/sma_crossover.py`` over seeded synthetic
candles (``bench/store_read.py``'s random walk; 240 days of 5m = 69,120 bars, so the serial sweep
takes ~30 s and the pool's startup is small beside it), first with ``workers=1`` (no processes),
then with ``workers=os.cpu_count()``, pool startup included (the timer covers creating the pool,
starting its fork server and workers, sending the candles, and shutting it down). Prints both
times, the speed-up serial / pool and the bar (>= 1.7 on 2 cores, ``0.85 x cores`` in general),
and checks that both sweeps give the same table exactly; exits 1 if they differ or the ratio is
under the bar. On a shared box the bar can only be met when the cores are free: the run also
prints how many cores' worth a plain CPU-bound loop gets before and after (1 vs N processes).

``--grid 1000`` instead measures screen + confirm (issue 13): 1,000 ``sma_crossover`` candidates
(fast 2..41 x slow 50..290) on one year of seeded 1h synthetic candles, all cores: candidates/s
of the sweep as ``research_runs`` runs it (twin screen, top 5 + chosen confirmed by backtrader)
and of backtrader-only (a seeded sample of 100 candidates plus the confirmed ones, timed and
extrapolated: every backtrader run of one candle range costs the same whatever its params;
``--bt-all`` runs all 1,000, ~2 minutes), their ratio (bars: >= 300 candidates/s, >= 50x), and
checks the choice is the same either way; then a walk-forward of the same 1,000 candidates x 10
windows (train 90 days, test 27) on that market (bar: under a minute, pool startup included).
Pool startup (fork server, workers importing backtrader and numba) is timed apart: it is paid
once per sweep or walk-forward, whatever the grid.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from atlas_pipeline.research.engine import BacktestSpec
from atlas_pipeline.research.sweep import BacktestPool, Objective, SweepFilters, SweepResult, expand_grid, run_sweep

sys.path.insert(0, str(Path(__file__).parent))
from store_read import synthetic_candles  # noqa: E402

GRID = {"fast": [5, 10, 20, 30], "slow": [40, 60, 80, 100]}
SPEC = BacktestSpec("sma_crossover", cash=10_000.0, fraction=0.95, commission=0.001)
START = dt.date(2025, 1, 1)
BAR_PER_CORE = 0.85


SPIN = "import time; t = time.perf_counter(); x = sum(range(60_000_000)); print(time.perf_counter() - t)"


def machine_parallelism(cores: int) -> float:
    """How many cores' worth of a CPU-bound loop the box gives right now: one process's time over
    ``cores`` concurrent ones, times ``cores`` (other people's jobs on a shared box lower it)."""
    def run(n: int) -> float:
        began = time.perf_counter()
        for proc in [subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.DEVNULL) for _ in range(n)]:
            proc.wait()
        return time.perf_counter() - began

    return cores * run(1) / run(cores)


def timed_sweep(candles: pd.DataFrame, timeframe: str, workers: int) -> tuple[float, SweepResult]:
    began = time.perf_counter()
    with BacktestPool(candles, SPEC, timeframe, workers=workers) as pool:
        result = run_sweep(pool, expand_grid(GRID), Objective("sharpe"), SweepFilters())
    return time.perf_counter() - began, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=240)
    parser.add_argument("--timeframe", default="5m")
    parser.add_argument("--grid", type=int, help="screen + confirm bench with this many candidates (1h, 365 days)")
    parser.add_argument("--bt-sample", type=int, default=100, help="backtrader-only candidates timed with --grid")
    parser.add_argument("--bt-all", action="store_true", help="with --grid: run every candidate through backtrader")
    args = parser.parse_args()
    if args.grid:
        from screen import main as screen_main, walk_forward
        from atlas_pipeline.research.walkforward import WalkForwardPlan

        candles = synthetic_candles("1h", START, START + dt.timedelta(days=365), seed=7)
        cores = os.cpu_count() or 1
        print(f"machine parallelism now: {machine_parallelism(cores):.2f} of {cores} cores (other processes on a shared "
              "box slow every number below alike; the ratio is the robust one)")
        code = screen_main(args.grid, 365, args.bt_sample, args.bt_all, candles, "1h")
        code = walk_forward(args.grid, candles, "1h", WalkForwardPlan(90, 27)) or code
        print(f"load average after: {os.getloadavg()[0]:.2f}; machine parallelism after: {machine_parallelism(cores):.2f}")
        return code
    cores = os.cpu_count() or 1
    candles = synthetic_candles(args.timeframe, START, START + dt.timedelta(days=args.days), seed=7)
    candidates = len(expand_grid(GRID))
    print(f"{candidates} candidates x {len(candles):,} {args.timeframe} bars ({args.days} days), {cores} cores, "
          f"load average {os.getloadavg()[0]:.2f} (other processes slow the pool run more than the serial one)")

    print(f"machine parallelism now: {machine_parallelism(cores):.2f} of {cores} cores (a CPU-bound loop in 1 vs {cores} processes)")
    serial_s, serial = timed_sweep(candles, args.timeframe, 1)
    print(f"serial (workers=1)      {serial_s:7.2f} s  {candidates * len(candles) / serial_s:10,.0f} bars/s")
    pool_s, pooled = timed_sweep(candles, args.timeframe, cores)
    print(f"pool (workers={cores}, incl. startup) {pool_s:7.2f} s  {candidates * len(candles) / pool_s:10,.0f} bars/s")

    print(f"load average after: {os.getloadavg()[0]:.2f}; machine parallelism after: {machine_parallelism(cores):.2f}")
    bar = BAR_PER_CORE * cores if cores > 1 else 1.0
    ratio = serial_s / pool_s
    try:
        pd.testing.assert_frame_equal(serial.table, pooled.table, check_exact=True)
        same = True
    except AssertionError as difference:
        print(f"tables differ: {difference}")
        same = False
    print(f"chosen: {serial.chosen} (serial) vs {pooled.chosen} (pool); tables equal: {same}")
    print(f"speed-up serial / pool: {ratio:.2f}x (bar >= {bar:.2f}) -> {'ok' if ratio >= bar else 'UNDER THE BAR'}")
    return 0 if same and ratio >= bar else 1


if __name__ == "__main__":
    sys.exit(main())
