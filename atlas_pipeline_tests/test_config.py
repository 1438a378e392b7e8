"""Bad configuration fails at load time with the file, the key and the value in the message."""

from pathlib import Path

import pytest
import yaml

from atlas_pipeline.config import ConfigError, load_exchanges_config
from atlas_pipeline.defs.definitions import build_definitions

GOOD = {"timeframes": ["1h"], "markets": ["BTC/USDT"]}


def write_config(folder: Path, exchanges: object, **top: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": exchanges, **top}))
    return folder


def load_error(tmp_path: Path, exchanges: object, **top: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_exchanges_config(write_config(tmp_path, exchanges, **top))
    return caught.value


def test_shipped_config_loads() -> None:
    config = load_exchanges_config()
    binance = config.get("binance")
    assert binance.timeframes and binance.markets
    assert binance.effective_request_limit == 1000  # ccxt's documented Binance maximum


def test_defaults(tmp_path: Path) -> None:
    settings = load_exchanges_config(write_config(tmp_path, {"binance": GOOD})).get("binance")
    assert settings.history_start.isoformat() == "2017-01-01"
    assert settings.api_url is None and settings.credentials() == {}


@pytest.mark.parametrize(
    ("settings", "key", "value", "reason"),
    [
        ({**GOOD, "timeframes": ["7m"]}, "exchanges.binance.timeframes", "['7m']", "does not divide a UTC day"),
        ({**GOOD, "timeframes": ["1w"]}, "exchanges.binance.timeframes", "['1w']", "does not divide a UTC day"),
        ({**GOOD, "timeframes": ["2m"]}, "exchanges.binance.timeframes[0]", "'2m'", "binance offers"),
        ({**GOOD, "markets": ["BTCUSDT"]}, "exchanges.binance.markets", "['BTCUSDT']", "not a ccxt symbol"),
        ({**GOOD, "markets": ["BTC/USDT", "BTC/USDT"]}, "exchanges.binance.markets", "BTC/USDT", "twice"),
        ({**GOOD, "timeframe": ["1h"]}, "exchanges.binance.timeframe", "['1h']", "unknown key"),
        ({"markets": ["BTC/USDT"]}, "exchanges.binance.timeframes", "", "is required"),
        ({**GOOD, "history_start": "2099-01-01"}, "exchanges.binance.history_start", "2099-01-01", "in the future"),
        ({**GOOD, "history_start": "yesterday"}, "exchanges.binance.history_start", "'yesterday'", "date"),
        ({**GOOD, "request_limit": 5000}, "exchanges.binance.request_limit", "5000", "at most 1000"),
        ({**GOOD, "request_limit": 0}, "exchanges.binance.request_limit", "0", "greater than or equal to 1"),
        ({**GOOD, "api_url": "localhost:8765"}, "exchanges.binance.api_url", "'localhost:8765'", "scheme and host"),
        ({**GOOD, "api_key_env": "abc-123-secret"}, "exchanges.binance.api_key_env", "'abc-123-secret'", "environment variable"),
        ({**GOOD, "api_key": "abc"}, "exchanges.binance.api_key", "'abc'", "unknown key"),
    ],
)
def test_bad_exchange_settings_name_file_key_and_value(
    tmp_path: Path, settings: dict, key: str, value: str, reason: str
) -> None:
    error = load_error(tmp_path, {"binance": settings})
    message = str(error)
    assert message.startswith(str(tmp_path / "exchanges.yaml") + ": " + key), message
    assert value in message and reason in message, message


def test_hundreds_of_markets_are_one_entry(tmp_path: Path) -> None:
    """The old 25-market cap is gone: a universe of 500 markets is one exchange entry."""
    markets = [f"C{i}/USDT" for i in range(500)]
    (tmp_path / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": {"binance": {**GOOD, "markets": markets}}}))
    assert load_exchanges_config(tmp_path).get("binance").markets == markets


def test_unknown_exchange(tmp_path: Path) -> None:
    message = str(load_error(tmp_path, {"binanse": GOOD}))
    assert "exchanges.binanse.id = 'binanse'" in message and "ccxt" in message


def test_structural_errors(tmp_path: Path) -> None:
    assert "exchanges" in str(load_error(tmp_path, {}))
    assert "needs a mapping" in str(load_error(tmp_path, {"binance": ["1h"]}))
    assert "unknown top-level key" in str(load_error(tmp_path, {"binance": GOOD}, extra=1))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exchanges.yaml: file not found"):
        load_exchanges_config(tmp_path)
    (tmp_path / "exchanges.yaml").write_text("exchanges:\n  binance: {timeframes: [1h\n")
    with pytest.raises(ConfigError, match=r"exchanges.yaml: line \d+.*not valid YAML"):
        load_exchanges_config(tmp_path)


def test_api_keys_come_from_the_environment_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_config(tmp_path, {"binance": {**GOOD, "api_key_env": "ATLAS_T_KEY", "api_secret_env": "ATLAS_T_SECRET"}})
    settings = load_exchanges_config(folder).get("binance")
    monkeypatch.delenv("ATLAS_T_KEY", raising=False)
    with pytest.raises(ValueError, match=r"api_key_env names \$ATLAS_T_KEY, which is not set"):
        settings.credentials()
    monkeypatch.setenv("ATLAS_T_KEY", "k-value")
    monkeypatch.setenv("ATLAS_T_SECRET", "s-value")
    assert settings.credentials() == {"apiKey": "k-value", "secret": "s-value"}
    assert "k-value" not in repr(settings)


def test_atlas_config_env_selects_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, {"kraken": GOOD})
    monkeypatch.setenv("ATLAS_CONFIG", str(tmp_path))
    assert list(load_exchanges_config().exchanges) == ["kraken"]


def test_definitions_refuse_a_bad_config(tmp_path: Path) -> None:
    folder = write_config(tmp_path, {"binance": {**GOOD, "timeframes": ["7m"]}})
    with pytest.raises(ConfigError, match="timeframes"):
        build_definitions(folder)
