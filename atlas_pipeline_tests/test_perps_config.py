"""Perp settings in ``exchanges.yaml`` and ``backtests.yaml``: errors name the file, key and value."""

from pathlib import Path

import pytest
import yaml

from atlas_pipeline.config import ConfigError, load_exchanges_config
from atlas_pipeline.config.backtests import load_backtests_config

EXCHANGES = {"binance": {"timeframes": ["1h", "12h"], "markets": ["BTC/USDT", "BTC/USDT:USDT"], "history_start": "2019-09-01"}}
PERP = {
    "strategy": "sma_crossover",
    "exchange": "binance",
    "timeframe": "1h",
    "symbols": ["BTC/USDT:USDT"],
    "market_type": "swap",
    "leverage": 3,
    "period": {"start": "2020-01-01"},
}


def load(tmp_path: Path, backtest: dict, exchanges: dict = EXCHANGES):
    (tmp_path / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": exchanges}))
    (tmp_path / "backtests.yaml").write_text(yaml.safe_dump({"backtests": {"perp": backtest}}))
    return load_backtests_config(load_exchanges_config(tmp_path), tmp_path).get("perp")


def test_a_perp_backtest_and_its_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, PERP)
    assert (settings.market_type, settings.leverage, settings.maintenance_margin, settings.liquidation_fee) == ("swap", 3, 0.004, 0.0125)
    assert settings.taker_fee() == 0.0005  # ccxt's USDⓈ-M taker fee, not spot's 0.1 %


@pytest.mark.parametrize(
    ("change", "key", "value", "reason"),
    [
        ({"symbols": ["BTC/USDT"]}, "backtests.perp.symbols[0]", "'BTC/USDT'", "is not a perpetual swap"),
        ({"market_type": "spot", "leverage": 1}, "backtests.perp.symbols[0]", "'BTC/USDT:USDT'", "is not a spot market"),
        ({"market_type": "future"}, "backtests.perp.market_type", "'future'", "'spot' or 'swap'"),
        ({"leverage": 200}, "backtests.perp.leverage", "200", "less than or equal to 125"),
        ({"leverage": 50, "maintenance_margin": 0.03}, "backtests.perp.maintenance_margin", "0.03", "below 1/leverage = 0.02"),
        ({"timeframe": "12h"}, "backtests.perp.timeframe", "'12h'", "must divide binance's funding interval 8h"),
    ],
)
def test_bad_perp_settings(tmp_path: Path, change: dict, key: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {**PERP, **change})
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "backtests.yaml") + ": " + key), message
    assert value in message and reason in message, message


def test_leverage_on_spot_is_refused(tmp_path: Path) -> None:
    spot = {**PERP, "symbols": ["BTC/USDT"], "market_type": "spot"}
    with pytest.raises(ConfigError, match=r"backtests.perp.leverage = 3.0: applies to market_type: swap only"):
        load(tmp_path, spot)


@pytest.mark.parametrize(
    ("entry", "value", "reason"),
    [
        ({"okx": {"timeframes": ["1h"], "markets": ["BTC/USDT:USDT"]}}, "'BTC/USDT:USDT'", "from binance only"),
        ({"binance": {"timeframes": ["1h"], "markets": ["BTC/USD:BTC"]}}, "'BTC/USD:BTC'", "only linear swaps"),
    ],
)
def test_swaps_in_exchanges_yaml(tmp_path: Path, entry: dict, value: str, reason: str) -> None:
    (tmp_path / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": entry}))
    with pytest.raises(ConfigError) as caught:
        load_exchanges_config(tmp_path)
    assert value in str(caught.value) and reason in str(caught.value), str(caught.value)
