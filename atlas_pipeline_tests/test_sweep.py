"""Parameter sweeps on real Binance candles with the real engine and strategies.

The expected choice, filter verdicts and metrics are recomputed here from plain backtests
(``run_backtest`` + ``compute_metrics``), never from the sweep's own table.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.research.engine import BacktestSpec, run_backtest
from atlas_pipeline.research.metrics import METRIC_DESCRIPTIONS, compute_metrics
from atlas_pipeline.research.sweep import (
    LOWER_IS_BETTER,
    OBJECTIVE_METRICS,
    BacktestJob,
    BacktestPool,
    Objective,
    SweepFilters,
    expand_grid,
    run_sweep,
    sweep_result,
)
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles

pytestmark = needs_shared_candles

SPEC = BacktestSpec("sma_crossover", cash=10_000.0)
GRID = {"fast": [5, 10, 20, 40], "slow": [10, 20, 40, 80]}
INVALID = {(10, 10), (20, 10), (20, 20), (40, 10), (40, 20), (40, 40)}
METRICS = [k for k in METRIC_DESCRIPTIONS if k not in ("start", "end")]


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return shared_candles("binance_ETH-BTC_5m")


@pytest.fixture(scope="module")
def serial(candles):
    """The 4x4 sweep run serially in-process, with its outcomes (for re-ranking under filters)."""
    grid = expand_grid(GRID)
    with BacktestPool(candles, SPEC, "5m", workers=1) as pool:
        messages: list[str] = []
        result = run_sweep(pool, grid, Objective("sharpe"), SweepFilters(), progress=messages.append)
        outcomes = pool.run([BacktestJob(p) for p in grid])
    return grid, result, outcomes, messages


def test_objective_and_grid_rules():
    assert "sharpe" in OBJECTIVE_METRICS and "start" not in OBJECTIVE_METRICS and "end" not in OBJECTIVE_METRICS
    assert Objective("max_drawdown").higher_is_better is False
    assert Objective("max_drawdown", maximize=True).higher_is_better is True
    assert Objective("cagr").higher_is_better is True
    with pytest.raises(ValueError, match="unknown objective metric 'sharp'.*sharpe"):
        Objective("sharp")
    assert expand_grid({"a": [1, 2], "b": ["x", "y", "z"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
        {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"},
    ]
    with pytest.raises(ValueError, match="'b'"):
        expand_grid({"a": [1], "b": []})


def test_4x4_sweep_reports_every_candidate_and_the_argmax(candles, serial):
    grid, result, _, messages = serial
    table = result.table
    assert list(table["candidate"]) == list(range(16))
    assert list(zip(table["param_fast"], table["param_slow"])) == [(p["fast"], p["slow"]) for p in grid]
    for row in table.itertuples():
        bad = (row.param_fast, row.param_slow) in INVALID
        assert row.rejected.startswith("error:") == bad, row
        assert math.isnan(row.sharpe) == bad
        if bad:
            assert "fast < slow" in row.rejected
    # the expected choice, computed here: argmax of sharpe over the valid combos, first on ties
    valid = table[~table.apply(lambda r: (r.param_fast, r.param_slow) in INVALID, axis=1)]
    best = valid["sharpe"].max()
    expected = int(valid.index[valid["sharpe"] == best][0])
    assert table["chosen"].sum() == 1 and table.index[table["chosen"]][0] == expected
    assert result.chosen == grid[expected]
    # the chosen row's metrics equal a plain in-process backtest of those params
    plain = run_backtest(candles, BacktestSpec("sma_crossover", result.chosen), "5m")
    metrics = compute_metrics(plain.equity, plain.trades, plain.close)
    row = result.chosen_row
    for key in METRIC_DESCRIPTIONS:
        assert row[key] == metrics[key] or (key not in ("start", "end") and np.isnan(row[key]) and np.isnan(metrics[key])), key
    assert row["objective"] == metrics["sharpe"]
    assert 1 < len(messages) <= 12
    assert messages[-1].startswith("sweep done: 16 candidates, 10 passed, chosen ")
    assert str(result.chosen) in messages[-1]


def test_filters_reject_the_right_rows(serial):
    grid, _, outcomes, _ = serial
    ok = [o.metrics for o in outcomes if o.metrics]
    trades = sorted({m["trade_count"] for m in ok})
    drawdowns = sorted(m["max_drawdown"] for m in ok)
    min_trades = int(trades[len(trades) // 2])
    limit = drawdowns[len(drawdowns) // 2]
    result = sweep_result(grid, outcomes, Objective("sharpe"), SweepFilters(min_trades=min_trades, max_drawdown=limit))
    for outcome, row in zip(outcomes, result.table.itertuples()):
        m = outcome.metrics
        if m is None:
            assert not row.passed and row.rejected.startswith("error:")
            continue
        few, deep = m["trade_count"] < min_trades, m["max_drawdown"] > limit
        assert row.passed == (not few and not deep)
        assert ("< min_trades" in row.rejected) == few
        assert ("max_drawdown" in row.rejected) == deep
    passed = [o.metrics for o in outcomes if o.metrics and o.metrics["trade_count"] >= min_trades
              and o.metrics["max_drawdown"] <= limit]
    assert passed, "the medians leave some candidates"
    assert result.chosen_row["sharpe"] == max(m["sharpe"] for m in passed)


def test_lower_is_better_objective_picks_the_minimum(serial):
    grid, _, outcomes, _ = serial
    assert "max_drawdown" in LOWER_IS_BETTER
    result = sweep_result(grid, outcomes, Objective("max_drawdown"), SweepFilters())
    assert result.chosen_row["max_drawdown"] == min(o.metrics["max_drawdown"] for o in outcomes if o.metrics)


def test_none_passed_gives_no_choice(serial, candles):
    grid, _, outcomes, _ = serial
    result = sweep_result(grid, outcomes, Objective(), SweepFilters(min_trades=10_000))
    assert result.chosen is None and result.chosen_row is None
    assert not result.table["passed"].any() and not result.table["chosen"].any()
    assert result.table["rejected"].str.contains("< min_trades 10000|error:").all()
    with BacktestPool(candles.iloc[:600], SPEC, "5m", workers=1) as pool:
        messages: list[str] = []
        run = run_sweep(pool, [{"fast": 5, "slow": 10}], Objective(), SweepFilters(max_drawdown=0.0), progress=messages.append)
    assert run.chosen is None and run.table["rejected"][0].startswith("max_drawdown ")
    assert "no candidate passed the filters" in messages[-1]


def test_all_errored_raises_the_first_error(candles):
    with BacktestPool(candles.iloc[:500], SPEC, "5m", workers=1) as pool:
        with pytest.raises(ValueError, match="all 2 sweep candidates failed.*fast=30 slow=20"):
            run_sweep(pool, [{"fast": 30, "slow": 20}, {"fast": 50, "slow": 20}], Objective(), SweepFilters())
        # too few candles for the warm-up is an error as well (ValueError from the engine)
        with pytest.raises(ValueError, match="too few"):
            run_sweep(pool, [{"fast": 5, "slow": 400}], Objective(), SweepFilters(), start_ms=int(candles["timestamp"][0]),
                      end_ms=int(candles["timestamp"][300]))


def test_range_is_half_open(candles):
    stamps = candles["timestamp"]
    with BacktestPool(candles, SPEC, "5m", workers=1) as pool:
        (outcome,) = pool.run([BacktestJob({"fast": 5, "slow": 10}, int(stamps[100]), int(stamps[400]))], keep_results=True)
    expected = run_backtest(candles.iloc[100:400], BacktestSpec("sma_crossover", {"fast": 5, "slow": 10}), "5m")
    pd.testing.assert_frame_equal(outcome.result.equity, expected.equity, check_exact=True)


def test_trade_from_is_passed_to_the_engine(candles):
    stamps = candles["timestamp"]
    params = {"fast": 5, "slow": 10}
    job = BacktestJob(params, int(stamps[100]), int(stamps[400]), trade_from_ms=int(stamps[250]))
    with BacktestPool(candles, SPEC, "5m", workers=1) as pool:
        (outcome,) = pool.run([job], keep_results=True)
        (bad,) = pool.run([BacktestJob(params, int(stamps[100]), int(stamps[400]), trade_from_ms=int(stamps[400]))])
    expected = run_backtest(candles.iloc[100:400], BacktestSpec("sma_crossover", params), "5m",
                            trade_from_ms=int(stamps[250]))
    assert outcome.result.warmup_bars == 150
    pd.testing.assert_frame_equal(outcome.result.equity, expected.equity, check_exact=True)
    pd.testing.assert_frame_equal(outcome.result.orders, expected.orders, check_exact=True)
    assert outcome.metrics["final_equity"] == expected.equity["equity"].iloc[-1]
    assert bad.metrics is None and "after the last candle" in bad.error  # an errored candidate


def test_two_workers_equal_one(candles, serial):
    grid, result, _, _ = serial
    with BacktestPool(candles, SPEC, "5m", workers=2) as pool:
        seen: list[tuple[int, int]] = []
        parallel = run_sweep(pool, grid, Objective("sharpe"), SweepFilters())
        kept = pool.run([BacktestJob(grid[1]), BacktestJob(grid[2])], keep_results=True, progress=lambda d, t: seen.append((d, t)))
    pd.testing.assert_frame_equal(parallel.table, result.table, check_exact=True)
    assert parallel.chosen == result.chosen
    assert seen == [(1, 2), (2, 2)]
    assert kept[0].result is not None and kept[0].metrics["final_equity"] == kept[0].result.equity["equity"].iloc[-1]
    assert kept[1].metrics == result.table.loc[2, list(METRIC_DESCRIPTIONS)].to_dict()


def test_ties_go_to_the_earlier_candidate(candles):
    grid = [{"fast": 5, "slow": 40}, {"fast": 10, "slow": 20}, {"fast": 10, "slow": 20}]
    with BacktestPool(candles.iloc[:1500], SPEC, "5m", workers=1) as pool:
        for objective in (Objective("trade_count", maximize=False), Objective("trade_count", maximize=True)):
            result = run_sweep(pool, grid, objective, SweepFilters())
            counts = result.table["trade_count"]
            assert counts[1] == counts[2] != counts[0]
            wanted = counts[1] < counts[0] if not objective.maximize else counts[1] > counts[0]
            assert result.table.index[result.table["chosen"]].tolist() == [1 if wanted else 0]
            assert result.table["chosen"].sum() == 1
