"""``backtests.yaml`` errors name the backtest, the key and the value; references are checked."""

from pathlib import Path

import pytest
import yaml

from atlas_pipeline.config import ConfigError, load_exchanges_config
from atlas_pipeline.config.backtests import exchange_fees, load_backtests_config

EXCHANGES = {"binance": {"timeframes": ["1h", "1d"], "markets": ["BTC/USDT", "ETH/USDT"], "history_start": "2018-01-01"}}
GOOD = {
    "strategy": "sma_crossover",
    "params": {"fast": 10, "slow": 30},
    "exchange": "binance",
    "timeframe": "1h",
    "symbols": ["BTC/USDT"],
    "period": {"start": "2019-01-01"},
}


def load(tmp_path: Path, backtests: dict):
    (tmp_path / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": EXCHANGES}))
    (tmp_path / "backtests.yaml").write_text(yaml.safe_dump({"backtests": backtests}))
    return load_backtests_config(load_exchanges_config(tmp_path), tmp_path)


def test_shipped_backtests_load_against_shipped_exchanges() -> None:
    config = load_backtests_config(load_exchanges_config())
    assert config.backtests, "config/backtests.yaml ships at least one backtest"


def test_defaults_and_fees_from_exchange_metadata(tmp_path: Path) -> None:
    settings = load(tmp_path, {"sma": GOOD}).get("sma")
    assert settings.cash == 10_000 and settings.sizing.fraction == 1.0 and settings.slippage == 0
    assert settings.period.end is None
    assert settings.taker_fee() == exchange_fees("binance")["taker"] == 0.001
    overridden = load(tmp_path, {"sma": {**GOOD, "fees": {"taker": 0.0004}}}).get("sma")
    assert overridden.taker_fee() == 0.0004


def test_missing_file_means_no_backtests(tmp_path: Path) -> None:
    (tmp_path / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": EXCHANGES}))
    assert load_backtests_config(load_exchanges_config(tmp_path), tmp_path).backtests == {}


@pytest.mark.parametrize(
    ("change", "key", "value", "reason"),
    [
        ({"exchange": "kraken"}, "backtests.sma.exchange", "'kraken'", "not in exchanges.yaml"),
        ({"timeframe": "5m"}, "backtests.sma.timeframe", "'5m'", "collects only ['1h', '1d']"),
        ({"symbols": ["BTC/USDT", "SOL/USDT"]}, "backtests.sma.symbols[1]", "'SOL/USDT'", "collects only"),
        ({"symbols": []}, "backtests.sma.symbols", "[]", "at least 1"),
        ({"period": {"start": "2017-01-01"}}, "backtests.sma.period.start", "2017-01-01", "before binance's history_start"),
        ({"period": {"start": "2020-01-01", "end": "2019-01-01"}}, "backtests.sma.period", "", "must be after start"),
        ({"cash": -5}, "backtests.sma.cash", "-5", "greater than 0"),
        ({"sizing": {"fraction": 1.5}}, "backtests.sma.sizing.fraction", "1.5", "less than or equal to 1"),
        ({"sizing": {"fractoin": 0.5}}, "backtests.sma.sizing.fractoin", "0.5", "unknown key"),
        ({"fees": {"taker": 0.5}}, "backtests.sma.fees.taker", "0.5", "less than 0.1"),
        ({"slippage": "lots"}, "backtests.sma.slippage", "'lots'", "valid number"),
        ({"strategy": "sma-crossover"}, "backtests.sma.strategy", "'sma-crossover'", "module name"),
        ({"stratgy": "x"}, "backtests.sma.stratgy", "'x'", "unknown key"),
    ],
)
def test_bad_backtest_settings_name_backtest_key_and_value(
    tmp_path: Path, change: dict, key: str, value: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"sma": {**GOOD, **change}})
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "backtests.yaml") + ": " + key), message
    assert value in message and reason in message, message


def test_backtest_names_must_be_asset_key_safe(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backtests.SMA Cross.name = 'SMA Cross': must be lower_snake_case"):
        load(tmp_path, {"SMA Cross": GOOD})


SWEPT = {
    **GOOD,
    "params": {"allow_short": True},
    "grid": {"fast": [5, 10], "slow": {"start": 20, "stop": 40, "step": 10}},
    "objective": "calmar",
    "filters": {"min_trades": 5, "max_drawdown": 0.4},
    "walk_forward": {"train_days": 60, "test_days": 20},
}


def test_grid_ranges_objective_filters_and_walk_forward(tmp_path: Path) -> None:
    settings = load(tmp_path, {"sma": SWEPT}).get("sma")
    assert settings.grid_values("slow") == [20, 30, 40]
    assert settings.candidates() == [
        {"fast": fast, "slow": slow} for fast in (5, 10) for slow in (20, 30, 40)
    ]
    objective = settings.sweep_objective()
    assert objective.metric == "calmar" and objective.higher_is_better
    assert load(tmp_path, {"sma": {**SWEPT, "objective": {"metric": "max_drawdown"}}}).get("sma").sweep_objective().higher_is_better is False
    filters = settings.sweep_filters()
    assert (filters.min_trades, filters.max_drawdown) == (5, 0.4)
    plan = settings.walk_forward_plan()
    assert (plan.train_days, plan.test_days, plan.step, plan.anchored) == (60, 20, 20, False)
    assert load(tmp_path, {"sma": GOOD}).get("sma").candidates() == []


def test_float_range_values_are_rounded_not_drifting(tmp_path: Path) -> None:
    grid = {"fast": [5], "slow": [20], "width": {"start": 1.5, "stop": 2.5, "step": 0.1}}
    settings = load(tmp_path, {"sma": {**GOOD, "params": {}, "grid": grid}}).get("sma")
    assert settings.grid_values("width") == [1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5]


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        ({"objective": "sharp"}, "backtests.sma.objective.metric", "unknown metric; one of"),
        ({"grid": {"fast": []}}, "backtests.sma.grid.fast", "needs a non-empty list"),
        ({"grid": {"fast": {"start": 10, "stop": 5, "step": 1}}}, "backtests.sma.grid.fast", "below start"),
        ({"grid": {"fast": {"start": 1, "stop": 5, "step": 0}}}, "backtests.sma.grid.fast.step", "greater than 0"),
        ({"grid": {"allow_short": [True, False]}}, "backtests.sma", "both fixed in params and swept in grid"),
        ({"grid": {"fast": list(range(40)), "slow": list(range(40))}}, "backtests.sma", "1,600 combinations"),
        ({"filters": {"max_drawdown": 1.5}}, "backtests.sma.filters.max_drawdown", "less than or equal to 1"),
        ({"filters": {"min_trade": 3}}, "backtests.sma.filters.min_trade", "unknown key"),
        ({"walk_forward": {"train_days": 60, "test_days": 20, "step_days": 10}}, "backtests.sma.walk_forward", "test windows would overlap"),
        ({"walk_forward": {"train_days": 0, "test_days": 20}}, "backtests.sma.walk_forward.train_days", "greater than 0"),
    ],
)
def test_bad_sweep_settings_name_the_key(tmp_path: Path, change: dict, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"sma": {**SWEPT, **change}})
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "backtests.yaml") + ": " + key), message
    assert reason in message, message


@pytest.mark.parametrize("key", ["walk_forward", "objective", "filters"])
def test_sweep_settings_without_a_grid_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key} needs a grid of params to sweep"):
        load(tmp_path, {"sma": {**GOOD, key: SWEPT[key]}})
