"""The worked example of docs/walkforward.md ("Reading DSR, PBO and the bootstrap bands"): the
demo's ``sma_walkforward_1h`` grid (16 candidates) swept on the demo's synthetic 1h candles
(seed 7, the emulator's) over 90 days ending ``--end``, and its overfitting statistics.

Run: ``.venv/bin/python bench/overfitting_demo.py [--end 2026-11-30] [--market ETH/USDT]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import tempfile

import pandas as pd

from atlas_pipeline.demo import DEMO_SEED, demo_backtests
from atlas_pipeline.market_data.emulator.synthetic import SyntheticCandleSource
from atlas_pipeline.research.engine import BacktestSpec
from atlas_pipeline.research.metrics import daily_returns
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research.sweep import BacktestPool, Objective, SweepFilters, expand_grid, run_sweep
from atlas_pipeline.research.trials import sweep_overfitting, trial_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--end", default="2026-11-30")
    parser.add_argument("--market", default="ETH/USDT")
    args = parser.parse_args()
    end = dt.date.fromisoformat(args.end)
    start = end - dt.timedelta(days=90)
    settings = demo_backtests(start)["sma_walkforward_1h"]
    ms = lambda day: int(pd.Timestamp(day, tz="UTC").value // 1_000_000)  # noqa: E731
    source = SyntheticCandleSource(DEMO_SEED, now=lambda: ms(end))
    candles = source.candles(args.market, "1h", ms(start), ms(end))
    grid = expand_grid({"fast": settings["grid"]["fast"], "slow": list(range(40, 101, 20))})
    spec = BacktestSpec("sma_crossover", cash=10_000, fraction=0.95, commission=0.001, slippage=0.0005)
    with BacktestPool(candles, spec, "1h", workers=2) as pool:
        sweep = run_sweep(pool, grid, Objective("sharpe"), SweepFilters(min_trades=3, max_drawdown=0.5))
        chosen = pool.backtest(sweep.chosen).result
    first, last = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    with tempfile.TemporaryDirectory() as root:
        results = ResultStore(root)
        rows = trial_rows(sweep, grid, backtest="sma_walkforward_1h", kind="sweep", strategy="sma_crossover",
                          exchange="binance", symbol=args.market, timeframe="1h", data_start=first, data_end=last)
        results.record_trials("binance", args.market, "1h", "sma_walkforward_1h", rows)
        stats = sweep_overfitting(daily_returns(chosen.equity["equity"]).to_numpy(float), sweep.dailies or [],
                                  results.trials("binance", args.market, "1h"), first, last)
    row = sweep.chosen_row
    print(f"{args.market} 1h {start} .. {end}: {len(candles)} candles, {len(grid)} candidates, "
          f"{sweep.passed_count} passed; chosen {sweep.chosen} sharpe {row['sharpe']:.3f} "
          f"total return {row['total_return']:.2%} ({int(row['trade_count'])} trades)")
    for key, value in stats.items():
        print(f"  {key:28s} {value:.4g}" if isinstance(value, float) and not math.isnan(value) else f"  {key:28s} {value}")


if __name__ == "__main__":
    main()
