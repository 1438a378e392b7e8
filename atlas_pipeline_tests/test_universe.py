"""Universe rules: markets chosen by the exchange's own data, resolved by exchange_metadata through
real ccxt against the emulator, joining the market dimension as dynamic partitions; markets that
leave keep their partitions and history and are no longer fetched."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from atlas_pipeline import CandleStore
from atlas_pipeline.config import ConfigError, load_exchanges_config
from atlas_pipeline.config.backtests import load_backtests_config
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.exchange_metadata import exchange_metadata_asset_key
from atlas_pipeline.defs.market_data.partitions import market_keys
from atlas_pipeline.market_data.candles import day_start_ms
from atlas_pipeline.market_data.emulator import SyntheticCandleSource
from atlas_pipeline.market_data.exchange_metadata import INACTIVE, LEFT_UNIVERSE, METADATA_FILE, read_metadata
from atlas_pipeline_tests.support import assert_frames_equal, run_range, write_exchange_config

TODAY = dt.datetime.now(dt.UTC).date()
LISTINGS = {
    "AAA/USDT": "2018-01-01",
    "BBB/USDT": "2018-03-01",
    "CCC/USDT": "2018-06-01",
    "EXC/USDT": "2018-01-01",  # excluded by the rules
    "NEW/USDT": (TODAY - dt.timedelta(days=5)).isoformat(),  # too young
    "DDD/BTC": "2018-01-01",  # other quote: only in through `include`
    "EEE/BTC": "2018-01-01",
}


def _rules(**overrides: object) -> dict[str, object]:
    return {"quote": ["USDT"], "top": 2, "min_listing_days": 30, "exclude": ["EXC/USDT"], "include": ["DDD/BTC"], **overrides}


def _config(folder: Path, url: str, **rules: object) -> Path:
    return write_exchange_config(folder, url, timeframes=["1d"], markets=[], universe=_rules(**rules), history_start="2018-01-01")


def _by_quote_volume(url: str, symbols: list[str]) -> list[str]:
    """The emulator's own 24h tickers, ranked here (independently of Atlas's ranking)."""
    with urllib.request.urlopen(f"{url}/api/v3/ticker/24hr") as answer:
        tickers = {t["symbol"]: float(t["quoteVolume"]) for t in json.load(answer)}
    return sorted(symbols, key=lambda s: (-tickers[s.replace("/", "")], s))


def _materialize_metadata(config: Path, store: Path, instance: dg.DagsterInstance) -> None:
    defs = build_definitions(config, store_root=str(store))
    result = dg.materialize([defs.resolve_assets_def(exchange_metadata_asset_key("binance"))], instance=instance)
    assert result.success


@pytest.fixture
def source() -> SyntheticCandleSource:
    return SyntheticCandleSource(seed=5, markets=LISTINGS)


def test_universe_rules_choose_markets_that_join_and_leave_the_dimension(tmp_path: Path, source, emulator_factory) -> None:
    server = emulator_factory(source)
    config, store = tmp_path / "config", tmp_path / "store"
    with dg.instance_for_test() as instance:
        _config(config, server.base_url)
        settings = load_exchanges_config(config).get("binance")
        assert market_keys(settings, instance) == []  # nothing before the first resolution

        _materialize_metadata(config, store, instance)
        ranked = _by_quote_volume(server.base_url, [s for s in LISTINGS if s.endswith("/USDT")])
        # the rules matter here: the excluded and the too young market rank among the top three
        assert ranked.index("EXC/USDT") < 3 and ranked.index("NEW/USDT") < 3
        usdt = [s for s in ranked if s not in ("EXC/USDT", "NEW/USDT")]
        expected = [*usdt[:2], "DDD/BTC"]
        metadata = read_metadata(config / METADATA_FILE, "binance")
        assert metadata.universe == expected
        assert sorted(market_keys(settings, instance)) == sorted(s.replace("/", "-") for s in expected)

        # a member's candles land through the OHLCV asset like any listed market's
        start, end = dt.date(2018, 6, 1), dt.date(2018, 6, 11)
        [run] = run_range(config, store, instance, [usdt[0]], start, end, timeframes=("1d",))
        assert run.success, run.failure_reason()
        stored = CandleStore(str(store)).read("binance", usdt[0], "1d", start, end)
        assert_frames_equal(stored, source.candles(usdt[0], "1d", day_start_ms(start), day_start_ms(end)))

        # the rules widen: the third USDT market joins without a code change
        _config(config, server.base_url, top=3)
        _materialize_metadata(config, store, instance)
        assert sorted(market_keys(settings, instance)) == sorted(s.replace("/", "-") for s in [*usdt, "DDD/BTC"])

        # the rules narrow: two markets leave, keep their partitions, and are no longer fetched
        _config(config, server.base_url, top=1)
        _materialize_metadata(config, store, instance)
        metadata = read_metadata(config / METADATA_FILE, "binance")
        assert metadata.universe == [usdt[0], "DDD/BTC"]
        left = {m.symbol: m for m in metadata.markets if m.status == LEFT_UNIVERSE}
        assert sorted(left) == sorted(usdt[1:]) and "top 1 by 24h quote volume" in left[usdt[1]].reason
        assert len(market_keys(settings, instance)) == 4
        server.reset_stats()
        [skip] = run_range(config, store, instance, [usdt[1]], start, end, timeframes=("1d",))
        assert skip.success and server.stats["requests"].get("klines", 0) == 0


def test_a_delisted_member_is_flagged_inactive_and_keeps_its_partition(tmp_path: Path, source, emulator_factory) -> None:
    first = emulator_factory(source)
    config, store = tmp_path / "config", tmp_path / "store"
    with dg.instance_for_test() as instance:
        _config(config, first.base_url, top=3)
        _materialize_metadata(config, store, instance)
        members = read_metadata(config / METADATA_FILE, "binance").universe
        halted = members[0]
        second = emulator_factory(source, delisted={halted})
        _config(config, second.base_url, top=3)
        _materialize_metadata(config, store, instance)
        metadata = read_metadata(config / METADATA_FILE, "binance")
        assert halted not in metadata.universe
        assert {m.symbol: m.status for m in metadata.markets}[halted] == INACTIVE
        settings = load_exchanges_config(config).get("binance")
        assert halted.replace("/", "-") in market_keys(settings, instance)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"markets": ["BTC/USDT"], "universe": {"top": 5}}, "exactly one"),
        ({"markets": []}, "exactly one"),
        ({"markets": [], "universe": {"quote": ["usdt"]}}, "currency code"),
        ({"markets": [], "universe": {"type": "swap"}}, "only 'spot'"),
        ({"markets": [], "universe": {"top": 0}}, "universe.top"),
        ({"markets": [], "universe": {"exclude": ["BTCUSDT"]}}, "ccxt symbol"),
    ],
)
def test_universe_config_errors_name_the_key(tmp_path: Path, entry: dict, message: str) -> None:
    (tmp_path / "exchanges.yaml").write_text(
        yaml.safe_dump({"exchanges": {"binance": {"timeframes": ["1h"], **entry}}})
    )
    with pytest.raises(ConfigError) as caught:
        load_exchanges_config(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'exchanges.yaml'}: exchanges.binance")
    assert message in str(caught.value)


def test_a_backtest_on_a_universe_lists_its_markets(tmp_path: Path) -> None:
    (tmp_path / "exchanges.yaml").write_text(
        yaml.safe_dump({"exchanges": {"binance": {"timeframes": ["1h"], "universe": {"quote": ["USDT"], "top": 50}}}})
    )
    backtest = {"strategy": "sma_crossover", "exchange": "binance", "timeframe": "1h", "period": {"start": "2024-01-01"}}
    (tmp_path / "backtests.yaml").write_text(yaml.safe_dump({"backtests": {"sma": backtest}}))
    with pytest.raises(ConfigError, match=r"backtests.sma.symbols.*universe rules"):
        load_backtests_config(load_exchanges_config(tmp_path), tmp_path)
    (tmp_path / "backtests.yaml").write_text(yaml.safe_dump({"backtests": {"sma": {**backtest, "symbols": ["SOL/USDT"]}}}))
    assert load_backtests_config(load_exchanges_config(tmp_path), tmp_path).get("sma").symbols == ["SOL/USDT"]


def test_atlas_fetch_takes_the_universe_members(tmp_path: Path, source, emulator_factory) -> None:
    import os
    import subprocess
    import sys

    server = emulator_factory(source)
    config, home = _config(tmp_path / "config", server.base_url), tmp_path / "home"
    env = {**os.environ, "ATLAS_CONFIG": str(config), "ATLAS_HOME": str(home), "DAGSTER_HOME": ""}
    fetch = [sys.executable, "-m", "atlas_pipeline.cli", "fetch", "--exchange", "binance", "--start", "2018-06-01", "--end", "2018-06-04"]

    before = subprocess.run(fetch, env=env, capture_output=True, text=True, timeout=300)
    assert before.returncode == 2 and "materialize binance/exchange_metadata first" in before.stderr

    (home / "dagster_home").mkdir(parents=True)  # the CLI's instance (it adds its dagster.yaml later)
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        _materialize_metadata(config, home, instance)
    members = read_metadata(config / METADATA_FILE, "binance").universe
    after = subprocess.run(fetch, env=env, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr
    store = CandleStore(str(home))
    assert sorted(key.symbol for key in store.series("binance")) == sorted(members)
    unknown = subprocess.run([*fetch, "--symbol", "EEE/BTC"], env=env, capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "'EEE/BTC' is not configured" in unknown.stderr


def test_the_daily_metadata_schedule_keeps_a_universe_current(tmp_path: Path, source, emulator_factory) -> None:
    server = emulator_factory(source)
    config = _config(tmp_path / "config", server.base_url)
    defs = build_definitions(config, store_root=str(tmp_path / "store"))
    schedule = defs.resolve_schedule_def("exchange_metadata_binance_daily")
    assert schedule.cron_schedule == "5 0 * * *" and schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(schedule.job_name).execute_in_process(instance=instance)
        assert result.success
        settings = load_exchanges_config(config).get("binance")
        assert len(market_keys(settings, instance)) == 3  # top 2 USDT + the included DDD/BTC


def test_a_backtest_runs_on_a_universe_member(tmp_path: Path, source, emulator_factory) -> None:
    from atlas_pipeline.defs.research.launch import materialize_backtests
    from atlas_pipeline.research.result_store import ResultStore

    server = emulator_factory(source)
    config, store = _config(tmp_path / "config", server.base_url), tmp_path / "store"
    with dg.instance_for_test() as instance:
        _materialize_metadata(config, store, instance)
        member = read_metadata(config / METADATA_FILE, "binance").universe[0]
        start, end = dt.date(2018, 6, 1), dt.date(2019, 6, 1)
        [run] = run_range(config, store, instance, [member], start, end, timeframes=("1d",))
        assert run.success, run.failure_reason()
        backtest = {
            "strategy": "sma_crossover", "params": {"fast": 5, "slow": 20}, "exchange": "binance", "timeframe": "1d",
            "symbols": [member], "period": {"start": start.isoformat(), "end": end.isoformat()}, "cash": 1000,
        }
        (config / "backtests.yaml").write_text(yaml.safe_dump({"backtests": {"sma_1d": backtest}}))
        defs = build_definitions(config, store_root=str(store))
        settings = load_backtests_config(load_exchanges_config(config), config).get("sma_1d")
        runs = materialize_backtests(defs, instance, [settings])
        assert all(r.success for r in runs), [r.failure_reason() for r in runs if not r.success]
    result = ResultStore(str(store)).load_result("sma_1d", member)
    assert result.bars + result.warmup_bars == (end - start).days
