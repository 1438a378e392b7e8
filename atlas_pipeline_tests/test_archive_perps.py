"""Perpetual swaps' mark-price candles and funding rates from Binance's public archive (issue 10,
item 1), against the emulator, which serves the archive files and the USDⓈ-M REST API from the
same data: on the same days the archive must equal what ccxt fetches over REST, exactly.

Every fault goes through the real path (emulator fault -> HTTP -> archive client -> ingest ->
store); the assets run on a real Dagster instance.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import zipfile

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.market_data.launch import partition_range_tags
from atlas_pipeline.market_data.candles import day_of_ms, day_start_ms, days_between
from atlas_pipeline.market_data.emulator import EmulatorServer
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection
from atlas_pipeline.market_data.funding import ingest_funding
from atlas_pipeline.market_data.ingest import IngestRequestFailed, ingest_days
from atlas_pipeline.market_data.sources.binance_archive import (
    FUNDING_RATE,
    FUTURES_UM,
    KLINES,
    MARK_PRICE_KLINES,
    BinanceArchive,
    file_path,
)
from atlas_pipeline.market_data.store import CANDLES, FUNDING_RATES, MARK_PRICE_CANDLES, CandleStore

# the spot archive tests' emulator (module-scoped: one per module) and their per-test reset
from atlas_pipeline_tests.test_binance_archive import LISTED, MARKET_ID, _clean, emulator, store_bytes  # noqa: F401

SWAP, KEY = "BTC/USDT:USDT", "BTC-USDT_USDT"
EIGHT_HOURS = 8 * 3_600_000


def client_for(emulator: EmulatorServer, price: str | None = None) -> ExchangeClient:
    connection = ExchangeConnection(
        "binance", api_url=emulator.base_url, min_request_interval_ms=0, max_retries=1, timeout_seconds=5, swaps=True
    )
    client = ExchangeClient(connection, sleep=lambda s: None)
    return client.for_price(price) if price else client


def archive_for(emulator: EmulatorServer, kind: str) -> BinanceArchive:
    return BinanceArchive(emulator.base_url, FUTURES_UM, kind, timeout_seconds=5, max_retries=1, sleep=lambda s: None)


def rest_mark(emulator: EmulatorServer, timeframe: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    return client_for(emulator, "mark").fetch_range(SWAP, timeframe, day_start_ms(start), day_start_ms(end)).candles


def rest_funding(emulator: EmulatorServer, start: dt.date, end_ms: int) -> pd.DataFrame:
    return client_for(emulator).fetch_funding(SWAP, day_start_ms(start), end_ms).candles


def download(emulator: EmulatorServer, path: str) -> tuple[bytes, str]:
    """A zip and its published checksum, fetched without Atlas's client; the checksum is checked here."""
    body = requests.get(f"{emulator.base_url}/data/{path}", timeout=5).content
    published = requests.get(f"{emulator.base_url}/data/{path}.CHECKSUM", timeout=5).text.split()
    assert published == [hashlib.sha256(body).hexdigest(), path.rsplit("/", 1)[-1]]
    return body, published[0]


def month_after(day: dt.date) -> dt.date:
    return dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)


# ---- archive == REST --------------------------------------------------------------------------


@pytest.mark.parametrize("timeframe, period", [("1m", "2025-01-01"), ("1h", "2024-12"), ("1d", "2025-01")])
def test_mark_price_files_equal_rest_on_the_same_days(emulator, timeframe, period):
    path = file_path(FUTURES_UM, MARKET_ID, timeframe, period, MARK_PRICE_KLINES)
    assert path == f"futures/um/{'monthly' if len(period) == 7 else 'daily'}/markPriceKlines/BTCUSDT/{timeframe}/BTCUSDT-{timeframe}-{period}.zip"
    file = archive_for(emulator, MARK_PRICE_KLINES).fetch(path)
    start = dt.date.fromisoformat(period if len(period) == 10 else f"{period}-01")
    end = start + dt.timedelta(days=1) if len(period) == 10 else month_after(start)
    expected = rest_mark(emulator, timeframe, start, end)
    assert len(expected) > 0
    pd.testing.assert_frame_equal(file.candles, expected, check_exact=True)
    assert (file.candles["volume"] == 0).all()
    # mark prices, not trade prices: the trade candles' file differs
    trades = archive_for(emulator, MARK_PRICE_KLINES).sibling(kind=KLINES).fetch(file_path(FUTURES_UM, MARKET_ID, timeframe, period))
    assert not np.array_equal(trades.candles["close"], file.candles["close"])
    assert file.sha256 == download(emulator, path)[1]


def test_funding_files_equal_rest_and_read_as_binance_writes_them(emulator):
    path = file_path(FUTURES_UM, MARKET_ID, "", "2025-01", FUNDING_RATE)
    assert path == "futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2025-01.zip"
    file = archive_for(emulator, FUNDING_RATE).fetch(path)
    expected = rest_funding(emulator, dt.date(2025, 1, 1), day_start_ms(dt.date(2025, 2, 1)))
    assert len(expected) == 31 * 3
    pd.testing.assert_frame_equal(file.candles, expected, check_exact=True)
    assert (file.candles["rate"] > 0).any() and (file.candles["rate"] < 0).any()

    # the file as read here with the csv module: Binance's header, ms times a few ms after the grid
    body, sha = download(emulator, path)
    assert file.sha256 == sha
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        (name,) = archive.namelist()
        rows = list(csv.reader(io.StringIO(archive.read(name).decode())))
    assert name == "BTCUSDT-fundingRate-2025-01.csv"
    assert rows[0] == ["calc_time", "funding_interval_hours", "last_funding_rate"]
    times = np.array([int(r[0]) for r in rows[1:]])
    grid = np.arange(day_start_ms(dt.date(2025, 1, 1)), day_start_ms(dt.date(2025, 2, 1)), EIGHT_HOURS)
    assert ((times - grid) >= 0).all() and ((times - grid) < 1000).all() and (times != grid).any()
    np.testing.assert_array_equal(file.candles["timestamp"], grid)
    np.testing.assert_array_equal(file.candles["rate"], [float(r[2]) for r in rows[1:]])
    assert {r[1] for r in rows[1:]} == {"8"}

    # no daily funding files, as on the real archive
    daily = f"futures/um/daily/fundingRate/{MARKET_ID}/{MARKET_ID}-fundingRate-2025-01-02.zip"
    assert requests.get(f"{emulator.base_url}/data/{daily}", timeout=5).status_code == 404


# ---- source planning: seams --------------------------------------------------------------------


def test_mixed_sources_leave_no_gap_or_duplicate_for_mark_prices(emulator, tmp_path):
    """1m mark prices 2025-01-28..2025-02-03: January's monthly file, Feb 1 and 3 daily files,
    Feb 2 (daily file missing) from REST."""
    emulator.archive.missing.add("2025-02-02")
    store = CandleStore(tmp_path / "store", MARK_PRICE_CANDLES)
    days = days_between(dt.date(2025, 1, 28), dt.date(2025, 2, 4))
    report = ingest_days(client_for(emulator, "mark"), store, SWAP, "1m", days, archive=archive_for(emulator, MARK_PRICE_KLINES))
    assert report.succeeded and report.archive_files == 3
    stored = store.read("binance", SWAP, "1m")
    pd.testing.assert_frame_equal(stored, rest_mark(emulator, "1m", days[0], days[-1] + dt.timedelta(days=1)), check_exact=True)
    assert len(stored) == 7 * 1440 and (stored["timestamp"].diff().dropna() == 60_000).all()
    sources = dict(store.provenance("binance", SWAP, "1m").itertuples(index=False))
    sha = download(emulator, file_path(FUTURES_UM, MARKET_ID, "1m", "2025-01", MARK_PRICE_KLINES))[1]
    assert {sources[d] for d in days[:4]} == {f"archive:{file_path(FUTURES_UM, MARKET_ID, '1m', '2025-01', MARK_PRICE_KLINES)}#{sha}"}
    for day in (dt.date(2025, 2, 1), dt.date(2025, 2, 3)):
        assert sources[day].startswith(f"archive:{file_path(FUTURES_UM, MARKET_ID, '1m', day.isoformat(), MARK_PRICE_KLINES)}#")
    assert sources[dt.date(2025, 2, 2)] == "rest"
    assert CandleStore(tmp_path / "store", CANDLES).series() == []  # mark prices only in their own dataset


def test_mixed_sources_leave_no_gap_or_duplicate_for_funding(emulator, tmp_path):
    """Funding from two days before a month seam to today: each closed month from its monthly
    file (even for two days), one missing month from REST, this month (not published) from REST."""
    now = client_for(emulator).now_ms()
    today = day_of_ms(now)
    this_month = today.replace(day=1)
    last_month = (this_month - dt.timedelta(days=1)).replace(day=1)
    before = (last_month - dt.timedelta(days=1)).replace(day=1)  # its monthly file is missing
    earliest = (before - dt.timedelta(days=1)).replace(day=1)
    emulator.archive.missing.add(f"{before:%Y-%m}")
    days = days_between(before - dt.timedelta(days=2), today + dt.timedelta(days=1))
    store = CandleStore(tmp_path / "store", FUNDING_RATES)
    report = ingest_funding(client_for(emulator), store, SWAP, days, archive=archive_for(emulator, FUNDING_RATE))
    assert report.succeeded
    stored = store.read("binance", SWAP, "8h")
    pd.testing.assert_frame_equal(stored, rest_funding(emulator, days[0], now + 1), check_exact=True)
    stamps = stored["timestamp"].to_numpy()
    assert stamps[0] == day_start_ms(days[0]) and (np.diff(stamps) == EIGHT_HOURS).all()
    assert stamps[-1] == (now // EIGHT_HOURS) * EIGHT_HOURS  # up to the latest settled event
    sources = dict(store.provenance("binance", SWAP, "8h").itertuples(index=False))
    published = month_after(last_month) + dt.timedelta(days=3) <= today  # the emulator publishes 3 days after the month
    for day in days:
        month = day.replace(day=1)
        if month == earliest or (month == last_month and published):
            assert sources[day] == f"archive:{file_path(FUTURES_UM, MARKET_ID, '', f'{day:%Y-%m}', FUNDING_RATE)}#" + download(
                emulator, file_path(FUTURES_UM, MARKET_ID, "", f"{day:%Y-%m}", FUNDING_RATE)
            )[1], day
        else:
            assert sources[day] == "rest", day
    assert report.archive_files == 1 + published
    assert {d.source for d in report.days} == set(sources.values())


# ---- faults: the named failure, and a byte-identical store --------------------------------------


JANUARY = days_between(dt.date(2025, 1, 1), dt.date(2025, 2, 1))
FUNDING_FILE = file_path(FUTURES_UM, MARKET_ID, "", "2025-01", FUNDING_RATE)


@pytest.mark.parametrize(
    "fault, named",
    [
        ("bad_checksum", "checksum mismatch after 2 download(s): expected sha256 {sha} (its .CHECKSUM), got "),
        ("truncated_zip", "truncated or broken zip"),
        ("wrong_columns", "CSV rows have 2 columns, Binance funding files have 3"),
        ("wrong_unit", "funding times are in µs, a file of this date has them in ms"),
        ("outside_period", "1 funding event(s) outside the file's period [2025-01-01 00:00, 2025-02-01 00:00), the first at 2025-02-01 00:00"),
    ],
)
def test_a_bad_funding_file_fails_by_name_and_leaves_the_store_untouched(emulator, tmp_path, fault, named):
    root = tmp_path / "store"
    store = CandleStore(root, FUNDING_RATES)
    assert ingest_funding(client_for(emulator), store, SWAP, [dt.date(2025, 1, 10)]).succeeded  # one day stored from REST
    before = store_bytes(root)
    emulator.set_faults([f"{fault}:endpoint=archive,file=fundingRate-2025-01"])
    with pytest.raises(IngestRequestFailed) as failure:
        ingest_funding(client_for(emulator), store, SWAP, JANUARY, full_refresh=True, archive=archive_for(emulator, FUNDING_RATE))
    emulator.clear_faults()
    message = str(failure.value)
    assert f"archive file {FUNDING_FILE}: " in message and "nothing of it was stored" in message
    assert named.format(sha=download(emulator, FUNDING_FILE)[1]) in message
    assert failure.value.report.failed_from == JANUARY[0] and not failure.value.report.written
    assert store_bytes(root) == before


def test_a_funding_month_the_archive_lacks_comes_from_rest(emulator, tmp_path):
    store = CandleStore(tmp_path / "store", FUNDING_RATES)
    emulator.set_faults(["not_found:endpoint=archive,file=fundingRate-2025-01"])
    emulator.reset_stats()
    report = ingest_funding(client_for(emulator), store, SWAP, JANUARY[:5], archive=archive_for(emulator, FUNDING_RATE))
    assert report.succeeded and report.archive_files == 0
    assert emulator.stats["requests"]["fundingRate"] >= 1
    pd.testing.assert_frame_equal(store.read("binance", SWAP, "8h"), rest_funding(emulator, JANUARY[0], day_start_ms(JANUARY[5])), check_exact=True)
    assert set(store.provenance("binance", SWAP, "8h")["source"]) == {"rest"}


# ---- the assets --------------------------------------------------------------------------------


def test_swap_assets_take_closed_history_from_the_archive(emulator, tmp_path):
    """``history_source: archive``: the swap's trade candles (futures klines files), mark prices and
    funding through the Dagster assets; checks pass, each partition names its file, and the store
    equals what ccxt fetches over REST."""
    config = tmp_path / "config"
    config.mkdir()
    entry = {"timeframes": ["1h"], "markets": [SWAP], "history_start": LISTED, "api_url": emulator.base_url,
             "archive_url": emulator.base_url, "history_source": "archive", "min_request_interval_ms": 0,
             "timeout_seconds": 5, "max_retries": 1}
    (config / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": {"binance": entry}}))
    root = tmp_path / "store"
    defs = build_definitions(config, store_root=str(root))
    start, end = dt.date(2025, 3, 1), dt.date(2025, 3, 5)
    keys = ["binance/ohlcv_1h", "binance/markprice_1h", "binance/funding"]
    emulator.reset_stats()
    with dg.instance_for_test() as instance:
        assets = [defs.resolve_assets_def(dg.AssetKey.from_user_string(k)) for k in keys]
        result = dg.materialize(assets, instance=instance, tags=partition_range_tags(SWAP, start, end - dt.timedelta(days=1)), raise_on_error=False)
        requests_made = emulator.stats["requests"]  # before this test downloads the files itself
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
        files = {
            "ohlcv_1h": file_path(FUTURES_UM, MARKET_ID, "1h", "2025-03"),
            "markprice_1h": file_path(FUTURES_UM, MARKET_ID, "1h", "2025-03", MARK_PRICE_KLINES),
            "funding": FUNDING_FILE.replace("2025-01", "2025-03"),
        }
        for name, path in files.items():
            record = instance.fetch_materializations(dg.AssetKey(["binance", name]), limit=10).records
            partitions = {r.partition_key: r.asset_materialization.metadata["source"].value for r in record}
            assert set(partitions) == {f"{d}|{KEY}" for d in days_between(start, end)}
            assert set(partitions.values()) == {f"archive:{path}#{download(emulator, path)[1]}"}, name
    assert requests_made["archive"] == 3 and requests_made.get("fundingRate", 0) == 0, requests_made
    # candle endpoints only for each asset's first-candle lookup (one request), none for the days
    assert requests_made.get("fapiKlines", 0) + requests_made.get("markPriceKlines", 0) <= 2, requests_made
    trades = client_for(emulator).fetch_range(SWAP, "1h", day_start_ms(start), day_start_ms(end)).candles
    pd.testing.assert_frame_equal(CandleStore(root).read("binance", SWAP, "1h"), trades, check_exact=True)
    pd.testing.assert_frame_equal(CandleStore(root, MARK_PRICE_CANDLES).read("binance", SWAP, "1h"), rest_mark(emulator, "1h", start, end), check_exact=True)
    pd.testing.assert_frame_equal(
        CandleStore(root, FUNDING_RATES).read("binance", SWAP, "8h"), rest_funding(emulator, start, day_start_ms(end)), check_exact=True
    )
