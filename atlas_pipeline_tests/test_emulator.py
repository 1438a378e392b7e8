"""The exchange emulator, driven by real ccxt: markets, paging, timeframes, the synthetic market,
faults and the ccxt exceptions they turn into, and the HTTP control endpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ccxt
import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.market_data.candles import DAY_MS, to_ms
from atlas_pipeline.market_data.emulator import (
    EmulatorServer,
    FaultRule,
    FileCandleSource,
    SyntheticCandleSource,
    build_emulator,
    parse_fault_spec,
)
from atlas_pipeline.market_data.emulator.sources import aggregate, CandleArrays, read_candle_file

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "candles"
NOW = to_ms("2026-11-22 13:37:21.500")
HOUR = 3_600_000


def ccxt_client(base_url: str, **config: Any) -> ccxt.binance:
    """ccxt's binance, spot only, with every API URL's scheme+host pointed at the emulator.

    ccxt's own rate limiter is off: it would only slow the tests down (the emulator is local)."""

    def point(value: Any) -> Any:
        if isinstance(value, str):
            parts = urlsplit(value)
            return base_url + value[len(f"{parts.scheme}://{parts.netloc}") :]
        if isinstance(value, dict):
            return {key: point(v) for key, v in value.items()}
        return value

    exchange = ccxt.binance({"options": {"fetchMarkets": {"types": ["spot"]}}, "enableRateLimit": False, **config})
    exchange.urls["api"] = point(exchange.urls["api"])
    return exchange


def page_ohlcv(exchange: ccxt.binance, symbol: str, timeframe: str, since: int = 0) -> pd.DataFrame:
    """Page on ``since`` like the ingest does: since = last + tf, stop on a short batch."""
    tf_ms = exchange.parse_timeframe(timeframe) * 1000
    rows: list[list[Any]] = []
    while True:
        batch = exchange.fetch_ohlcv(symbol, timeframe, since=since, limit=1000)
        rows += batch
        if len(batch) < 1000:
            break
        since = batch[-1][0] + tf_ms
    return pd.DataFrame(rows, columns=["timestamp", "open", "high", "low", "close", "volume"])


def http(method: str, url: str, payload: Any = None) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def file_frame(name: str) -> pd.DataFrame:
    return read_candle_file(DATA_DIR / name)


def resample(frame: pd.DataFrame, rule: str) -> pd.DataFrame:
    """The reference aggregation: pandas resample, empty buckets dropped."""
    indexed = frame.set_index(pd.to_datetime(frame["timestamp"], unit="ms", utc=True))
    out = indexed.resample(rule, label="left", closed="left").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    )
    out = out.dropna(subset=["open"])
    out.insert(0, "timestamp", out.index.as_unit("ms").asi8)
    return out.reset_index(drop=True)


def assert_valid_ohlcv(frame: pd.DataFrame) -> None:
    prices = frame[["open", "high", "low", "close"]]
    assert (prices > 0).all().all()
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()
    assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
    assert (frame["volume"] >= 0).all()


@pytest.fixture(scope="module")
def file_server():
    with EmulatorServer(FileCandleSource(DATA_DIR)) as server:
        yield server


@pytest.fixture(scope="module")
def synthetic_server():
    with EmulatorServer(SyntheticCandleSource(42, now=lambda: NOW)) as server:
        yield server


# --- files -----------------------------------------------------------------------------------


def test_load_markets_lists_the_file_markets(file_server):
    markets = ccxt_client(file_server.base_url).load_markets()
    assert sorted(markets) == ["ADA/BTC", "ETH/BTC", "LTC/BTC", "TRX/BTC", "UNITTEST/BTC"]
    eth = markets["ETH/BTC"]
    assert (eth["id"], eth["base"], eth["quote"], eth["spot"], eth["active"]) == ("ETHBTC", "ETH", "BTC", True, True)
    assert eth["precision"]["price"] == 1e-8 and eth["limits"]["cost"]["min"] == 0.0001


def test_paging_a_file_returns_exactly_its_candles(file_server):
    exchange = ccxt_client(file_server.base_url)
    file_server.reset_stats()
    fetched = page_ohlcv(exchange, "ETH/BTC", "5m", since=0)
    expected = file_frame("binance_ETH-BTC_5m.parquet")
    pd.testing.assert_frame_equal(fetched, expected, check_exact=True)
    assert file_server.stats["requests"] == {"exchangeInfo": 1, "klines": 6}  # 5,760 candles


def test_coarser_timeframes_are_aggregates_and_gaps_stay_gaps(file_server):
    exchange = ccxt_client(file_server.base_url)
    for name, symbol in [("binance_ETH-BTC_5m.parquet", "ETH/BTC"), ("binance_ADA-BTC_5m.parquet", "ADA/BTC")]:
        source = file_frame(name)
        hourly = page_ohlcv(exchange, symbol, "1h")
        expected = resample(source, "1h")
        pd.testing.assert_frame_equal(hourly[["timestamp", "open", "high", "low", "close"]], expected[["timestamp", "open", "high", "low", "close"]], check_exact=True)
        np.testing.assert_allclose(hourly["volume"], expected["volume"], rtol=1e-12)
    ada = page_ohlcv(exchange, "ADA/BTC", "5m")
    assert ada["timestamp"].tolist() == file_frame("binance_ADA-BTC_5m.parquet")["timestamp"].tolist()
    assert np.diff(ada["timestamp"]).max() == 10_200_000  # the file's 2h50m outage is served as a gap
    one_minute = page_ohlcv(exchange, "UNITTEST/BTC", "3m")
    assert len(one_minute) == len(resample(file_frame("binance_UNITTEST-BTC_1m.parquet"), "3min"))


def test_timeframes_finer_than_the_file_are_invalid_intervals(file_server):
    exchange = ccxt_client(file_server.base_url)
    for timeframe in ("1m", "1s", "3d"):
        with pytest.raises(ccxt.BadRequest, match='"code":-1120'):
            exchange.fetch_ohlcv("ETH/BTC", timeframe)


def test_without_since_the_latest_candles_come_back(file_server):
    exchange = ccxt_client(file_server.base_url)
    expected = file_frame("binance_TRX-BTC_5m.parquet")
    latest = exchange.fetch_ohlcv("TRX/BTC", "5m")
    assert len(latest) == 500 and [row[0] for row in latest] == expected["timestamp"].tolist()[-500:]
    until = int(expected["timestamp"].iloc[3000])
    before = exchange.fetch_ohlcv("TRX/BTC", "5m", limit=20, params={"until": until})
    assert [row[0] for row in before] == expected["timestamp"].tolist()[2981:3001]


def test_unknown_symbol_is_bad_symbol(file_server):
    exchange = ccxt_client(file_server.base_url)
    exchange.load_markets()
    with pytest.raises(ccxt.BadSymbol, match="does not have market"):  # ccxt refuses before asking
        exchange.fetch_ohlcv("DOGE/BTC", "5m")
    exchange.markets["DOGE/BTC"] = {**exchange.markets["ETH/BTC"], "id": "DOGEBTC", "symbol": "DOGE/BTC"}
    with pytest.raises(ccxt.BadSymbol, match='"code":-1121,"msg":"Invalid symbol."'):
        exchange.fetch_ohlcv("DOGE/BTC", "5m")


def test_klines_parameters_follow_binance(file_server):
    url = file_server.base_url + "/api/v3/klines?symbol=ETHBTC&interval=5m"
    status, rows = http("GET", url + "&startTime=0")
    assert status == 200 and len(rows) == 500
    assert rows[0][0] == 1515560100000 and rows[0][6] == 1515560100000 + 299_999
    assert all(isinstance(v, str) for v in rows[0][1:6]) and len(rows[0]) == 12
    assert http("GET", url + "&limit=1000")[1][-1][0] == 1515560100000 + 5759 * 300_000  # the latest
    start, end = rows[10][0], rows[20][0]
    assert [r[0] for r in http("GET", url + f"&startTime={start - 1}&endTime={end}")[1]] == [r[0] for r in rows[10:21]]
    assert http("GET", url + "&limit=1001") == (400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."})
    assert http("GET", url + "&limit=0")[0] == 400
    assert http("GET", url + "&startTime=abc")[1]["code"] == -1100
    assert http("GET", url + f"&startTime={end}&endTime={start}")[1]["code"] == -1023
    assert http("GET", url.replace("ETHBTC", "NOPE")) == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert http("GET", url.replace("5m", "7m")) == (400, {"code": -1120, "msg": "Invalid interval."})
    assert http("GET", file_server.base_url + "/api/v3/klines?interval=5m")[1]["code"] == -1102
    assert http("GET", file_server.base_url + "/api/v3/ping") == (200, {})
    status, body = http("GET", file_server.base_url + "/api/v3/time")
    assert status == 200 and abs(body["serverTime"] - time.time() * 1000) < 60_000


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_markets_and_listing_candles(synthetic_server):
    exchange = ccxt_client(synthetic_server.base_url)
    markets = exchange.load_markets()
    assert {"BTC/USDT", "ETH/USDT", "SOL/USDT"} <= set(markets)
    assert (markets["SOL/USDT"]["base"], markets["SOL/USDT"]["quote"]) == ("SOL", "USDT")
    assert exchange.fetch_ohlcv("BTC/USDT", "1d", since=0, limit=2)[0][0] == to_ms("2017-08-17")
    assert exchange.fetch_ohlcv("SOL/USDT", "1m", since=0, limit=2)[0][0] == to_ms("2020-08-11")
    assert exchange.fetch_time() == NOW


def test_synthetic_is_deterministic_across_servers():
    def fetch(seed: int) -> list[list[Any]]:
        with EmulatorServer(SyntheticCandleSource(seed, now=lambda: NOW)) as server:
            exchange = ccxt_client(server.base_url)
            return exchange.fetch_ohlcv("ETH/USDT", "5m", since=to_ms("2021-05-19"), limit=1000) + exchange.fetch_ohlcv("ETH/USDT", "1h")

    first = fetch(7)
    assert first == fetch(7)
    assert first != fetch(8)


def test_synthetic_candles_are_valid_and_consistent_across_timeframes(synthetic_server):
    exchange = ccxt_client(synthetic_server.base_url)
    day = to_ms("2022-06-13")
    minutes = pd.DataFrame(exchange.fetch_ohlcv("BTC/USDT", "1m", since=day, limit=1000) + exchange.fetch_ohlcv("BTC/USDT", "1m", since=day + 1000 * 60_000, limit=440), columns=["timestamp", "open", "high", "low", "close", "volume"])
    hours = pd.DataFrame(exchange.fetch_ohlcv("BTC/USDT", "1h", since=day, limit=24), columns=minutes.columns)
    assert len(minutes) == 1440 and minutes["timestamp"].iloc[-1] == day + DAY_MS - 60_000
    assert_valid_ohlcv(minutes)
    expected = resample(minutes, "1h")
    pd.testing.assert_frame_equal(hours.drop(columns="volume"), expected.drop(columns="volume"), check_exact=True)
    np.testing.assert_allclose(hours["volume"], expected["volume"], rtol=1e-12)
    assert (minutes["open"].iloc[1:].to_numpy() == minutes["close"].iloc[:-1].to_numpy()).all()
    daily = pd.DataFrame(exchange.fetch_ohlcv("DOGE/USDT", "1d", since=0, limit=1000), columns=minutes.columns)
    assert len(daily) == 1000
    assert_valid_ohlcv(daily)


def test_synthetic_latest_candle_is_the_open_one(synthetic_server):
    exchange = ccxt_client(synthetic_server.base_url)
    for timeframe, tf_ms in [("1m", 60_000), ("1h", HOUR), ("1d", DAY_MS)]:
        latest = exchange.fetch_ohlcv("ETH/USDT", timeframe)
        assert len(latest) == 500 and latest[-1][0] == NOW - NOW % tf_ms
        assert np.diff([row[0] for row in latest]).tolist() == [tf_ms] * 499
    raw = http("GET", synthetic_server.base_url + "/api/v3/klines?symbol=ETHUSDT&interval=1h&limit=1")[1]
    assert raw[0][6] > NOW  # the open candle closes in the future
    minutes_this_hour = exchange.fetch_ohlcv("ETH/USDT", "1m", since=NOW - NOW % HOUR, limit=100)
    hour = exchange.fetch_ohlcv("ETH/USDT", "1h", since=NOW - NOW % HOUR)
    assert len(minutes_this_hour) == 38 and len(hour) == 1
    assert hour[0][4] == minutes_this_hour[-1][4] and hour[0][2] == max(r[2] for r in minutes_this_hour)


def test_synthetic_open_candle_grows_with_the_clock():
    clock = {"now": NOW}
    source = SyntheticCandleSource(3, now=lambda: clock["now"])
    minute = NOW - NOW % 60_000
    partial = source.candles("BTC/USDT", "1m", minute, minute + 60_000)
    clock["now"] = minute + 60_000
    finished = source.candles("BTC/USDT", "1m", minute, minute + 60_000)
    assert partial["open"].iloc[0] == finished["open"].iloc[0]
    assert partial["high"].iloc[0] <= finished["high"].iloc[0] and partial["low"].iloc[0] >= finished["low"].iloc[0]
    assert partial["volume"].iloc[0] < finished["volume"].iloc[0]
    assert len(source.candles("BTC/USDT", "1m", minute, minute + 120_000)) == 2


def test_synthetic_paging_serves_nine_years(synthetic_server):
    exchange = ccxt_client(synthetic_server.base_url)
    started = time.perf_counter()
    hourly = page_ohlcv(exchange, "BTC/USDT", "1h")
    paging_s = time.perf_counter() - started
    assert hourly["timestamp"].iloc[0] == to_ms("2017-08-17") and hourly["timestamp"].iloc[-1] == NOW - NOW % HOUR
    assert hourly["timestamp"].is_unique and len(hourly) == (NOW - to_ms("2017-08-17")) // HOUR + 1
    started = time.perf_counter()
    minutes = exchange.fetch_ohlcv("XRP/USDT", "1m", since=to_ms("2019-02-03 04:05"), limit=1000)
    minute_ms = (time.perf_counter() - started) * 1000
    print(f"9 years of 1h: {len(hourly)} candles in {paging_s:.2f} s; 1000 1m candles in {minute_ms:.1f} ms")
    assert len(minutes) == 1000  # (speed: printed here; bench/ingest.py measures it against bare ccxt)


def test_synthetic_markets_can_be_configured():
    source = SyntheticCandleSource(1, markets={"PEPE/USDT": "2023-05-05", "BTC/EUR": "2020-01-03 10:30"}, now=lambda: NOW)
    assert source.markets() == ["PEPE/USDT", "BTC/EUR"]
    assert source.first_candle("BTC/EUR", "1m") == to_ms("2020-01-03 10:30")
    assert source.first_candle("BTC/EUR", "1d") == to_ms("2020-01-03")
    day = source.candles("BTC/EUR", "1d", 0, to_ms("2020-01-04"))
    minutes = source.candles("BTC/EUR", "1m", 0, to_ms("2020-01-04"))
    assert len(day) == 1 and len(minutes) == 13 * 60 + 30
    assert day["open"].iloc[0] == minutes["open"].iloc[0] and day["volume"].iloc[0] == pytest.approx(minutes["volume"].sum())
    assert_valid_ohlcv(source.candles("PEPE/USDT", "15m", 0, NOW))
    with pytest.raises(ValueError):
        SyntheticCandleSource(-1)


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        (FaultRule("rate_limit", times=1, retry_after=2), ccxt.DDoSProtection),
        (FaultRule("rate_limit", status=418, times=1), ccxt.DDoSProtection),
        (FaultRule("server_error", status=500, times=1), ccxt.ExchangeNotAvailable),
        (FaultRule("server_error", status=502, times=1), ccxt.ExchangeNotAvailable),
        (FaultRule("server_error", times=1), ccxt.ExchangeNotAvailable),  # 503
        (FaultRule("server_error", status=504, times=1), ccxt.RequestTimeout),
        (FaultRule("timeout", delay=2, times=1), ccxt.RequestTimeout),
        (FaultRule("truncated", times=1), ccxt.NetworkError),
    ],
    ids=lambda value: value.kind + str(value.status or "") if isinstance(value, FaultRule) else value.__name__,
)
def test_faults_raise_the_ccxt_exceptions(emulator_factory, rule, error):
    server = emulator_factory(FileCandleSource(DATA_DIR), faults=[rule])
    exchange = ccxt_client(server.base_url, timeout=300)
    with pytest.raises(error) as raised:
        exchange.load_markets()
    assert type(raised.value) is error  # exactly this class, not a subclass
    assert "ETH/BTC" in exchange.load_markets()  # times=1: the next request is served
    server.set_faults([rule])
    with pytest.raises(error) as raised:
        exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=5)
    assert type(raised.value) is error
    if rule.kind == "rate_limit":
        assert exchange.last_response_headers["Retry-After"] == f"{rule.retry_after:g}"
        assert '"code":-1003' in str(raised.value)
    assert len(exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=5)) == 5
    assert server.stats["faults_fired"] == {rule.kind: 2}


def test_malformed_bodies_pass_through_ccxt_silently(emulator_factory):
    """ccxt 4.5.90 does not raise on a 200 with a non-JSON body: callers must check."""
    server = emulator_factory(FileCandleSource(DATA_DIR), faults=["malformed:endpoint=exchangeInfo,times=1"])
    exchange = ccxt_client(server.base_url)
    assert exchange.load_markets() == {}  # no markets, no error...
    with pytest.raises(ccxt.BadSymbol):  # ...until the first symbol lookup
        exchange.fetch_ohlcv("ETH/BTC", "5m")
    assert "ETH/BTC" in exchange.load_markets()
    server.set_faults(["malformed:endpoint=klines,times=2"])
    assert exchange.fetch_ohlcv("ETH/BTC", "5m", since=0) == []  # looks like "no more history"
    assert exchange.fetch_ohlcv("ETH/BTC", "5m", limit=3) == [[None] * 6] * 3  # one row per character
    assert exchange.last_http_response.startswith("<html>")
    assert len(exchange.fetch_ohlcv("ETH/BTC", "5m", since=0)) == 500


def test_data_faults_alter_klines_rows(emulator_factory):
    server = emulator_factory(FileCandleSource(DATA_DIR))
    exchange = ccxt_client(server.base_url)
    clean = exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=9)
    server.set_faults([FaultRule("duplicates", times=1)])
    duplicated = exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=9)
    assert duplicated == [row for row in clean for _ in (0, 1)][:9]  # ccxt keeps duplicates, trims to the limit...
    assert len(json.loads(exchange.last_http_response)) == 18
    server.set_faults([FaultRule("out_of_order", times=1)])
    assert exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=9) == clean  # ...but it does sort
    assert [row[0] for row in json.loads(exchange.last_http_response)] == [row[0] for row in clean][::-1]
    server.set_faults([FaultRule("bad_ohlc", times=1)])
    bad = exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=9)
    assert [i for i, row in enumerate(bad) if row[2] < row[3]] == [4] and bad[:4] == clean[:4]
    server.set_faults([FaultRule("off_grid", times=1)])
    shifted = exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=9)
    assert [row[0] % 300_000 for row in shifted] == [0] * 4 + [150_000] + [0] * 4
    assert exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=9) == clean
    assert server.stats["faults_fired"] == {"duplicates": 1, "out_of_order": 1, "bad_ohlc": 1, "off_grid": 1}


def test_fault_counting_after_times_and_endpoints(emulator_factory):
    rules = [FaultRule("server_error", endpoint="klines", after=1, times=2), FaultRule("rate_limit", endpoint="exchangeInfo", times=None)]
    server = emulator_factory(FileCandleSource(DATA_DIR), faults=rules)
    exchange = ccxt_client(server.base_url)
    outcomes = []
    for _ in range(5):
        try:
            exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=2, params={})
            outcomes.append("ok")
        except ccxt.BaseError as error:
            outcomes.append(type(error).__name__)
    assert outcomes == ["DDoSProtection"] * 5  # load_markets is rate limited forever
    server.set_faults(rules[:1])
    outcomes = []
    for _ in range(5):
        try:
            exchange.fetch_ohlcv("ETH/BTC", "5m", since=0, limit=2)
            outcomes.append("ok")
        except ccxt.ExchangeNotAvailable:
            outcomes.append("503")
    assert outcomes == ["ok", "503", "503", "ok", "ok"]
    assert [(f["seen"], f["fired"]) for f in server.faults] == [(5, 2)]
    assert server.stats["requests"] == {"exchangeInfo": 6, "klines": 5}
    assert server.stats["statuses"] == {"429": 5, "200": 4, "503": 2}
    server.reset_stats()
    assert server.stats == {"total": 0, "requests": {}, "statuses": {}, "faults_fired": {}}


def test_faults_switch_over_http(emulator_factory):
    server = emulator_factory(FileCandleSource(DATA_DIR))
    exchange = ccxt_client(server.base_url)
    control = server.base_url + "/_emulator/faults"
    status, body = http("POST", control, [{"kind": "rate_limit", "endpoint": "klines", "times": 1, "retry_after": 3}, "server_error:times=1,status=502"])
    assert status == 200 and [f["kind"] for f in body["faults"]] == ["rate_limit", "server_error"]
    with pytest.raises(ccxt.ExchangeNotAvailable):  # the 502 rule watches any endpoint
        exchange.load_markets()
    with pytest.raises(ccxt.DDoSProtection):  # markets now load; klines meets the 429 rule
        exchange.fetch_ohlcv("ETH/BTC", "5m")
    assert exchange.last_response_headers["Retry-After"] == "3"
    assert [f["fired"] for f in http("GET", control)[1]["faults"]] == [1, 1]
    assert http("DELETE", control) == (200, {"faults": []})
    assert len(exchange.fetch_ohlcv("ETH/BTC", "5m")) == 500
    assert http("POST", control, [{"kind": "meteor"}])[0] == 400
    assert http("POST", control, {"kind": "truncated", "times": 1})[1]["faults"][0]["kind"] == "truncated"
    status, stats = http("GET", server.base_url + "/_emulator/stats")
    assert status == 200 and stats["faults_fired"] == {"rate_limit": 1, "server_error": 1}
    assert stats["requests"] == {"exchangeInfo": 2, "klines": 2}
    assert http("DELETE", server.base_url + "/_emulator/stats")[1]["total"] == 0


def test_stop_does_not_wait_for_a_held_reply():
    server = EmulatorServer(FileCandleSource(DATA_DIR), faults=[FaultRule("timeout", delay=30)]).start()
    exchange = ccxt_client(server.base_url, timeout=200)
    with pytest.raises(ccxt.RequestTimeout):
        exchange.load_markets()
    started = time.perf_counter()
    server.stop()
    assert time.perf_counter() - started < 2


def test_parse_fault_spec():
    assert parse_fault_spec("rate_limit:times=3,retry_after=1") == FaultRule("rate_limit", times=3, retry_after=1.0)
    assert parse_fault_spec("server_error:endpoint=klines,status=502,after=2,times=none") == FaultRule(
        "server_error", endpoint="klines", status=502, after=2
    )
    assert parse_fault_spec("duplicates") == FaultRule("duplicates")
    assert parse_fault_spec(" timeout : delay=0.5 ") == FaultRule("timeout", delay=0.5)
    bad_specs = ("meteor", "rate_limit:times", "rate_limit:times=x", "rate_limit:colour=red", "server_error:status=404", "timeout:endpoint=orders", "bad_ohlc:endpoint=exchangeInfo")
    for bad in bad_specs:
        with pytest.raises(ValueError, match="fault spec"):
            parse_fault_spec(bad)


def test_build_emulator():
    with pytest.raises(ValueError, match="exactly one"):
        build_emulator()
    with pytest.raises(ValueError, match="exactly one"):
        build_emulator(data_dir=DATA_DIR, synthetic_seed=1)
    with build_emulator(data_dir=str(DATA_DIR), faults=["rate_limit:times=1"]) as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.port > 0
        assert isinstance(server.source, FileCandleSource) and server.faults[0]["kind"] == "rate_limit"
    server = build_emulator(synthetic_seed=5)
    assert isinstance(server.source, SyntheticCandleSource)
    server.stop()


def test_aggregate_keeps_only_buckets_with_data():
    arrays = CandleArrays(np.array([0, 60_000, 7_200_000], dtype="int64"), np.array([[1, 2, 0.5, 1.5, 1], [1.5, 3, 1, 2, 2], [5, 6, 4, 5, 3]], dtype="float64"))
    hourly = aggregate(arrays, HOUR)
    assert hourly.timestamp.tolist() == [0, 7_200_000]
    assert hourly.values.tolist() == [[1, 3, 0.5, 2, 3], [5, 6, 4, 5, 3]]


def test_a_stopped_server_answers_no_kept_alive_connection():
    server = EmulatorServer(FileCandleSource(DATA_DIR)).start()
    exchange = ccxt_client(server.base_url, timeout=1000)
    exchange.load_markets()  # leaves a keep-alive connection in ccxt's session
    server.stop()
    with pytest.raises(ccxt.NetworkError):
        exchange.fetch_ohlcv("ETH/BTC", "5m")


def test_synthetic_candles_are_the_same_in_a_fresh_process():
    """In-process servers share the day caches; a new interpreter regenerates from the seed."""
    script = (
        "from atlas_pipeline.market_data.emulator import SyntheticCandleSource as S;"
        f"f = S(9, now=lambda: {NOW}).candles('SOL/USDT', '1h', {to_ms('2023-02-01')}, {to_ms('2023-02-03')});"
        "print(f.to_json())"
    )
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    here = SyntheticCandleSource(9, now=lambda: NOW).candles("SOL/USDT", "1h", to_ms("2023-02-01"), to_ms("2023-02-03"))
    assert len(here) == 48 and fresh == here.to_json()


def test_serve_forever_ends_on_stop_from_another_thread():
    server = EmulatorServer(FileCandleSource(DATA_DIR))
    runner = threading.Thread(target=server.serve_forever, daemon=True)
    runner.start()
    assert http("GET", server.base_url + "/api/v3/ping") == (200, {})
    server.stop()
    runner.join(timeout=3)
    assert not runner.is_alive()
    with pytest.raises(RuntimeError, match="serves once"):
        server.start()


def test_file_source_reads_csv_and_prefers_the_exact_timeframe(tmp_path):
    five = file_frame("binance_ETH-BTC_5m.parquet")
    five.to_csv(tmp_path / "binance_ETH-BTC_5m.csv", index=False)  # int ms timestamps
    hourly = resample(five, "1h").assign(volume=1.0)  # marked, to tell it from an aggregate
    hourly.assign(timestamp=pd.to_datetime(hourly["timestamp"], unit="ms")).to_parquet(tmp_path / "binance_ETH-BTC_1h.parquet")  # naive = UTC
    five.to_csv(tmp_path / "kraken_ETH-BTC_5m.csv", index=False)
    (tmp_path / "notes.txt").write_text("not candles")
    source = FileCandleSource(tmp_path)
    assert source.markets() == ["ETH/BTC"]
    pd.testing.assert_frame_equal(source.candles("ETH/BTC", "5m", 0, NOW), five)
    assert (source.candles("ETH/BTC", "1h", 0, NOW)["volume"] == 1.0).all()
    assert (source.candles("ETH/BTC", "4h", 0, NOW)["volume"] == 4.0).iloc[1:-1].all()  # from the 1h file
    assert source.first_candle("ETH/BTC", "1d") == to_ms("2018-01-10")
    assert FileCandleSource(tmp_path, exchange=None).markets() == ["ETH/BTC"]
