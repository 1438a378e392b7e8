"""Safe defaults (issue 8 part 5): a loopback-only UI and a required database password in Compose,
a store root no run config can move, Retry-After honoured in full (and a 418 ban waited out), and
config errors that stay short however large or alias-laden the YAML."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from atlas_pipeline.config import ConfigError, load_exchanges_config
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.market_data.launch import partition_range_tags
from atlas_pipeline.market_data.candles import day_start_ms
from atlas_pipeline.market_data.emulator import FaultRule, SyntheticCandleSource
from atlas_pipeline.market_data.exchange_client import (
    MAX_RETRY_AFTER_SECONDS,
    ExchangeClient,
    ExchangeConnection,
    ExchangeRequestError,
)
from atlas_pipeline.market_data.store import CandleStore
from atlas_pipeline_tests.support import run_range, write_exchange_config

REPO = Path(__file__).resolve().parents[1]
D = dt.date

# --- docker-compose.yml ----------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (unset or empty alike)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        current = env.get(match["name"], "")
        if current:
            return current
        if match["op"] == ":?":
            raise MissingVariable(f"{match['name']}: {match['arg']}")
        return match["arg"] or ""

    return _VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_publishes_the_ui_on_loopback_unless_asked(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {name for name, service in services.items() if service.get("ports")} == {"webserver"}
    env = {"POSTGRES_PASSWORD": "s3cret"}
    assert interpolate(services["webserver"]["ports"], env) == ["127.0.0.1:3000:3000"]
    # opting in publishes it on another address (behind an authenticating proxy, docs/deployment.md)
    assert interpolate(services["webserver"]["ports"], {**env, "ATLAS_UI_BIND": "0.0.0.0"}) == ["0.0.0.0:3000:3000"]


def test_compose_has_no_default_database_password(compose: dict[str, Any]) -> None:
    services = compose["services"]
    raw = [services["postgres"]["environment"]["POSTGRES_PASSWORD"]]
    raw += [services[name]["environment"]["DAGSTER_PG_PASSWORD"] for name in ("webserver", "daemon")]
    for value in raw:
        assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", value), value
    for name in ("postgres", "webserver", "daemon"):
        with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
            interpolate(services[name]["environment"], {})
        with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
            interpolate(services[name]["environment"], {"POSTGRES_PASSWORD": ""})
    resolved = interpolate(services, {"POSTGRES_PASSWORD": "s3cret"})
    assert resolved["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    assert resolved["webserver"]["environment"]["DAGSTER_PG_PASSWORD"] == "s3cret"
    assert resolved["daemon"]["environment"]["DAGSTER_PG_PASSWORD"] == "s3cret"


# --- Retry-After, 429 and 418, through ccxt and the emulator ---------------------------------

START, END = day_start_ms(D(2018, 1, 2)), day_start_ms(D(2018, 1, 3))


def client_for(server, sleeps: list[float], max_retries: int = 3) -> ExchangeClient:
    connection = ExchangeConnection(
        "binance", api_url=server.base_url, timeout_seconds=5, min_request_interval_ms=0, max_retries=max_retries
    )
    return ExchangeClient(connection, sleep=sleeps.append)


@pytest.fixture
def exchange(emulator_factory):
    return emulator_factory(SyntheticCandleSource(seed=5))


def test_documented_maximum_is_ten_minutes() -> None:
    assert MAX_RETRY_AFTER_SECONDS == 600


@pytest.mark.parametrize("status", [429, 418])
def test_retry_after_longer_than_a_minute_is_waited_in_full(exchange, status: int) -> None:
    exchange.set_faults([FaultRule(kind="rate_limit", endpoint="klines", status=status, times=1, retry_after=450)])
    sleeps: list[float] = []
    result = client_for(exchange, sleeps).fetch_range("BTC/USDT", "1h", START, END)
    assert sleeps == [450.0]  # not cut to 60 s: an early retry is what earns Binance's IP ban
    assert len(result.candles) == 24 and result.retries == 1
    assert exchange.stats["statuses"].get(str(status)) == 1


def test_a_418_ban_is_waited_out_then_the_fetch_goes_on(exchange) -> None:
    exchange.set_faults([FaultRule(kind="rate_limit", endpoint="klines", status=418, times=1, retry_after=MAX_RETRY_AFTER_SECONDS)])
    sleeps: list[float] = []
    result = client_for(exchange, sleeps).fetch_range("BTC/USDT", "1h", START, END)
    assert sleeps == [MAX_RETRY_AFTER_SECONDS]
    assert len(result.candles) == 24


@pytest.mark.parametrize(("status", "what"), [(418, "banned"), (429, "rate limit")])
def test_a_wait_beyond_the_maximum_fails_at_once_naming_it(exchange, status: int, what: str) -> None:
    exchange.set_faults([FaultRule(kind="rate_limit", endpoint="klines", status=status, retry_after=7200)])
    sleeps: list[float] = []
    with pytest.raises(ExchangeRequestError) as caught:
        client_for(exchange, sleeps).fetch_range("BTC/USDT", "1h", START, END)
    message = str(caught.value)
    assert sleeps == []
    assert exchange.stats["requests"]["klines"] == 1  # no hammering while banned
    assert f"HTTP {status}" in message and what in message
    assert "Retry-After 7200 s" in message and "600 s" in message
    assert "binance BTC/USDT 1h candles since 2018-01-02 00:00" in message


def test_a_418_without_retry_after_is_not_retried(exchange) -> None:
    exchange.set_faults([FaultRule(kind="rate_limit", endpoint="klines", status=418, retry_after=None)])
    sleeps: list[float] = []
    with pytest.raises(ExchangeRequestError, match="HTTP 418.*no Retry-After"):
        client_for(exchange, sleeps).fetch_range("BTC/USDT", "1h", START, END)
    assert sleeps == [] and exchange.stats["requests"]["klines"] == 1


def test_a_429_without_retry_after_backs_off_exponentially(exchange) -> None:
    exchange.set_faults([FaultRule(kind="rate_limit", endpoint="klines", times=2, retry_after=None)])
    sleeps: list[float] = []
    result = client_for(exchange, sleeps).fetch_range("BTC/USDT", "1h", START, END)
    assert sleeps == [0.5, 1.0] and len(result.candles) == 24


# --- config errors and YAML aliases ----------------------------------------------------------

BILLION_LAUGHS = """\
exchanges:
  binance:
    timeframes: ["1h"]
    markets: ["BTC/USDT"]
    api_url:
      - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
      - &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
      - &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
      - &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
      - &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
      - &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
      - &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
      - &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
"""


def test_billion_laughs_fails_fast_with_a_short_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "exchanges.yaml"
    path.write_text(BILLION_LAUGHS)
    assert path.stat().st_size < 1024
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_exchanges_config(tmp_path)
    elapsed = time.perf_counter() - started
    message = str(caught.value)
    assert elapsed < 1.0, f"took {elapsed:.1f} s"
    assert len(message) < 500, f"{len(message):,} characters"
    assert str(path) in message and "alias" in message


def test_a_few_aliases_still_load(tmp_path: Path) -> None:
    (tmp_path / "exchanges.yaml").write_text(
        "exchanges:\n"
        "  binance: &common\n"
        "    timeframes: &tfs [\"1h\", \"1d\"]\n"
        "    markets: [\"BTC/USDT\"]\n"
        "  kraken:\n"
        "    timeframes: *tfs\n"
        "    markets: [\"BTC/USD\"]\n"
    )
    config = load_exchanges_config(tmp_path)
    assert config.get("kraken").timeframes == config.get("binance").timeframes == ["1h", "1d"]


def test_a_recursive_alias_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "exchanges.yaml"
    path.write_text('exchanges:\n  binance:\n    timeframes: ["1h"]\n    markets: &m ["BTC/USDT", *m]\n')
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*recursive"):
        load_exchanges_config(tmp_path)


def test_a_long_value_is_cut_short_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "exchanges.yaml").write_text(
        yaml.safe_dump({"exchanges": {"binance": {"timeframes": ["1h"], "markets": ["BTC/USDT"], "api_url": "x" * 100_000}}})
    )
    with pytest.raises(ConfigError) as caught:
        load_exchanges_config(tmp_path)
    message = str(caught.value)
    assert len(message) < 500, f"{len(message):,} characters"
    assert "exchanges.binance.api_url = 'xxxx" in message and "..." in message
    assert caught.value.value == "x" * 100_000  # the full value stays on the exception


def test_a_short_value_is_shown_whole() -> None:
    error = ConfigError("exchanges.yaml", "exchanges.binance.timeframes", ["7m", "1h"], "does not divide a UTC day")
    assert str(error) == "exchanges.yaml: exchanges.binance.timeframes = ['7m', '1h']: does not divide a UTC day"


# --- the store root is not run config --------------------------------------------------------


@pytest.fixture
def config_dir(tmp_path: Path, exchange) -> Path:
    return write_exchange_config(tmp_path / "config", exchange.base_url, timeframes=["1h"], markets=["BTC/USDT"])


def test_run_config_cannot_move_the_store_root(tmp_path: Path, config_dir: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    defs = build_definitions(config_dir, store_root=str(tmp_path / "store"))
    job = defs.resolve_job_def("ohlcv_binance")
    launchpad = {"resources": {"candle_store": {"config": {"root": str(elsewhere)}}}}
    with dg.instance_for_test() as instance, pytest.raises(dg.DagsterInvalidConfigError, match="root"):
        job.execute_in_process(
            instance=instance,
            run_config=launchpad,
            asset_selection=[ohlcv_asset_key("binance", "1h")],
            tags=partition_range_tags("BTC/USDT", D(2018, 1, 2), D(2018, 1, 2)),
        )
    assert not elsewhere.exists()


def test_the_store_root_given_in_code_is_used(tmp_path: Path, config_dir: Path) -> None:
    store_root = tmp_path / "store"
    with dg.instance_for_test() as instance:
        [run] = run_range(config_dir, store_root, instance, ["BTC/USDT"], D(2018, 1, 2), D(2018, 1, 3), timeframes=("1h",))
    assert run.success, run.failure_reason()
    assert len(CandleStore(str(store_root)).read("binance", "BTC/USDT", "1h", D(2018, 1, 2), D(2018, 1, 3))) == 24


def test_retry_after_may_be_an_http_date() -> None:
    from atlas_pipeline.market_data.exchange_client import _retry_after_seconds

    now = int(dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.timezone.utc).timestamp() * 1000)
    assert _retry_after_seconds("Mon, 30 Nov 2026 10:05:00 GMT", now) == 300
    assert _retry_after_seconds("Mon, 30 Nov 2026 09:00:00 GMT", now) == 0  # already past
    assert _retry_after_seconds(" 12.5 ", now) == 12.5
    assert _retry_after_seconds("soon", now) is None and _retry_after_seconds("nan", now) is None
