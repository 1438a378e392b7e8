"""The ``portfolios:`` section of ``backtests.yaml``: errors name the file, the portfolio, the key
and the value; references to exchanges.yaml are checked; it sits beside ``backtests:``."""

from pathlib import Path

import pytest
import yaml

from atlas_pipeline.config import ConfigError, load_exchanges_config
from atlas_pipeline.config.backtests import load_backtests_config
from atlas_pipeline.config.portfolios import load_portfolios_config
from atlas_pipeline.portfolio_runs import portfolio_spec

EXCHANGES = {"binance": {"timeframes": ["1h", "1d"], "markets": ["BTC/USDT", "ETH/USDT", "SOL/USDT"], "history_start": "2018-01-01"}}
GOOD = {
    "strategy": "sma_crossover",
    "exchange": "binance",
    "timeframe": "1h",
    "symbols": ["BTC/USDT", "ETH/USDT"],
    "period": {"start": "2019-01-01"},
}
BACKTEST = {**GOOD, "symbols": ["BTC/USDT"]}


def write(tmp_path: Path, document: dict) -> Path:
    (tmp_path / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": EXCHANGES}))
    (tmp_path / "backtests.yaml").write_text(yaml.safe_dump(document))
    return tmp_path


def load(tmp_path: Path, portfolios: dict):
    folder = write(tmp_path, {"portfolios": portfolios})
    return load_portfolios_config(load_exchanges_config(folder), folder)


def test_shipped_portfolio_loads_against_shipped_exchanges() -> None:
    config = load_portfolios_config(load_exchanges_config())
    assert config.portfolios, "config/backtests.yaml ships a portfolio example"
    spec = portfolio_spec(next(iter(config.portfolios.values())))
    assert spec.rebalance_every_ms == 86_400_000 and spec.allocation == "inverse_volatility"


def test_defaults_and_both_sections_in_one_file(tmp_path: Path) -> None:
    folder = write(tmp_path, {"backtests": {"sma": BACKTEST}, "portfolios": {"basket": GOOD}})
    exchanges = load_exchanges_config(folder)
    assert list(load_backtests_config(exchanges, folder).backtests) == ["sma"]
    basket = load_portfolios_config(exchanges, folder).get("basket")
    assert basket.allocation == "equal" and basket.max_positions is None and basket.sizing.fraction == 1.0
    assert basket.rebalance.every == "1d" and basket.rebalance.threshold == 0.05
    spec = portfolio_spec(basket)
    assert spec.market.commission == 0.001 and spec.rebalance_every_ms == 86_400_000
    # a file with portfolios only has no backtests, and one with backtests only no portfolios
    assert load_backtests_config(exchanges, write(tmp_path, {"portfolios": {"basket": GOOD}})).backtests == {}
    assert load_portfolios_config(exchanges, write(tmp_path, {"backtests": {"sma": BACKTEST}})).portfolios == {}


@pytest.mark.parametrize(
    ("change", "key", "value", "reason"),
    [
        ({"exchange": "kraken"}, "portfolios.basket.exchange", "'kraken'", "not in exchanges.yaml"),
        ({"timeframe": "5m"}, "portfolios.basket.timeframe", "'5m'", "collects only ['1h', '1d']"),
        ({"symbols": ["BTC/USDT", "DOGE/USDT"]}, "portfolios.basket.symbols[1]", "'DOGE/USDT'", "collects only"),
        ({"symbols": ["BTC/USDT", "BTC/USDT"]}, "portfolios.basket.symbols", "", "lists a market twice"),
        ({"allocation": "risk_parity"}, "portfolios.basket.allocation", "'risk_parity'", "'equal' or 'inverse_volatility'"),
        ({"allocation": "inverse_volatility"}, "portfolios.basket", "", "needs volatility_window"),
        ({"volatility_window": 24}, "portfolios.basket", "", "only used by allocation inverse_volatility"),
        ({"allocation": "inverse_volatility", "volatility_window": 1}, "portfolios.basket.volatility_window", "1", "greater than or equal to 2"),
        ({"max_positions": 3}, "portfolios.basket", "", "max_positions 3 exceeds the 2 market(s)"),
        ({"max_positions": 0}, "portfolios.basket.max_positions", "0", "greater than or equal to 1"),
        ({"rebalance": {"every": "fortnightly"}}, "portfolios.basket.rebalance.every", "'fortnightly'", "such as '4h'"),
        ({"rebalance": {"every": "90m"}}, "portfolios.basket.rebalance.every", "'90m'", "whole number of 1h candles"),
        ({"rebalance": {"threshold": 1.5}}, "portfolios.basket.rebalance.threshold", "1.5", "less than 1"),
        ({"rebalance": {"treshold": 0.1}}, "portfolios.basket.rebalance.treshold", "0.1", "unknown key"),
        ({"sizing": {"fraction": 0}}, "portfolios.basket.sizing.fraction", "0", "greater than 0"),
        ({"period": {"start": "2017-01-01"}}, "portfolios.basket.period.start", "2017-01-01", "before binance's history_start"),
        ({"period": {"start": "2099-01-01"}}, "portfolios.basket.period.start", "2099-01-01", "is in the future"),
        ({"strategy": "sma-crossover"}, "portfolios.basket.strategy", "'sma-crossover'", "must be a module name"),
    ],
)
def test_bad_settings_name_file_portfolio_key_and_value(tmp_path: Path, change: dict, key: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"basket": {**GOOD, **change}})
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'backtests.yaml'}: {key}")
    assert value in message and reason in message, message


def test_an_unknown_top_level_key_names_both_sections(tmp_path: Path) -> None:
    folder = write(tmp_path, {"backtests": {"sma": BACKTEST}, "portfolio": {"basket": GOOD}})
    with pytest.raises(ConfigError, match="portfolio.*expected only 'backtests' or 'portfolios'"):
        load_backtests_config(load_exchanges_config(folder), folder)


# ---- swap portfolios: the perp settings of a single backtest, named portfolios.<name>.<key> ------

SWAP_EXCHANGES = {"binance": {"timeframes": ["1h", "12h"], "markets": ["BTC/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT"],
                              "history_start": "2019-09-01"}}
SWAP = {**GOOD, "symbols": ["BTC/USDT:USDT", "ETH/USDT:USDT"], "market_type": "swap", "leverage": 3,
        "period": {"start": "2020-01-01"}}


def load_swap(tmp_path: Path, portfolio: dict, exchanges: dict = SWAP_EXCHANGES):
    (tmp_path / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": exchanges}))
    (tmp_path / "backtests.yaml").write_text(yaml.safe_dump({"portfolios": {"basket": portfolio}}))
    return load_portfolios_config(load_exchanges_config(tmp_path), tmp_path).get("basket")


def test_a_swap_portfolio_and_its_defaults(tmp_path: Path) -> None:
    settings = load_swap(tmp_path, SWAP)
    assert (settings.market_type, settings.leverage, settings.maintenance_margin, settings.liquidation_fee) == ("swap", 3, 0.004, 0.0125)
    assert settings.taker_fee() == 0.0005  # ccxt's USDⓈ-M taker fee, not spot's 0.1 %
    assert portfolio_spec(settings).market.commission == 0.0005
    shipped = load_portfolios_config(load_exchanges_config())
    assert any(p.market_type == "swap" for p in shipped.portfolios.values()), "config/backtests.yaml ships a swap portfolio"


@pytest.mark.parametrize(
    ("change", "exchanges", "key", "value", "reason"),
    [
        ({"symbols": ["BTC/USDT:USDT", "BTC/USDT"]}, None, "portfolios.basket.symbols[1]", "'BTC/USDT'", "is not a perpetual swap"),
        ({"market_type": "spot", "symbols": ["BTC/USDT"]}, None, "portfolios.basket.leverage", "3", "applies to market_type: swap only"),
        ({"market_type": "futures"}, None, "portfolios.basket.market_type", "'futures'", "'spot' or 'swap'"),
        ({"leverage": 200}, None, "portfolios.basket.leverage", "200", "less than or equal to 125"),
        ({"leverage": 50, "maintenance_margin": 0.03}, None, "portfolios.basket.maintenance_margin", "0.03", "below 1/leverage = 0.02"),
        ({"timeframe": "12h"}, None, "portfolios.basket.timeframe", "'12h'", "must divide binance's funding interval 8h"),
        ({"symbols": ["BTC/USDT:USDT", "SOL/USDT:USDT"]}, None, "portfolios.basket.symbols[1]", "'SOL/USDT:USDT'", "collects only"),
        ({}, {"binance": {"timeframes": ["1h"], "markets": [], "universe": {"quote": ["USDT"]}, "history_start": "2019-09-01"}},
         "portfolios.basket.symbols[0]", "'BTC/USDT:USDT'", "mark prices and funding are collected only for swaps listed"),
    ],
)
def test_bad_swap_settings_name_the_key(tmp_path: Path, change: dict, exchanges: dict | None, key: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_swap(tmp_path, {**SWAP, **change}, exchanges or SWAP_EXCHANGES)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'backtests.yaml'}: {key}"), message
    assert value in message and reason in message, message
