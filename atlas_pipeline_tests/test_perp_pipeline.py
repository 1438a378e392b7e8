"""Perpetual swaps end to end on a real Dagster instance: ccxt -> emulator (Binance USDⓈ-M over the
real candles of ``../shared/data/candles``) -> trade candles, mark-price candles and funding
history in the store -> a perp backtest and its metrics; a period without funding history fails
the backtest's blocking check naming the range."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.market_data.launch import partition_range_tags
from atlas_pipeline.market_data.candles import day_start_ms
from atlas_pipeline.market_data.emulator import build_emulator
from atlas_pipeline.market_data.emulator.binance_futures_api import BASIS
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection
from atlas_pipeline.market_data.funding import missing_events, validate_funding
from atlas_pipeline.market_data.store import FUNDING_RATES, MARK_PRICE_CANDLES, CandleStore
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline_tests.support import SHARED_CANDLES, between, needs_shared_candles, shared_candles

pytestmark = needs_shared_candles

SWAP = "ETH/BTC:BTC"
KEY = "ETH-BTC_BTC"
START, END = dt.date(2018, 1, 11), dt.date(2018, 1, 14)  # three days stored with funding


@pytest.fixture(scope="module")
def emulator():
    with build_emulator(data_dir=SHARED_CANDLES) as server:
        yield server


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, emulator):
    """Config, definitions and instance; candles, mark prices and funding of the three days, plus
    candles and mark prices (no funding) of the day after."""
    root = tmp_path_factory.mktemp("perp")
    config = root / "config"
    config.mkdir()
    exchange = {"timeframes": ["5m"], "markets": [SWAP], "history_start": "2018-01-10", "api_url": emulator.base_url,
                "min_request_interval_ms": 0, "timeout_seconds": 5, "max_retries": 2}
    backtest = {"strategy": "sma_crossover", "params": {"fast": 10, "slow": 30, "allow_short": True},
                "exchange": "binance", "timeframe": "5m", "symbols": [SWAP], "market_type": "swap", "leverage": 3,
                "cash": 10_000, "sizing": {"fraction": 0.5}}
    (config / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": {"binance": exchange}}))
    (config / "backtests.yaml").write_text(yaml.safe_dump({"backtests": {
        "perp": {**backtest, "period": {"start": START.isoformat(), "end": END.isoformat()}},
        "perp_longer": {**backtest, "period": {"start": START.isoformat(), "end": (END + dt.timedelta(days=1)).isoformat()}},
    }}))
    defs = build_definitions(config, store_root=str(root / "store"))
    with dg.instance_for_test() as instance:
        emulator.set_faults([{"kind": "rate_limit", "endpoint": "fundingRate", "times": 1, "retry_after": 0}])
        runs = {
            "data": materialize_range(defs, instance, ["binance/ohlcv_5m", "binance/markprice_5m", "binance/funding"], START, END),
            "day_after": materialize_range(defs, instance, ["binance/ohlcv_5m", "binance/markprice_5m"], END, END + dt.timedelta(days=1)),
        }
        faults = emulator.faults
        emulator.clear_faults()
        yield defs, instance, root / "store", runs, faults


def materialize_range(defs, instance, keys, start, end):
    assets = [defs.resolve_assets_def(dg.AssetKey.from_user_string(k)) for k in keys]
    tags = partition_range_tags(SWAP, start, end - dt.timedelta(days=1))
    return dg.materialize(assets, instance=instance, tags=tags, raise_on_error=False)


def test_swap_data_lands_in_the_store_through_ccxt(pipeline, emulator):
    defs, instance, store_root, runs, faults = pipeline
    assert runs["data"].success and runs["day_after"].success
    real = between(shared_candles("binance_ETH-BTC_5m"), START, END)
    trades = CandleStore(str(store_root)).read("binance", SWAP, "5m", START, END)
    pd.testing.assert_frame_equal(trades, real)  # the perp's trade candles are the file's, exactly
    mark = CandleStore(str(store_root), MARK_PRICE_CANDLES).read("binance", SWAP, "5m", START, END)
    assert list(mark["timestamp"]) == list(real["timestamp"]) and (mark["volume"] == 0).all()
    for column in ("open", "high", "low", "close"):
        gap = mark[column] / real[column] - 1
        assert gap.abs().max() <= BASIS * (1 + 1e-9) and gap.abs().max() > BASIS / 10

    funding = CandleStore(str(store_root), FUNDING_RATES).read("binance", SWAP, "8h", START, END)
    grid = np.arange(day_start_ms(START), day_start_ms(END), 8 * 3_600_000)
    assert list(funding["timestamp"]) == list(grid)
    # the rates are the exchange's own answer, read here without ccxt
    url = f"{emulator.base_url}/fapi/v1/fundingRate?symbol=ETHBTC&startTime={grid[0]}&endTime={grid[-1]}&limit=1000"
    answer = json.load(urllib.request.urlopen(url))
    assert [int(e["fundingTime"]) for e in answer] == list(grid)
    np.testing.assert_array_equal(funding["rate"], [float(e["fundingRate"]) for e in answer])
    assert (funding["rate"] > 0).any() and (funding["rate"] < 0).any()
    # the rate limit answered once was waited out and retried
    assert [f["fired"] for f in faults] == [1]

    checks = runs["data"].get_asset_check_evaluations()
    assert all(e.passed for e in checks) and {e.check_name for e in checks if e.asset_key == dg.AssetKey(["binance", "funding"])} == {
        "funding_schema", "funding_grid", "unique_funding_times", "inside_partition", "missing_funding_events"
    }
    recorded = instance.get_materialized_partitions(dg.AssetKey(["binance", "funding"]))
    assert {p.split("|")[0] for p in recorded} == {"2018-01-11", "2018-01-12", "2018-01-13"}


def test_perp_backtest_materializes_with_funding_and_metrics(pipeline):
    defs, instance, store_root, _, _ = pipeline
    assets = [defs.resolve_assets_def(dg.AssetKey(["perp", "backtest"])), defs.resolve_assets_def(dg.AssetKey(["perp", "metrics"]))]
    result = dg.materialize(assets, instance=instance, partition_key=KEY, raise_on_error=False)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"lookahead_bias": True, "funding_history": True}
    stored = ResultStore(str(store_root)).load_result("perp", SWAP)
    funding = CandleStore(str(store_root), FUNDING_RATES).read("binance", SWAP, "8h", START, END)
    assert len(stored.funding) > 0
    # every settled event is a stored one, at its own rate, and pays -q x mark x rate
    by_time = dict(zip(pd.to_datetime(funding["timestamp"], unit="ms", utc=True), funding["rate"]))
    assert all(by_time[t] == r for t, r in zip(stored.funding["time"], stored.funding["rate"]))
    np.testing.assert_allclose(stored.funding["amount"], -stored.funding["position"] * stored.funding["mark_price"] * stored.funding["rate"], rtol=1e-12)
    metrics = ResultStore(str(store_root)).load_metrics("perp", SWAP)
    amounts = stored.funding["amount"]
    assert metrics["funding_paid"] == pytest.approx(-amounts[amounts < 0].sum())
    assert metrics["funding_received"] == pytest.approx(amounts[amounts > 0].sum())
    assert metrics["liquidations"] == 0 and 1.0 < metrics["max_leverage_used"] < 2.0  # 0.5 x 3
    assert stored.parameters["leverage"] == 3 and stored.parameters["commission"] == 0.0005  # USDⓈ-M taker


def test_a_period_without_funding_fails_the_blocking_check_naming_the_range(pipeline):
    defs, instance, _, _, _ = pipeline
    assets = [defs.resolve_assets_def(dg.AssetKey(["perp_longer", "backtest"])), defs.resolve_assets_def(dg.AssetKey(["perp_longer", "metrics"]))]
    result = dg.materialize(assets, instance=instance, partition_key=KEY, raise_on_error=False)
    assert not result.success
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "funding_history"]
    assert not check.passed
    assert "2018-01-14 00:00 .. 2018-01-14 16:00 (3 events)" in check.description
    assert not instance.get_materialized_partitions(dg.AssetKey(["perp_longer", "backtest"]))
    assert not instance.get_materialized_partitions(dg.AssetKey(["perp_longer", "metrics"]))


def test_funding_blocking_checks_catch_bad_events():
    start, end = day_start_ms(START), day_start_ms(END)
    good = pd.DataFrame({"timestamp": np.arange(start, end, 8 * 3_600_000), "rate": 1e-4})
    assert all(o.passed for o in validate_funding(good, "8h", start, end))
    off_grid = good.assign(timestamp=good["timestamp"] + np.where(good.index == 2, 1_000, 0))
    doubled = pd.concat([good, good.iloc[[4]]], ignore_index=True).sort_values("timestamp", kind="stable")
    outside = good.assign(timestamp=good["timestamp"] + 3 * 86_400_000 * (good.index == 8))
    wild = good.assign(rate=np.where(good.index == 1, 3.0, 1e-4))
    failed = {
        name: [o.name for o in validate_funding(frame, "8h", start, end) if not o.passed]
        for name, frame in {"off_grid": off_grid, "doubled": doubled, "outside": outside, "wild": wild}.items()
    }
    assert failed == {
        "off_grid": ["funding_grid"],
        "doubled": ["unique_funding_times"],
        "outside": ["inside_partition"],
        "wild": ["funding_schema"],
    }


def test_the_daily_schedule_requests_yesterday_for_every_swap(pipeline):
    defs = pipeline[0]
    schedule = defs.resolve_schedule_def("perps_binance_daily")
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2018, 1, 15, 0, 20, tzinfo=dt.UTC))
    requests = schedule.evaluate_tick(context).run_requests
    assert sorted(r.asset_selection[0].to_user_string() for r in requests) == ["binance/funding", "binance/markprice_5m"]
    for request in requests:
        assert request.tags["dagster/asset_partition_range_start"] == f"2018-01-14|{KEY}"
        assert request.tags["dagster/asset_partition_range_end"] == f"2018-01-14|{KEY}"


def test_fault_switches_act_on_the_futures_endpoints(emulator):
    """Short pages of mark prices, a 503 on futures klines and a maintenance page on funding:
    every series still arrives whole, through ccxt's own error paths and Atlas's retries."""
    emulator.set_faults([
        "short_page:endpoint=markPriceKlines,rows=100",
        "server_error:endpoint=fapiKlines,times=1",
        "malformed:endpoint=fundingRate,times=1",
    ])
    try:
        connection = ExchangeConnection("binance", api_url=emulator.base_url, swaps=True, min_request_interval_ms=0, max_retries=2)
        client = ExchangeClient(connection, sleep=lambda seconds: None)
        lo, hi = day_start_ms(START), day_start_ms(END)
        mark = client.for_price("mark").fetch_range(SWAP, "5m", lo, hi)
        assert len(mark.candles) == 3 * 288 and mark.requests >= 9  # pages of 100
        trades = client.fetch_range(SWAP, "5m", lo, hi)
        pd.testing.assert_frame_equal(trades.candles, between(shared_candles("binance_ETH-BTC_5m"), START, END))
        assert trades.retries == 1
        funding = client.fetch_funding(SWAP, lo, hi)
        assert len(funding.candles) == 9 and funding.retries == 1
        assert sorted(f["fired"] > 0 for f in emulator.faults) == [True, True, True]
    finally:
        emulator.clear_faults()


def test_missing_funding_events_are_counted_per_day_after_the_listing():
    day0 = day_start_ms(START)
    events = pd.DataFrame({"timestamp": np.array([day0, day0 + 16 * 3_600_000, day0 + 32 * 3_600_000]), "rate": 1e-4})
    days = [START, START + dt.timedelta(days=1), START + dt.timedelta(days=2)]
    listed = day0 + 3_600_000  # listed at 01:00 on the first day: its 00:00 event is not expected
    now = day0 + 2 * 86_400_000 + 9 * 3_600_000  # 09:00 on the third day: 16:00 is not due yet
    assert missing_events(events, "8h", days, listed, now) == {days[0]: 1, days[1]: 2, days[2]: 2}
