"""Exchange metadata against the emulator with real ccxt: ranking, fees, first candles, market
status and the active universe, the atomic YAML, and the Dagster asset (plus OHLCV skipping)."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import ccxt
import dagster as dg
import pytest
import yaml

from atlas_pipeline.config import load_exchanges_config
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.exchange_metadata import exchange_metadata_asset_key
from atlas_pipeline.market_data.candles import to_ms
from atlas_pipeline.market_data.emulator import FileCandleSource
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection
from atlas_pipeline.market_data.exchange_metadata import (
    ACTIVE,
    INACTIVE,
    NOT_LISTED,
    METADATA_FILE,
    active_markets,
    collect_exchange_metadata,
    read_metadata,
    write_metadata_yaml,
)
from atlas_pipeline.market_data.store import CandleStore
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles, run_range, write_exchange_config

pytestmark = needs_shared_candles
CONFIGURED = ["ETH/BTC", "ADA/BTC", "LTC/BTC", "TRX/BTC"]


@pytest.fixture
def files(emulator_factory):
    """The shared candles, with LTC/BTC halted (BREAK) and TRX/BTC no longer listed."""
    return emulator_factory(FileCandleSource(SHARED_CANDLES), delisted={"LTC/BTC"}, removed={"TRX/BTC"})


def client_for(server) -> ExchangeClient:
    return ExchangeClient(
        ExchangeConnection("binance", api_url=server.base_url, timeout_seconds=5, min_request_interval_ms=0, max_retries=1)
    )


def test_collects_ranking_fees_first_candles_and_status(files) -> None:
    client = client_for(files)
    metadata = collect_exchange_metadata(client, CONFIGURED, ["5m", "1h"], top_n=2)

    own = files.api.tickers({}, to_ms("2026-01-01"))  # the file's last day does not depend on now
    listed_active = {t["symbol"]: float(t["quoteVolume"]) for t in own if t["symbol"] != "LTCBTC"}
    expected = sorted(listed_active, key=lambda s: -listed_active[s])[:2]
    assert [m.symbol.replace("/", "") for m in metadata.top_markets] == expected
    assert [m.quote_volume for m in metadata.top_markets] == pytest.approx([listed_active[s] for s in expected], rel=1e-12)
    assert [m.rank for m in metadata.top_markets] == [1, 2]

    trading = ccxt.binance().fees["trading"]
    assert (metadata.maker_fee, metadata.taker_fee) == (trading["maker"], trading["taker"]) == (0.001, 0.001)
    assert metadata.timeframes == list(ccxt.binance().timeframes)

    for symbol in ("ETH/BTC", "ADA/BTC", "LTC/BTC"):  # a halted market keeps its history
        for tf in ("5m", "1h"):
            assert metadata.first_candles[symbol][tf] == files.source.first_candle(symbol, tf)
    assert "TRX/BTC" not in metadata.first_candles

    status = {m.symbol: m for m in metadata.markets}
    assert status["ETH/BTC"].status == status["ADA/BTC"].status == ACTIVE
    assert status["LTC/BTC"].status == INACTIVE and "BREAK" in status["LTC/BTC"].reason
    assert status["TRX/BTC"].status == NOT_LISTED and "no longer lists" in status["TRX/BTC"].reason
    assert files.stats["requests"] == {"exchangeInfo": 1, "ticker24hr": 1, "klines": 6}


def test_yaml_round_trip_and_active_universe(files, tmp_path: Path, caplog) -> None:
    metadata = collect_exchange_metadata(client_for(files).exchange, CONFIGURED, ["5m"], top_n=3)
    path = write_metadata_yaml(tmp_path / METADATA_FILE, metadata)
    assert sorted(os.listdir(tmp_path)) == [METADATA_FILE]  # no temp or lock file left
    back = read_metadata(path, "binance")
    assert back.first_candles == metadata.first_candles
    assert back.markets == metadata.markets and back.top_markets == metadata.top_markets

    config = write_exchange_config(tmp_path / "config", files.base_url, markets=CONFIGURED)
    settings = load_exchanges_config(config).get("binance")
    with caplog.at_level(logging.WARNING):
        assert active_markets(settings, path) == ["ETH/BTC", "ADA/BTC"]
    assert "LTC/BTC dropped from the active universe" in caplog.text and "BREAK" in caplog.text
    assert "TRX/BTC dropped from the active universe" in caplog.text
    assert active_markets(settings, tmp_path / "missing.yaml") == CONFIGURED  # nothing known yet


def test_yaml_write_is_atomic_and_keeps_other_exchanges(files, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / METADATA_FILE
    path.write_text(yaml.safe_dump({"exchanges": {"kraken": {"timeframes": ["1h"]}}}))
    metadata = collect_exchange_metadata(client_for(files), ["ETH/BTC"], ["5m"], top_n=1)
    write_metadata_yaml(path, metadata)
    document = yaml.safe_load(path.read_text())
    assert sorted(document["exchanges"]) == ["binance", "kraken"]
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    metadata.top_n = 99
    with pytest.raises(OSError, match="disk full"):
        write_metadata_yaml(path, metadata)
    assert path.read_text() == before  # old file intact
    assert sorted(os.listdir(tmp_path)) == [METADATA_FILE]  # temp file removed


def test_dagster_asset_writes_yaml_and_ohlcv_skips_flagged_markets_keeping_their_candles(
    emulator_factory, tmp_path: Path
) -> None:
    server = emulator_factory(FileCandleSource(SHARED_CANDLES))
    config = write_exchange_config(tmp_path / "config", server.base_url, markets=["ETH/BTC", "LTC/BTC"], metadata_top_n=3)
    store_root = tmp_path / "store"
    day = dt.date(2018, 1, 15)
    with dg.instance_for_test() as instance:
        runs = run_range(config, store_root, instance, ["ETH/BTC", "LTC/BTC"], day, day + dt.timedelta(days=1))
        assert all(run.success for run in runs)
        store = CandleStore(str(store_root))
        stored = store.read("binance", "LTC/BTC", "5m", day, day + dt.timedelta(days=1))
        assert len(stored) == 288

        server.api.delisted = frozenset({"LTC/BTC"})  # the exchange halts LTC/BTC
        defs = build_definitions(config, store_root=str(store_root))
        key = exchange_metadata_asset_key("binance")
        result = dg.materialize([defs.get_assets_def(key)], instance=instance)
        assert result.success
        meta = instance.get_latest_materialization_event(key).asset_materialization.metadata
        assert meta["maker_fee"].value == meta["taker_fee"].value == 0.001
        assert meta["flagged_count"].value == 1 and "LTC/BTC: inactive" in meta["flagged_markets"].value
        assert len(meta["top_markets"].value.splitlines()) == 2 + 3  # header, rule, top 3
        assert "| ETH/BTC | 5m | 2018-01-10T04:55:00+00:00 |" in meta["first_candles"].value
        assert meta["active_markets"].value == "ETH/BTC"
        warnings = [e for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
        assert any("LTC/BTC dropped from the active universe" in e.user_message for e in warnings)
        written = yaml.safe_load((config / METADATA_FILE).read_text())["exchanges"]["binance"]
        assert written["markets"]["LTC/BTC"]["status"] == INACTIVE

        server.reset_stats()
        runs = run_range(config, store_root, instance, ["LTC/BTC"], day, day + dt.timedelta(days=1), full_refresh=True)
        assert all(run.success for run in runs)
        assert "klines" not in server.stats["requests"]  # skipped: not fetched
        assert store.read("binance", "LTC/BTC", "5m", day, day + dt.timedelta(days=1)).equals(stored)  # kept
        skipped = runs[0].result.asset_materializations_for_node(runs[0].result.all_node_events[0].node_name)
        assert any(m.metadata.get("skipped_markets") and m.metadata["skipped_markets"].value == "LTC/BTC" for m in skipped)


def test_definitions_make_no_request_for_a_real_exchange(tmp_path: Path) -> None:
    """The shipped config points at real binance: loading definitions must not contact it."""
    config = write_exchange_config(tmp_path / "config", "http://127.0.0.1:9", markets=["ETH/BTC"])
    defs = build_definitions(config, store_root=str(tmp_path / "store"))
    assert defs.get_assets_def(exchange_metadata_asset_key("binance")).group_names_by_key[
        exchange_metadata_asset_key("binance")
    ] == "market_data"


def test_a_corrupted_metadata_file_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "exchange_metadata.yaml"
    path.write_text("exchanges: {binance: [unclosed\n")
    with pytest.raises(ValueError, match=r"exchange_metadata.yaml: not valid YAML"):
        read_metadata(path, "binance")
