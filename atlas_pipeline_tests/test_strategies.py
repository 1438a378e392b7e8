"""Every shipped strategy loads, documents its params, runs on real candles and trades."""

from __future__ import annotations

import backtrader as bt
import pytest

from atlas_pipeline.config.paths import REPO_ROOT
from atlas_pipeline.research.engine import BacktestSpec, run_backtest
from atlas_pipeline.research.strategy_base import AtlasStrategy
from atlas_pipeline.research.strategy_loader import available_strategies, load_strategy, strategy_params
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles

SHIPPED = ["bollinger_breakout", "donchian_trend", "rsi_mean_reversion", "sma_crossover"]
MARKETS = ["binance_ETH-BTC_5m", "binance_ADA-BTC_5m"]


def test_the_shipped_strategies_are_found():
    assert available_strategies() == SHIPPED  # README.md and __init__.py are not strategies
    assert available_strategies(REPO_ROOT / "strategies") == SHIPPED


def test_atlas_strategies_env_var_moves_the_folder(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text("import backtrader as bt\nclass Mine(bt.Strategy):\n    pass\n")
    monkeypatch.setenv("ATLAS_STRATEGIES", str(tmp_path))
    assert available_strategies() == ["mine"]
    assert load_strategy("mine").__name__ == "Mine"


@pytest.mark.parametrize("name", SHIPPED)
def test_params_are_documented_with_type_and_default(name):
    cls = load_strategy(name)
    assert issubclass(cls, AtlasStrategy) and issubclass(cls, bt.Strategy)
    params = strategy_params(cls)
    assert params["allow_short"] is False  # long-only unless asked
    for key, default in params.items():
        assert f"{key} ({type(default).__name__}, default {default!r})" in cls.__doc__, (name, key)


@needs_shared_candles
@pytest.mark.parametrize("market", MARKETS)
@pytest.mark.parametrize("name", SHIPPED)
def test_runs_on_real_candles_and_trades(name, market):
    candles = shared_candles(market)
    long_only = run_backtest(candles, BacktestSpec(name, fraction=0.95), "5m")
    both = run_backtest(candles, BacktestSpec(name, {"allow_short": True}, fraction=0.95), "5m")
    assert len(long_only.trades) >= 5 and set(long_only.trades["side"]) == {"long"}
    assert (long_only.equity["position"] >= 0).all()
    shorts = both.trades[both.trades["side"] == "short"]
    assert len(shorts) >= 5 and (both.equity["position"] < 0).any()
    for result in (long_only, both):
        assert result.orders["status"].eq("completed").all()
        assert 0 < result.warmup_bars < 100 and result.bars + result.warmup_bars == len(candles)
