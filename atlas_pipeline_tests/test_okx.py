"""A second exchange end to end: the emulator speaking OKX's v5 public REST as ccxt's ``okx``
(4.5.90) uses it, and the whole data plane against it with real ccxt and a real Dagster instance
(first candle, backfill, delta update, faults, metadata, schedule) and a backtest on OKX candles."""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import ccxt
import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from atlas_pipeline import CandleStore
from atlas_pipeline.config import load_exchanges_config
from atlas_pipeline.config.backtests import load_backtests_config
from atlas_pipeline.config.errors import ConfigError
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.exchange_metadata import exchange_metadata_asset_key
from atlas_pipeline.defs.research.assets import backtest_asset_key, metrics_asset_key
from atlas_pipeline.market_data.candles import DAY_MS, day_start_ms, to_ms
from atlas_pipeline.market_data.emulator import EmulatorServer, FaultRule, FileCandleSource, SyntheticCandleSource, build_emulator
from atlas_pipeline.market_data.emulator.binance_api import ticker_24hr
from atlas_pipeline.market_data.emulator.okx_api import RECENT_CANDLES
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection, build_ccxt_exchange
from atlas_pipeline.market_data.exchange_metadata import INACTIVE, METADATA_FILE, NOT_LISTED, read_metadata
from atlas_pipeline.market_data.ingest import ingest_days
from atlas_pipeline.research.engine import run_backtest as engine_run_backtest
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research_runs import backtest_spec, stored_candles
from atlas_pipeline_tests.support import (
    SHARED_CANDLES,
    assert_frames_equal,
    between,
    needs_shared_candles,
    run_range,
    shared_candles,
    write_exchange_config,
)

D = dt.date
NOW = to_ms("2026-11-22 13:37:21.500")
MINUTE = 60_000
ETH_BTC_5M = "binance_ETH-BTC_5m"  # real candles 2018-01-10 04:55 .. 2018-01-30 04:50


def okx_ccxt(server: EmulatorServer) -> ccxt.okx:
    return build_ccxt_exchange(ExchangeConnection("okx", api_url=server.base_url, timeout_seconds=5, min_request_interval_ms=0))


def okx_client(server: EmulatorServer, **connection: Any) -> ExchangeClient:
    settings = {"timeout_seconds": 5, "min_request_interval_ms": 0, "request_limit": 300, "max_retries": 3, **connection}
    return ExchangeClient(ExchangeConnection("okx", api_url=server.base_url, **settings), sleep=lambda s: None)


def get(server: EmulatorServer, path: str, **params: Any) -> tuple[int, Any]:
    url = f"{server.base_url}{path}?{urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stamps(payload: dict[str, Any]) -> list[int]:
    return [int(row[0]) for row in payload["data"]]


@pytest.fixture
def files(emulator_factory) -> EmulatorServer:
    return emulator_factory(FileCandleSource(SHARED_CANDLES), exchange="okx")


@pytest.fixture
def synthetic(emulator_factory) -> EmulatorServer:
    """Two synthetic markets on the wall clock, served as OKX."""
    markets = {"BTC/USDT": "2026-10-01", "ETH/USDT": "2026-10-15 06:07"}
    return emulator_factory(SyntheticCandleSource(11, markets=markets), exchange="okx")


# --- the emulated API, as ccxt okx uses it ---------------------------------------------------


@needs_shared_candles
def test_ccxt_okx_calls_instruments_history_candles_and_tickers(files) -> None:
    exchange = okx_ccxt(files)
    markets = exchange.load_markets()
    assert files.stats["requests"] == {"instruments": 1}  # spot only, no currencies
    assert sorted(markets) == files.source.markets()
    eth = markets["ETH/BTC"]
    assert (eth["id"], eth["spot"], eth["active"], eth["margin"]) == ("ETH-BTC", True, True, False)
    assert eth["created"] == files.source.first_candle("ETH/BTC", "5m")  # listTime

    source = shared_candles(ETH_BTC_5M)
    since = int(source["timestamp"].iloc[0])
    rows = exchange.fetch_ohlcv("ETH/BTC", "5m", since=since, limit=300)
    assert_frames_equal(pd.DataFrame(rows, columns=source.columns), source.iloc[:300])
    # a window of more than a page answers its NEWEST page: OKX pages backward
    until = since + 1000 * 300_000
    rows = exchange.fetch_ohlcv("ETH/BTC", "5m", since=since, limit=300, params={"until": until})
    assert_frames_equal(pd.DataFrame(rows, columns=source.columns), source[source["timestamp"] < until].iloc[-300:])
    # ccxt maps since=0, limit=1 to the window [0, one candle): Binance's first-candle trick finds nothing
    assert exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=1) == []
    assert files.stats["requests"] == {"instruments": 1, "history-candles": 3}

    tickers = exchange.fetch_tickers()
    assert files.stats["requests"]["tickers"] == 1
    for symbol in ("ETH/BTC", "ADA/BTC"):  # the same candles as Binance's: the same 24h statistics
        stats = ticker_24hr(files.source, symbol, to_ms("2027-01-01"))  # the files' last days
        ticker = tickers[symbol]
        assert ticker["quoteVolume"] == float(stats["quoteVolume"]) and ticker["baseVolume"] == float(stats["volume"])
        assert ticker["last"] == float(stats["lastPrice"]) and ticker["timestamp"] == stats["closeTime"]


def test_candles_select_backward_newest_first_with_their_own_limits(emulator_factory) -> None:
    server = emulator_factory(SyntheticCandleSource(3, markets={"BTC/USDT": "2026-11-01"}, now=lambda: NOW), exchange="okx", history_limit=100)
    minute = NOW - NOW % MINUTE
    path = "/api/v5/market/history-candles"

    status, latest = get(server, path, instId="BTC-USDT")  # no cursor: the latest, 100 by default
    assert status == 200 and latest["code"] == "0"
    assert stamps(latest) == [minute - i * MINUTE for i in range(100)]
    assert latest["data"][0][-1] == "0" and {row[-1] for row in latest["data"][1:]} == {"1"}  # open candle unconfirmed
    assert all(isinstance(value, str) for value in latest["data"][0]) and len(latest["data"][0]) == 9

    cursor = minute - 500 * MINUTE
    _, older = get(server, path, instId="BTC-USDT", after=cursor, limit=300)  # capped at history_limit
    assert stamps(older) == [cursor - (i + 1) * MINUTE for i in range(100)]
    _, newer = get(server, path, instId="BTC-USDT", before=cursor, limit=5)  # before alone: the latest
    assert stamps(newer) == [minute - i * MINUTE for i in range(5)]
    _, window = get(server, path, instId="BTC-USDT", before=cursor, after=cursor + 10 * MINUTE, limit=50)
    assert stamps(window) == [cursor + i * MINUTE for i in range(9, 0, -1)]  # strictly between, newest first
    _, empty = get(server, path, instId="BTC-USDT", after=to_ms("2026-11-01"))  # nothing before the listing
    assert empty == {"code": "0", "msg": "", "data": []}

    _, recent = get(server, "/api/v5/market/candles", instId="BTC-USDT", limit=500)  # candles: capped at 300
    assert stamps(recent) == [minute - i * MINUTE for i in range(300)]
    edge = minute - (RECENT_CANDLES - 1) * MINUTE  # the oldest of the latest 1,440
    _, tail = get(server, "/api/v5/market/candles", instId="BTC-USDT", after=edge + 3 * MINUTE, limit=300)
    assert stamps(tail) == [edge + 2 * MINUTE, edge + MINUTE, edge]
    _, history = get(server, path, instId="BTC-USDT", after=edge + 3 * MINUTE, limit=5)
    assert stamps(history) == [edge + (2 - i) * MINUTE for i in range(5)]

    _, hourly = get(server, path, instId="BTC-USDT", bar="1H", limit=2)
    _, daily = get(server, path, instId="BTC-USDT", bar="1Dutc", limit=2)
    assert stamps(hourly)[0] == NOW - NOW % 3_600_000 and stamps(daily)[0] == NOW - NOW % DAY_MS


def test_errors_are_okx_codes_that_ccxt_maps(emulator_factory) -> None:
    server = emulator_factory(SyntheticCandleSource(3, markets={"BTC/USDT": "2026-11-01"}, now=lambda: NOW), exchange="okx")
    candles = "/api/v5/market/candles"
    assert get(server, candles) == (400, {"code": "50014", "data": [], "msg": "Parameter instId can not be empty."})
    assert get(server, candles, instId="BTC-USDT", bar="1h") == (400, {"code": "51000", "data": [], "msg": "Parameter bar error"})
    assert get(server, candles, instId="BTC-USDT", bar="1D")[1]["code"] == "51000"  # Hong Kong days: not served
    assert get(server, candles, instId="BTC-USDT", limit="ten")[1]["code"] == "51000"
    assert get(server, candles, instId="NOPE-USDT") == (200, {"code": "51001", "data": [], "msg": "Instrument ID doesn't exist."})
    assert get(server, "/api/v5/public/instruments")[1]["code"] == "50014"
    assert get(server, "/api/v5/public/instruments", instType="SWAP") == (200, {"code": "0", "msg": "", "data": []})
    assert get(server, "/api/v5/public/time") == (200, {"code": "0", "msg": "", "data": [{"ts": str(NOW)}]})

    exchange = okx_ccxt(server)
    exchange.load_markets()
    with pytest.raises(ccxt.BadRequest, match="51000"):
        exchange.fetch_ohlcv("BTC/USDT", "1w")
    server.set_faults([FaultRule("rate_limit", endpoint="candles", times=1, retry_after=None)])
    with pytest.raises(ccxt.RateLimitExceeded, match='"code":"50011"'):
        exchange.fetch_ohlcv("BTC/USDT", "1m")
    assert exchange.last_http_response == '{"msg":"Too Many Requests","code":"50011"}'
    server.set_faults([FaultRule("server_error", endpoint="klines", times=1, status=502)])  # klines: any candle endpoint
    with pytest.raises(ccxt.ExchangeNotAvailable):
        exchange.fetch_ohlcv("BTC/USDT", "1m")
    assert server.stats["statuses"]["429"] == 1 and server.stats["statuses"]["502"] == 1
    server.api.removed = frozenset({"BTC/USDT"})
    server.api.symbols = {}
    with pytest.raises(ccxt.BadSymbol, match="51001"):
        exchange.fetch_ohlcv("BTC/USDT", "1m")


def test_data_faults_act_on_okx_rows(emulator_factory) -> None:
    server = emulator_factory(SyntheticCandleSource(3, markets={"BTC/USDT": "2026-11-01"}, now=lambda: NOW), exchange="okx")
    query = {"instId": "BTC-USDT", "bar": "5m", "after": NOW - NOW % 300_000 - 100 * 300_000, "limit": 10}
    _, clean = get(server, "/api/v5/market/history-candles", **query)

    def faulty(kind: str, **rule: Any) -> list[list[str]]:
        server.set_faults([FaultRule(kind, endpoint="history-candles", times=1, **rule)])
        status, payload = get(server, "/api/v5/market/history-candles", **query)
        assert status == 200 and payload["code"] == "0" and server.faults[0]["fired"] == 1
        return payload["data"]

    assert faulty("duplicates") == [row for row in clean["data"] for row in (row, row)]
    assert faulty("short_page", rows=3) == clean["data"][:3]  # OKX's first rows are the newest
    assert faulty("out_of_order") == clean["data"][::-1]
    shifted = faulty("off_grid")
    assert shifted[5][0] == str(int(clean["data"][5][0]) + 150_000) and shifted[5][1:] == clean["data"][5][1:]
    bad = faulty("bad_ohlc")
    assert float(bad[5][2]) < float(bad[5][3])  # high below low
    server.set_faults(["duplicates"])
    assert get(server, "/api/v5/market/tickers", instType="SPOT")[1]["code"] == "0"  # rows only on candles
    assert server.faults[0]["seen"] == 0


# --- the exchange client: paging and the first candle -----------------------------------------


@needs_shared_candles
@pytest.mark.parametrize("history_limit", [300, 100], ids=["history-300", "history-100"])
def test_client_pages_a_range_backward_to_exactly_the_source(emulator_factory, history_limit: int) -> None:
    server = emulator_factory(FileCandleSource(SHARED_CANDLES), exchange="okx", history_limit=history_limit)
    client = okx_client(server)
    source = shared_candles(ETH_BTC_5M)
    result = client.fetch_range("ETH/BTC", "5m", day_start_ms(D(2018, 1, 1)), day_start_ms(D(2018, 2, 1)))
    assert_frames_equal(result.candles, source)
    pages = -(-len(source) // history_limit)
    assert result.requests == pages + 1  # the last page reaches the listing; one empty answer below it
    assert server.stats["requests"] == {"instruments": 1, "history-candles": pages + 1}

    inside = client.fetch_range("ETH/BTC", "5m", day_start_ms(D(2018, 1, 12)), day_start_ms(D(2018, 1, 14)))
    assert_frames_equal(inside.candles, between(source, D(2018, 1, 12), D(2018, 1, 14)))
    assert inside.requests == -(-576 // history_limit)  # whole pages down to the start: no empty answer


@needs_shared_candles
def test_first_candle_from_the_listing_or_by_search(files) -> None:
    client = okx_client(files)
    client.load_markets()
    for symbol, timeframe in (("ETH/BTC", "5m"), ("ETH/BTC", "1h"), ("ADA/BTC", "1d"), ("UNITTEST/BTC", "1m")):
        files.reset_stats()
        assert client.first_candle(symbol, timeframe) == files.source.first_candle(symbol, timeframe)
        assert files.stats["requests"] == {"history-candles": 2}  # the listing's page, nothing before it

    # listTime is only a hint: later than the first candle, or absent, the client searches
    first = files.source.first_candle("ETH/BTC", "5m")
    for hint in (first + 3 * DAY_MS, None):
        files.api._list_times["ETH/BTC"] = hint
        fresh = okx_client(files)
        fresh.load_markets()
        files.reset_stats()
        assert fresh.first_candle("ETH/BTC", "5m") == first
        assert 2 <= files.stats["requests"]["history-candles"] <= 40


def test_first_candle_of_synthetic_markets_and_of_none_yet(emulator_factory) -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    markets = {"BTC/USDT": "2026-10-01 13:27", "NEW/USDT": future.isoformat()}
    server = emulator_factory(SyntheticCandleSource(5, markets=markets), exchange="okx")
    client = okx_client(server)
    assert client.first_candle("BTC/USDT", "1m") == to_ms("2026-10-01 13:27")
    assert client.first_candle("BTC/USDT", "1h") == to_ms("2026-10-01 13:00")
    assert client.first_candle("NEW/USDT", "1h") is None  # listed in the future: no candle yet


# --- configuration ------------------------------------------------------------------------------


def test_exchanges_yaml_accepts_okx_with_its_timeframes_and_limit(tmp_path: Path) -> None:
    config = write_exchange_config(
        tmp_path, "http://127.0.0.1:9", exchange="okx", timeframes=["1m", "1h", "1d"], markets=["BTC/USDT"], request_limit=300
    )
    settings = load_exchanges_config(config).get("okx")
    assert settings.timeframes == ["1m", "1h", "1d"] and settings.effective_request_limit == 300
    write_exchange_config(tmp_path, "http://127.0.0.1:9", exchange="okx", markets=["BTC/USDT"])
    assert load_exchanges_config(tmp_path).get("okx").effective_request_limit == 300  # ccxt: okx answers 300
    write_exchange_config(tmp_path, "http://127.0.0.1:9", exchange="okx", markets=["BTC/USDT"], request_limit=1000)
    with pytest.raises(ConfigError, match="request_limit.*okx returns at most 300"):
        load_exchanges_config(tmp_path)
    write_exchange_config(tmp_path, "http://127.0.0.1:9", exchange="okx", markets=["BTC/USDT"], timeframes=["1w"])
    with pytest.raises(ConfigError, match="timeframes"):
        load_exchanges_config(tmp_path)


def test_build_emulator_and_cli_choose_the_exchange(tmp_path: Path) -> None:
    server = build_emulator(synthetic_seed=1, exchange="okx")
    try:
        assert server.exchange == "okx" and "/api/v5/market/history-candles" in server.api.paths
    finally:
        server.stop()
    with pytest.raises(ValueError, match="speaks binance, okx"):
        build_emulator(synthetic_seed=1, exchange="kraken")
    with pytest.raises(ValueError, match="no okx_<BASE>"):
        build_emulator(data_dir=SHARED_CANDLES, exchange="okx")
    served = build_emulator(data_dir=SHARED_CANDLES, exchange="okx", data_exchange="binance")
    try:
        assert "ETH/BTC" in served.source.markets()
    finally:
        served.stop()


@needs_shared_candles
def test_atlas_emulator_exchange_okx_serves_the_files_as_okx(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "atlas_pipeline.cli", "emulator", "--exchange", "okx", "--data", str(SHARED_CANDLES)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)  # no okx_* files there
    assert refused.returncode == 2 and "--data-exchange" in refused.stderr
    process = subprocess.Popen(
        [*command, "--data-exchange", "binance", "--port", str(port), "--fault", "rate_limit:endpoint=candles,times=1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v5/public/time", timeout=2):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.2)
        client = ExchangeClient(ExchangeConnection("okx", api_url=f"http://127.0.0.1:{port}", min_request_interval_ms=0, request_limit=300))
        result = client.fetch_range("ETH/BTC", "5m", day_start_ms(D(2018, 1, 12)), day_start_ms(D(2018, 1, 13)))
        assert_frames_equal(result.candles, between(shared_candles(ETH_BTC_5M), D(2018, 1, 12), D(2018, 1, 13)))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    assert f"OKX v5 REST API at http://127.0.0.1:{port}" in process.stderr.read()


# --- the data plane in Dagster --------------------------------------------------------------------


@needs_shared_candles
def test_backfill_of_real_candles_lands_exactly_the_source(tmp_path: Path, files) -> None:
    config = write_exchange_config(tmp_path / "config", files.base_url, exchange="okx")
    store_root = tmp_path / "store"
    start, end = D(2018, 1, 8), D(2018, 2, 1)
    with dg.instance_for_test() as instance:
        [run] = run_range(config, store_root, instance, ["ETH/BTC"], start, end, exchange="okx")
        assert run.success, run.failure_reason()
        assert len(instance.get_materialized_partitions(dg.AssetKey(["okx", "ohlcv_5m"]))) == 24
    store = CandleStore(str(store_root))
    assert_frames_equal(store.read("okx", "ETH/BTC", "5m", start, end), shared_candles(ETH_BTC_5M))
    coverage = store.coverage("okx", "ETH/BTC", "5m", start, end)
    assert coverage["complete"].all() and len(coverage) == 24
    assert store.first_candle("okx", "ETH/BTC", "5m") == files.source.first_candle("ETH/BTC", "5m")
    # the first candle (2) + pages down from the range end to the first candle (where the fetch starts)
    assert files.stats["requests"]["history-candles"] == 2 + -(-len(shared_candles(ETH_BTC_5M)) // 300)


def test_backfill_of_synthetic_candles_in_two_timeframes(tmp_path: Path, synthetic) -> None:
    config = write_exchange_config(
        tmp_path / "config", synthetic.base_url, exchange="okx", timeframes=["1h", "1d"], markets=["BTC/USDT", "ETH/USDT"], history_start="2026-09-01"
    )
    store_root = tmp_path / "store"
    start, end = D(2026, 9, 28), D(2026, 11, 1)
    with dg.instance_for_test() as instance:
        for symbol in ("BTC/USDT", "ETH/USDT"):
            [run] = run_range(config, store_root, instance, [symbol], start, end, timeframes=("1h", "1d"), exchange="okx")
            assert run.success, run.failure_reason()
    store = CandleStore(str(store_root))
    for symbol in ("BTC/USDT", "ETH/USDT"):
        for timeframe in ("1h", "1d"):
            expected = synthetic.source.candles(symbol, timeframe, day_start_ms(start), day_start_ms(end))
            assert_frames_equal(store.read("okx", symbol, timeframe, start, end), expected)
    assert store.read("okx", "ETH/USDT", "1h", start, end)["timestamp"].iloc[0] == to_ms("2026-10-15 06:00")


def test_delta_update_of_todays_partial_day_uses_market_candles(tmp_path: Path, synthetic) -> None:
    now = dt.datetime.now(dt.UTC)
    today = now.date()
    if now - dt.datetime.combine(today, dt.time(), dt.UTC) < dt.timedelta(minutes=20):
        pytest.skip("needs 20 closed minutes of today (UTC)")
    config = write_exchange_config(tmp_path / "config", synthetic.base_url, exchange="okx", timeframes=["1m"], markets=["BTC/USDT"], history_start="2026-09-01")
    store_root = tmp_path / "store"
    store = CandleStore(str(store_root))
    day = (today, today + dt.timedelta(days=1))
    with dg.instance_for_test() as instance:
        [run] = run_range(config, store_root, instance, ["BTC/USDT"], *day, timeframes=("1m",), exchange="okx")
        assert run.success, run.failure_reason()
        first = store.read_day("okx", "BTC/USDT", "1m", today)
        assert not store.day_status("okx", "BTC/USDT", "1m", today).complete

        # keep all but the last 15 candles, as if the day had been stored 15 minutes ago
        store.write_day("okx", "BTC/USDT", "1m", today, first.iloc[:-15].reset_index(drop=True), complete=False)
        synthetic.reset_stats()
        [delta] = run_range(config, store_root, instance, ["BTC/USDT"], *day, timeframes=("1m",), exchange="okx")
        assert delta.success, delta.failure_reason()
    # one request to market/candles (the recent 1,440), from the candle after the last one kept
    assert synthetic.stats["requests"] == {"instruments": 1, "candles": 1}
    stored = store.read_day("okx", "BTC/USDT", "1m", today)
    last = int(stored["timestamp"].iloc[-1])
    assert last >= int(first["timestamp"].iloc[-1])
    assert_frames_equal(stored, synthetic.source.candles("BTC/USDT", "1m", day_start_ms(today), last + 1))
    assert len(stored) == (last - day_start_ms(today)) // MINUTE + 1  # every closed minute, none open
    assert last + MINUTE <= synthetic.source.now()


OKX_FAULTS = [
    FaultRule(kind="rate_limit", endpoint="history-candles", times=2, retry_after=None),  # OKX sends no Retry-After
    FaultRule(kind="server_error", endpoint="klines", times=2, status=502),
    FaultRule(kind="server_error", endpoint="instruments", times=1),
    FaultRule(kind="short_page", endpoint="history-candles", rows=37),  # every page, forever
    FaultRule(kind="duplicates", endpoint="history-candles"),
    FaultRule(kind="truncated", endpoint="history-candles", times=1, after=2),
]


@needs_shared_candles
@pytest.mark.parametrize("fault", OKX_FAULTS, ids=lambda f: f"{f.kind}-{f.endpoint}")
def test_faults_end_in_exactly_the_source(tmp_path: Path, files, fault: FaultRule) -> None:
    config = write_exchange_config(tmp_path / "config", files.base_url, exchange="okx", timeout_seconds=2)
    files.set_faults([fault])
    start, end = D(2018, 1, 9), D(2018, 1, 16)
    with dg.instance_for_test() as instance:
        [run] = run_range(config, tmp_path / "store", instance, ["ETH/BTC"], start, end, exchange="okx")
        assert run.success, run.failure_reason()
    assert files.stats["faults_fired"].get(fault.kind, 0) >= 1
    stored = CandleStore(str(tmp_path / "store")).read("okx", "ETH/BTC", "5m", start, end)
    assert_frames_equal(stored, between(shared_candles(ETH_BTC_5M), start, end))
    if fault.kind in {"rate_limit", "server_error", "truncated"} and fault.endpoint != "instruments":
        [materialization] = run.result.get_asset_materialization_events()[:1]
        assert materialization.materialization.metadata["retries"].value >= 1
    if fault.kind == "rate_limit":
        assert files.stats["statuses"]["429"] == 2


def _random_faults(rng: random.Random) -> list[FaultRule]:
    """Finite faults (each fits in the client's retries) in random places, on OKX's endpoints."""
    after = lambda: rng.randint(0, 12)  # noqa: E731
    faults = [
        FaultRule(kind="short_page", endpoint="klines", after=rng.randint(0, 8), times=rng.choice([1, 2, 5]), rows=rng.choice([1, 50, 200])),
        FaultRule(kind="server_error", endpoint="klines", after=after(), times=rng.randint(1, 2)),
        FaultRule(kind="timeout", endpoint="history-candles", after=after(), times=1, delay=1.5),
        FaultRule(kind="duplicates", endpoint="klines", after=after(), times=rng.randint(1, 3)),
        FaultRule(kind="out_of_order", endpoint="klines", after=after(), times=1),
        FaultRule(kind="rate_limit", endpoint="klines", after=after(), times=1, retry_after=None),
        FaultRule(kind="truncated", endpoint="history-candles", after=after(), times=1),
    ]
    if rng.random() < 0.5:  # a cap below the documented limit, all along
        faults.append(FaultRule(kind="short_page", endpoint="history-candles", rows=rng.choice([100, 170])))
    chosen = rng.sample(faults, k=rng.randint(2, len(faults)))
    # Data faults act in rule order. A page reordered and THEN cut to one row is no longer the top
    # of its window, and nothing in it says so (one row is in any order); only asking again above
    # every page would catch that. Pages cut and then reordered are caught (sources/okx.py).
    return sorted(chosen, key=lambda fault: fault.kind == "out_of_order")


@pytest.mark.parametrize("seed", range(4))
def test_random_fault_schedules_end_in_exactly_the_source(tmp_path: Path, emulator_factory, seed: int) -> None:
    server = emulator_factory(SyntheticCandleSource(7, markets={"BTC/USDT": "2018-03-04 05:06"}), exchange="okx")
    rng = random.Random(f"okx-{seed}")
    faults = _random_faults(rng)
    server.set_faults(faults)
    client = okx_client(server, timeout_seconds=1, max_retries=4)
    store = CandleStore(str(tmp_path))
    start, end = D(2018, 2, 20), D(2018, 11, 1)
    report = ingest_days(client, store, "BTC/USDT", "1h", [start + dt.timedelta(days=i) for i in range((end - start).days)])
    note = f"faults {[(f.kind, f.endpoint, f.after, f.times, f.rows) for f in faults]}"
    assert report.passed, f"{note}: {report.failure_summary()}"
    expected = server.source.candles("BTC/USDT", "1h", day_start_ms(start), day_start_ms(end))
    assert_frames_equal(store.read("okx", "BTC/USDT", "1h", start, end), expected)
    assert store.coverage("okx", "BTC/USDT", "1h", start, end)["complete"].all(), note


@needs_shared_candles
def test_exchange_metadata_asset_on_okx(tmp_path: Path, emulator_factory) -> None:
    server = emulator_factory(FileCandleSource(SHARED_CANDLES), exchange="okx", delisted={"LTC/BTC"}, removed={"TRX/BTC"})
    markets = ["ETH/BTC", "ADA/BTC", "LTC/BTC", "TRX/BTC"]
    config = write_exchange_config(tmp_path / "config", server.base_url, exchange="okx", markets=markets, timeframes=["5m", "1h"], metadata_top_n=2)
    defs = build_definitions(config, store_root=str(tmp_path / "store"))
    key = exchange_metadata_asset_key("okx")
    with dg.instance_for_test() as instance:
        assert dg.materialize([defs.get_assets_def(key)], instance=instance).success
        meta = instance.get_latest_materialization_event(key).asset_materialization.metadata
    assert (meta["maker_fee"].value, meta["taker_fee"].value) == (0.001, 0.0015)  # ccxt okx spot defaults
    assert meta["flagged_count"].value == 2 and meta["active_markets"].value == "ETH/BTC, ADA/BTC"
    assert "| ETH/BTC | 5m | 2018-01-10T04:55:00+00:00 |" in meta["first_candles"].value
    assert meta["timeframes"].value.startswith("1m, 3m, 5m")
    # instruments, tickers, and two requests per first candle (3 listed markets x 2 timeframes)
    assert server.stats["requests"] == {"instruments": 1, "tickers": 1, "history-candles": 12}

    written = read_metadata(config / METADATA_FILE, "okx")
    status = {market.symbol: market for market in written.markets}
    assert status["LTC/BTC"].status == INACTIVE and "suspend" in status["LTC/BTC"].reason
    assert status["TRX/BTC"].status == NOT_LISTED
    tickers = server.api.tickers({"instType": ["SPOT"]}, to_ms("2027-01-01"))  # the files' last days
    active = sorted((t for t in tickers if t["instId"] != "LTC-BTC"), key=lambda t: -float(t["volCcy24h"]))
    assert [m.symbol for m in written.top_markets] == [t["instId"].replace("-", "/") for t in active[:2]]
    for symbol in ("ETH/BTC", "ADA/BTC", "LTC/BTC"):  # a suspended market keeps its history
        for timeframe in ("5m", "1h"):
            assert written.first_candles[symbol][timeframe] == server.source.first_candle(symbol, timeframe)


def _requested_partitions(defs: dg.Definitions, request: dg.RunRequest) -> list[str]:
    """The partitions a run request asks for: its partition key, or the range its tags name."""
    if request.partition_key is not None:
        return [str(request.partition_key)]
    keys = request.asset_selection or list(defs.resolve_job_def("ohlcv_okx").asset_layer.executable_asset_keys)
    partitions_def = defs.resolve_assets_def(keys[0]).partitions_def
    tags = request.tags
    key_range = dg.PartitionKeyRange(tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG])
    return [str(key) for key in partitions_def.get_partition_keys_in_range(key_range)]


def test_daily_schedule_run_requests_for_okx_fetch_yesterday(tmp_path: Path, synthetic) -> None:
    config = write_exchange_config(
        tmp_path / "config", synthetic.base_url, exchange="okx", timeframes=["1h"], markets=["BTC/USDT", "ETH/USDT"], history_start="2026-09-01"
    )
    store_root = tmp_path / "store"
    defs = build_definitions(config, store_root=str(store_root))
    schedule = defs.resolve_schedule_def("ohlcv_okx_daily")
    assert (schedule.cron_schedule, schedule.job_name) == ("15 0 * * *", "ohlcv_okx")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    today = dt.datetime.now(dt.UTC).date()
    tick = dt.datetime.combine(today, dt.time(0, 15), dt.UTC)
    yesterday = today - dt.timedelta(days=1)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def())
        requests = list(schedule.evaluate_tick(context).run_requests or [])
        requested = sorted(key for request in requests for key in _requested_partitions(defs, request))
        assert requested == [f"{yesterday}|BTC-USDT", f"{yesterday}|ETH-USDT"]
        job = defs.resolve_job_def("ohlcv_okx")
        for request in requests:  # run as the daemon would: the request's partition or range tags
            result = job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                tags=request.tags,
                asset_selection=request.asset_selection,
                raise_on_error=False,
            )
            assert result.success
        materialized = instance.get_materialized_partitions(dg.AssetKey(["okx", "ohlcv_1h"]))
        assert sorted(materialized) == requested
    store = CandleStore(str(store_root))
    for symbol in ("BTC/USDT", "ETH/USDT"):
        expected = synthetic.source.candles(symbol, "1h", day_start_ms(yesterday), day_start_ms(today))
        assert len(expected) == 24
        assert_frames_equal(store.read_day("okx", symbol, "1h", yesterday), expected)
        assert store.day_status("okx", symbol, "1h", yesterday).complete


@needs_shared_candles
def test_backtest_runs_on_okx_candles_with_okx_fees(tmp_path: Path, files) -> None:
    config = write_exchange_config(tmp_path / "config", files.base_url, exchange="okx", markets=["ETH/BTC"])
    backtest = {
        "strategy": "sma_crossover",
        "params": {"fast": 10, "slow": 30},
        "exchange": "okx",
        "timeframe": "5m",
        "symbols": ["ETH/BTC"],
        "period": {"start": "2018-01-10", "end": "2018-01-30"},
        "cash": 1000,
        "sizing": {"fraction": 0.5},
    }
    (config / "backtests.yaml").write_text(yaml.safe_dump({"backtests": {"sma_okx": backtest}}))
    store_root = tmp_path / "store"
    with dg.instance_for_test() as instance:
        [run] = run_range(config, store_root, instance, ["ETH/BTC"], D(2018, 1, 10), D(2018, 1, 30), exchange="okx")
        assert run.success, run.failure_reason()
        defs = build_definitions(config, store_root=str(store_root))
        graph = defs.resolve_asset_graph()
        assert dg.AssetKey(["okx", "ohlcv_5m"]) in graph.get(backtest_asset_key("sma_okx")).parent_keys
        assets = [defs.resolve_assets_def(backtest_asset_key("sma_okx")), defs.resolve_assets_def(metrics_asset_key("sma_okx"))]
        result = dg.materialize(assets, instance=instance, partition_key="ETH-BTC", raise_on_error=False)
        assert result.success
    stored = ResultStore(str(store_root)).load_result("sma_okx", "ETH/BTC")
    assert len(stored.trades) > 0 and stored.bars > 0
    settings = load_backtests_config(load_exchanges_config(config), config).get("sma_okx")
    spec = backtest_spec(settings)
    assert spec.commission == 0.0015  # OKX's taker fee, not Binance's
    candles = stored_candles(settings, "ETH/BTC", CandleStore(str(store_root)))
    assert_frames_equal(candles, between(shared_candles(ETH_BTC_5M), D(2018, 1, 10), D(2018, 1, 30)))
    alone = engine_run_backtest(candles, spec, "5m")
    pd.testing.assert_frame_equal(stored.equity, alone.equity, check_freq=False)
