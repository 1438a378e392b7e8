"""A swap portfolio in a real Dagster instance: ccxt -> emulator (Binance USDⓈ-M over the real
candles of ``../shared/data/candles``) -> trade candles, mark prices and funding of two swaps ->
``<name>/portfolio``. Its lineage holds all three inputs; the ``research_reruns`` sensor reruns it
when only a funding (or mark-price) partition of one of its markets changes, and a single perp
backtest likewise; a market without funding fails the blocking check naming it."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
import yaml

from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.market_data.launch import partition_range_tags
from atlas_pipeline.defs.research.assets import backtest_asset_key
from atlas_pipeline.defs.research.portfolios import portfolio_asset_key
from atlas_pipeline.market_data.emulator import build_emulator
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles
from atlas_pipeline_tests.test_research_assets import requested, sensor_tick

pytestmark = needs_shared_candles

ETH, ADA = "ETH/BTC:BTC", "ADA/BTC:BTC"
START, END = dt.date(2018, 1, 11), dt.date(2018, 1, 13)  # two days with funding
CANDLES, MARK, FUNDING = (dg.AssetKey(["binance", name]) for name in ("ohlcv_5m", "markprice_5m", "funding"))
PORTFOLIO, LONGER = portfolio_asset_key("perp_basket"), portfolio_asset_key("perp_basket_longer")
PERP = backtest_asset_key("perp")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Candles, mark prices and funding of both swaps for two days, plus a third day with funding
    for ETH only; a swap portfolio over the two days, one over three, a perp backtest of ETH."""
    root = tmp_path_factory.mktemp("perp_portfolio")
    config = root / "config"
    config.mkdir()
    with build_emulator(data_dir=SHARED_CANDLES) as emulator:
        exchange = {"timeframes": ["5m"], "markets": [ETH, ADA], "history_start": "2018-01-10", "api_url": emulator.base_url,
                    "min_request_interval_ms": 0, "timeout_seconds": 5, "max_retries": 2}
        portfolio = {"strategy": "sma_crossover", "params": {"fast": 10, "slow": 30, "allow_short": True}, "exchange": "binance",
                     "timeframe": "5m", "symbols": [ETH, ADA], "market_type": "swap", "leverage": 3, "cash": 10_000,
                     "sizing": {"fraction": 0.8}, "rebalance": {"every": "6h", "threshold": 0.02}}
        period = {"start": START.isoformat(), "end": END.isoformat()}
        (config / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": {"binance": exchange}}))
        (config / "backtests.yaml").write_text(yaml.safe_dump({
            "backtests": {"perp": {**{k: v for k, v in portfolio.items() if k != "rebalance"}, "symbols": [ETH], "period": period}},
            "portfolios": {
                "perp_basket": {**portfolio, "period": period},
                "perp_basket_longer": {**portfolio, "period": {**period, "end": (END + dt.timedelta(days=1)).isoformat()}},
            },
        }))
        defs = build_definitions(config, store_root=str(root / "store"))
        with dg.instance_for_test() as instance:
            for symbol in (ETH, ADA):
                assert materialize(defs, instance, [CANDLES, MARK, FUNDING], symbol, START, END).success
                assert materialize(defs, instance, [CANDLES, MARK], symbol, END, END + dt.timedelta(days=1)).success
            assert materialize(defs, instance, [FUNDING], ETH, END, END + dt.timedelta(days=1)).success
            yield defs, instance, root / "store"


def materialize(defs, instance, keys, symbol, start, end, raise_on_error=True):
    tags = partition_range_tags(symbol, start, end - dt.timedelta(days=1))
    return dg.materialize([defs.resolve_assets_def(k) for k in keys], instance=instance, tags=tags, raise_on_error=raise_on_error)


def test_the_swap_portfolio_reads_candles_mark_prices_and_funding(pipeline) -> None:
    defs, instance, store_root = pipeline
    assert defs.resolve_asset_graph().get(PORTFOLIO).parent_keys == {CANDLES, MARK, FUNDING}  # lineage
    result = dg.materialize([defs.resolve_assets_def(PORTFOLIO)], instance=instance)
    assert result.success
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {"funding_history": True}
    [event] = instance.fetch_materializations(PORTFOLIO, limit=1).records
    metadata = event.asset_materialization.metadata
    for key in ("funding_paid", "funding_received", "liquidations", "max_leverage_used"):
        assert key in metadata
    summary, frames = ResultStore(str(store_root)).load_portfolio("perp_basket", ("funding", "attribution", "orders"))
    assert set(frames["funding"]["symbol"]) == {ETH, ADA} and len(frames["funding"]) > 0
    assert set(frames["orders"]["side"]) == {"buy", "sell"}
    table = frames["attribution"].set_index("symbol")
    assert table["contribution_return"].sum() == pytest.approx(summary["metrics"]["total_return"], rel=1e-9, abs=1e-12)
    assert summary["parameters"]["market_type"] == "swap" and summary["parameters"]["leverage"] == 3


def test_a_market_without_funding_fails_the_blocking_check_naming_it(pipeline) -> None:
    defs, instance, _ = pipeline
    result = dg.materialize([defs.resolve_assets_def(LONGER)], instance=instance, raise_on_error=False)
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "funding_history" and not check.passed
    assert f"of binance {ADA} (binance/funding) is missing 3 funding event(s): 2018-01-13 00:00 .. 2018-01-13 16:00" in check.description
    assert result.get_asset_materialization_events() == []


def test_the_sensor_reruns_the_portfolio_and_the_perp_backtest_on_a_funding_change(pipeline) -> None:
    defs, instance, _ = pipeline
    assert dg.materialize([defs.resolve_assets_def(PORTFOLIO)], instance=instance).success
    assert dg.materialize([defs.resolve_assets_def(PERP)], instance=instance, partition_key="ETH-BTC_BTC").success
    quiet = sensor_tick(defs, instance)
    assert sensor_tick(defs, instance, quiet.cursor).run_requests == []

    # only a funding partition of one market of the portfolio (ADA): the portfolio reruns
    assert materialize(defs, instance, [FUNDING], ADA, START, START + dt.timedelta(days=1)).success
    tick = sensor_tick(defs, instance, quiet.cursor)
    assert [r.asset_selection for r in tick.run_requests] == [[PORTFOLIO]]
    # (the perp backtest's ADA partition was never run: left alone)

    # only a funding partition of ETH, then only its mark prices: the perp backtest's ETH
    # partition and the portfolio, each time
    cursor = tick.cursor
    for parent in (FUNDING, MARK):
        assert dg.materialize([defs.resolve_assets_def(PORTFOLIO)], instance=instance).success  # as the reruns would
        assert dg.materialize([defs.resolve_assets_def(PERP)], instance=instance, partition_key="ETH-BTC_BTC").success
        settled = sensor_tick(defs, instance, cursor)
        assert settled.run_requests == []
        assert materialize(defs, instance, [parent], ETH, START, START + dt.timedelta(days=1)).success
        tick = sensor_tick(defs, instance, settled.cursor)
        assert requested(tick, PERP) == {"ETH-BTC_BTC"}, parent
        assert [r.asset_selection for r in tick.run_requests if r.partition_key is None] == [[PORTFOLIO]], parent
        cursor = tick.cursor
