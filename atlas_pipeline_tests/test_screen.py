"""Screen then confirm (research/sweep.py): the twin ranks every candidate, backtrader reruns the
best and the chosen one, a drifted twin fails the sweep, a strategy without a twin is run by
backtrader throughout, and so are candidates with protective exits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.config.paths import strategies_dir
from atlas_pipeline.research.engine import BacktestSpec, run_backtest
from atlas_pipeline.research.engine.exits import Exits, with_params
from atlas_pipeline.research.metrics import METRIC_DESCRIPTIONS, compute_metrics
from atlas_pipeline.research.strategy_loader import load_strategy
from atlas_pipeline.research.sweep import BacktestPool, Objective, SweepFilters, TwinMismatch, expand_grid, run_sweep
from atlas_pipeline.research.vector import Bars, run_twin
from atlas_pipeline.research.vector.twin import ExitsNotTwinned

from .support import shared_candles

GRID = {"fast": [3, 5, 8, 13], "slow": [21, 34, 55]}
SPEC = BacktestSpec("sma_crossover", {"allow_short": True}, fraction=0.95, commission=0.001, slippage=0.0005)


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return shared_candles("binance_ETH-BTC_5m").iloc[:3000]


@pytest.fixture(scope="module")
def screened(candles):
    with BacktestPool(candles, SPEC, "5m", workers=1) as pool:
        return run_sweep(pool, expand_grid(GRID), Objective("sharpe"), SweepFilters(min_trades=5), confirm_top=3)


@pytest.fixture(scope="module")
def backtrader_only(candles):
    with BacktestPool(candles, SPEC, "5m", workers=1) as pool:
        return run_sweep(pool, expand_grid(GRID), Objective("sharpe"), SweepFilters(min_trades=5), confirm_top=None)


def test_top_k_and_the_chosen_are_backtrader_the_rest_twin(screened, backtrader_only):
    table = screened.table
    passed = table[table["passed"]].sort_values("objective", ascending=False, kind="stable")
    confirmed = set(passed["candidate"].head(3)) | set(table.loc[table["chosen"], "candidate"])
    assert set(table.loc[table["evaluated_by"] == "backtrader", "candidate"]) == confirmed
    assert (table.loc[~table["candidate"].isin(confirmed), "evaluated_by"] == "twin").all()
    assert (backtrader_only.table["evaluated_by"] == "backtrader").all()
    # the same choice either way, and confirmed rows hold backtrader's exact numbers
    assert screened.chosen == backtrader_only.chosen
    reference = backtrader_only.table.set_index("candidate")
    for row in table.itertuples():
        for key in METRIC_DESCRIPTIONS:
            ours, theirs = getattr(row, key), reference.loc[row.candidate, key]
            if key in ("start", "end"):
                assert ours == theirs
            elif row.evaluated_by == "backtrader":
                assert ours == theirs or (math.isnan(ours) and math.isnan(theirs)), key
            else:
                assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(ours) and math.isnan(theirs)), key


def test_chosen_row_equals_a_plain_backtest(screened, candles):
    spec = BacktestSpec("sma_crossover", {"allow_short": True, **screened.chosen}, fraction=0.95, commission=0.001,
                        slippage=0.0005)
    plain = run_backtest(candles, spec, "5m")
    metrics = compute_metrics(plain.equity, plain.trades, plain.close)
    assert screened.chosen_row["sharpe"] == metrics["sharpe"]
    assert screened.chosen_row["final_equity"] == metrics["final_equity"]


def copy_strategy(folder: Path, name: str, edit: tuple[str, str] | None = None) -> None:
    text = (strategies_dir() / "sma_crossover.py").read_text()
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    (folder / f"{name}.py").write_text(text)


def test_a_drifted_twin_fails_the_sweep_naming_params_and_bar(tmp_path, candles):
    """A twin that reads the fast SMA one bar late: the screen ranks with it, the confirmation
    catches it."""
    copy_strategy(tmp_path, "drifted", ("fast = bars.cached((\"sma\", p.fast), lambda: indicators.sma(bars.close, p.fast))",
                                        "fast = __import__('numpy').roll(indicators.sma(bars.close, p.fast), 1)"))
    spec = BacktestSpec("drifted", {"allow_short": True})
    with BacktestPool(candles, spec, "5m", strategies_dir=tmp_path, workers=1) as pool:
        with pytest.raises(TwinMismatch, match=r"twin of strategy 'drifted' disagrees.*params \{'fast': \d+, 'slow': \d+\}.*"
                                               r"first differs at 20\d\d-\d\d-\d\dT.*\(bar \d+\)"):
            run_sweep(pool, expand_grid(GRID), Objective("sharpe"), SweepFilters())


def test_a_strategy_without_a_twin_runs_on_backtrader(tmp_path, candles):
    """The twin method removed: every candidate goes to backtrader, with the same table."""
    text = (strategies_dir() / "sma_crossover.py").read_text()
    start, end = text.index("    @classmethod"), text.index("    def next(self)")
    (tmp_path / "plain_sma.py").write_text(text[:start] + text[end:])
    grid = expand_grid({"fast": [5, 8], "slow": [21, 34]})
    with BacktestPool(candles, BacktestSpec("plain_sma"), "5m", strategies_dir=tmp_path, workers=1) as pool:
        result = run_sweep(pool, grid, Objective("sharpe"), SweepFilters())
    assert (result.table["evaluated_by"] == "backtrader").all()
    with BacktestPool(candles, BacktestSpec("sma_crossover"), "5m", workers=1) as pool:
        twin = run_sweep(pool, grid, Objective("sharpe"), SweepFilters(), confirm_top=0)
    assert twin.chosen == result.chosen
    assert (twin.table["evaluated_by"] == "backtrader").sum() == 1  # only the chosen one is confirmed
    np.testing.assert_allclose(twin.table["sharpe"], result.table["sharpe"], rtol=1e-9)


def test_two_workers_screen_like_one(candles, screened):
    with BacktestPool(candles, SPEC, "5m", workers=2) as pool:
        parallel = run_sweep(pool, expand_grid(GRID), Objective("sharpe"), SweepFilters(min_trades=5), confirm_top=3)
    pd.testing.assert_frame_equal(parallel.table, screened.table, check_exact=True)


def test_candidates_with_exits_run_on_backtrader(candles):
    """The simulator does not fill protective exits, so a grid over ``exits.<key>`` and a spec with
    exits send every candidate to backtrader (confirm_top=0 would leave all but the chosen one to
    the twin otherwise): each row is exactly a plain backtest of that candidate."""
    cases = [
        (SPEC, {"fast": [5, 8], "exits.stop_loss": [0.004, 0.01]}),
        (BacktestSpec("sma_crossover", {"allow_short": True}, exits=Exits(take_profit=0.006)), {"fast": [5, 8], "slow": [21]}),
    ]
    for spec, grid in cases:
        candidates = expand_grid(grid)
        with BacktestPool(candles, spec, "5m", workers=1) as pool:
            result = run_sweep(pool, candidates, Objective("sharpe"), SweepFilters(), confirm_top=0)
        assert (result.table["evaluated_by"] == "backtrader").all(), grid
        fired = 0
        for row, params in zip(result.table.itertuples(), candidates):
            plain = run_backtest(candles, with_params(spec, params), "5m")
            metrics = compute_metrics(plain.equity, plain.trades, plain.close)
            for key in ("sharpe", "final_equity", "trade_count", "max_drawdown"):
                assert getattr(row, key) == metrics[key], (params, key)
            fired += int((plain.trades["exit_reason"] != "signal").sum())
        assert fired > 0  # the exits do close trades here, so the twin's numbers would differ
    with pytest.raises(ExitsNotTwinned, match="exits"):
        run_twin(load_strategy("sma_crossover"), Bars.from_candles(candles), {"fast": 5, "slow": 21},
                 with_params(SPEC, {"exits.trailing_stop": 0.01}))
