"""Bulk history from Binance's public data archive (issue 10), against the emulator's archive.

The emulator serves the archive layout and REST from one candle source, so on the same days the
archive's candles must equal what ccxt pages over REST, byte for byte in float64. Each fault
goes through the real path (emulator fault -> HTTP -> archive client -> ingest -> store).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zipfile
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import requests

from atlas_pipeline.config import load_exchanges_config
from atlas_pipeline.config.errors import ConfigError
from atlas_pipeline.market_data.candles import DAY_MS, day_of_ms, day_start_ms, days_between, timeframe_ms
from atlas_pipeline.market_data.emulator import EmulatorServer, SyntheticCandleSource
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection
from atlas_pipeline.market_data.ingest import IngestRequestFailed, ingest_days
from atlas_pipeline.market_data.sources.binance_archive import FUTURES_UM, SPOT, BinanceArchive, file_path
from atlas_pipeline.market_data.store import CandleStore
from atlas_pipeline.store_repair import verify_archive_days
from atlas_pipeline_tests.support import run_range, write_exchange_config

MARKET, MARKET_ID = "BTC/USDT", "BTCUSDT"
LISTED = "2024-11-20"


@pytest.fixture(scope="module")
def emulator():
    """One emulator for the module (wall clock: ingest's 'now' is ccxt's clock)."""
    with EmulatorServer(SyntheticCandleSource(17, markets={MARKET: LISTED})) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(emulator):
    """Every test starts without faults and with the emulator archive's default publication rules."""
    yield
    emulator.clear_faults()
    emulator.archive.missing.clear()
    emulator.archive.daily_lag_ms = DAY_MS // 2
    emulator.archive.header_from["spot"] = None


def client_for(emulator: EmulatorServer) -> ExchangeClient:
    connection = ExchangeConnection("binance", api_url=emulator.base_url, min_request_interval_ms=0, max_retries=1, timeout_seconds=5)
    return ExchangeClient(connection, sleep=lambda s: None)


def archive_for(emulator: EmulatorServer, market: str = SPOT, timeout: float = 5) -> BinanceArchive:
    return BinanceArchive(emulator.base_url, market, timeout_seconds=timeout, max_retries=1, sleep=lambda s: None)


def rest(emulator: EmulatorServer, timeframe: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    """What ccxt pages over REST for ``[start, end)``: the reference the archive must equal."""
    return client_for(emulator).fetch_range(MARKET, timeframe, day_start_ms(start), day_start_ms(end)).candles


def raw_csv(emulator: EmulatorServer, path: str) -> bytes:
    """The CSV inside an archive zip, fetched without Atlas's client."""
    body = requests.get(f"{emulator.base_url}/data/{path}", timeout=5).content
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return archive.read(archive.namelist()[0])


def published_sha(emulator: EmulatorServer, path: str) -> str:
    """SHA-256 of the zip as downloaded (computed here, not by Atlas), checked against its .CHECKSUM."""
    body = requests.get(f"{emulator.base_url}/data/{path}", timeout=5).content
    checksum = requests.get(f"{emulator.base_url}/data/{path}.CHECKSUM", timeout=5).text.split()
    assert checksum == [hashlib.sha256(body).hexdigest(), path.rsplit("/", 1)[-1]]
    return checksum[0]


def store_bytes(root: Path) -> dict[str, bytes]:
    """Every file under the store (locks aside), for byte-identity checks."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# ---- archive == REST ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "market, timeframe, periods",
    [
        (SPOT, "1m", ["2024-12-31", "2025-01-01", "2025-01"]),
        (SPOT, "1h", ["2024-12", "2025-01", "2025-01-02"]),
        (SPOT, "1d", ["2024-12", "2025-01", "2025-01-02"]),
        (FUTURES_UM, "1m", ["2024-12-31", "2025-01-01"]),
        (FUTURES_UM, "1h", ["2024-12", "2025-01"]),
        (FUTURES_UM, "1d", ["2025-01", "2025-01-02"]),
    ],
)
def test_archive_equals_rest_on_the_same_days(emulator, market, timeframe, periods):
    archive = archive_for(emulator, market)
    for period in periods:
        path = file_path(market, MARKET_ID, timeframe, period)
        file = archive.fetch(path)
        start = dt.date.fromisoformat(period if len(period) == 10 else f"{period}-01")
        end = start + dt.timedelta(days=1) if len(period) == 10 else dt.date(start.year + start.month // 12, start.month % 12 + 1, 1)
        expected = rest(emulator, timeframe, start, end)
        assert len(expected) == (day_start_ms(end) - max(day_start_ms(start), day_start_ms(dt.date.fromisoformat(LISTED)))) // timeframe_ms(timeframe)
        pd.testing.assert_frame_equal(file.candles, expected, check_exact=True)
        assert file.sha256 == published_sha(emulator, path)
        # the files really differ in unit across 2025-01-01 (spot: µs from then) and in header rows
        csv = raw_csv(emulator, path)
        has_header = csv.startswith(b"open_time,")
        assert has_header == (market == FUTURES_UM)
        first_open = int(csv.split(b"\n")[1 if has_header else 0].split(b",")[0])
        in_us = market == SPOT and start >= dt.date(2025, 1, 1)
        assert first_open == int(expected["timestamp"].iloc[0]) * (1000 if in_us else 1)


def test_spot_files_with_a_header_row_parse_the_same(emulator):
    emulator.archive.header_from["spot"] = dt.date(2024, 12, 1)
    path = file_path(SPOT, MARKET_ID, "1h", "2025-01")
    assert raw_csv(emulator, path).startswith(b"open_time,open,high,low,close,volume,close_time,")
    file = archive_for(emulator).fetch(path)
    pd.testing.assert_frame_equal(file.candles, rest(emulator, "1h", dt.date(2025, 1, 1), dt.date(2025, 2, 1)), check_exact=True)


# ---- source planning: seams ----------------------------------------------------------------------


def test_mixed_sources_leave_no_gap_or_duplicate_at_month_and_day_seams(emulator, tmp_path):
    """1m, 2025-01-28..2025-02-03: January from its monthly file, Feb 1 and 3 from daily files, Feb 2
    (daily file missing) from REST; then 1h from a missing month (daily files) to today (REST tail)."""
    emulator.archive.missing.update({"2025-02-02", "2026-08"})
    store = CandleStore(tmp_path / "store")
    days = days_between(dt.date(2025, 1, 28), dt.date(2025, 2, 4))
    report = ingest_days(client_for(emulator), store, MARKET, "1m", days, archive=archive_for(emulator))
    assert report.succeeded
    stored = store.read("binance", MARKET, "1m")
    pd.testing.assert_frame_equal(stored, rest(emulator, "1m", days[0], days[-1] + dt.timedelta(days=1)), check_exact=True)
    stamps = stored["timestamp"].to_numpy()
    assert len(stamps) == 7 * 1440 and (pd.Series(stamps).diff().dropna() == 60_000).all()  # no gap, no duplicate
    sources = dict(store.provenance("binance", MARKET, "1m").itertuples(index=False))
    month = f"archive:{file_path(SPOT, MARKET_ID, '1m', '2025-01')}#"
    assert all(sources[d].startswith(month) for d in days[:4])
    assert sources[dt.date(2025, 2, 1)].startswith(f"archive:{file_path(SPOT, MARKET_ID, '1m', '2025-02-01')}#")
    assert sources[dt.date(2025, 2, 2)] == "rest"
    assert sources[dt.date(2025, 2, 3)].startswith(f"archive:{file_path(SPOT, MARKET_ID, '1m', '2025-02-03')}#")
    assert sources[dt.date(2025, 1, 28)].endswith(published_sha(emulator, file_path(SPOT, MARKET_ID, "1m", "2025-01")))

    # 1h from July 2026 to today: monthly files, August's daily files (its monthly is missing), this month's daily files, the REST tail
    emulator.archive.daily_lag_ms = 2 * DAY_MS
    now = client_for(emulator).now_ms()
    today = day_of_ms(now)
    days = days_between(dt.date(2026, 7, 1), today + dt.timedelta(days=1))
    report = ingest_days(client_for(emulator), store, MARKET, "1h", days, archive=archive_for(emulator))
    assert report.succeeded
    stored = store.read("binance", MARKET, "1h")
    expected = rest(emulator, "1h", days[0], today + dt.timedelta(days=1))
    assert len(stored) >= len(expected) - 1  # the last candle may have closed between the two
    pd.testing.assert_frame_equal(stored.iloc[: len(expected)], expected.iloc[: len(stored)], check_exact=True)
    assert (stored["timestamp"].diff().dropna() == 3_600_000).all()
    sources = dict(store.provenance("binance", MARKET, "1h").itertuples(index=False))
    for day in days:
        end = day_start_ms(day) + DAY_MS
        month_published = day_start_ms(dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)) + 3 * DAY_MS <= now
        if month_published and (day.year, day.month) != (2026, 8):
            want = f"archive:{file_path(SPOT, MARKET_ID, '1h', f'{day:%Y-%m}')}#"
        elif end + 2 * DAY_MS <= now:  # its daily file is published
            want = f"archive:{file_path(SPOT, MARKET_ID, '1h', day.isoformat())}#"
        else:
            want = "rest"
        assert sources[day].startswith(want), (day, sources[day])
    assert report.archive_files >= 31 + 2  # August's days and the closed months


# ---- faults: the named failure, and a byte-identical store ---------------------------------------


def _stored_before(emulator, tmp_path) -> tuple[CandleStore, Path]:
    """A store holding one day of January 2025 (1h: the January file is the year file 2025)."""
    root = tmp_path / "store"
    store = CandleStore(root)
    assert ingest_days(client_for(emulator), store, MARKET, "1h", [dt.date(2025, 1, 10)]).succeeded
    return store, root


JANUARY = days_between(dt.date(2025, 1, 1), dt.date(2025, 2, 1))


@pytest.mark.parametrize(
    "fault, named",
    [
        ("bad_checksum", "checksum mismatch after 2 download(s): expected sha256 {sha} (its .CHECKSUM), got "),
        ("truncated_zip", "truncated or broken zip"),
        ("wrong_columns", "CSV rows have 11 columns, Binance klines have 12"),
        ("wrong_unit", "open times are in ms, a file of this date has them in µs"),
        ("outside_period", "1 candle(s) outside the file's period [2025-01-01 00:00, 2025-02-01 00:00), the first at 2025-02-01 00:00"),
    ],
)
def test_a_bad_archive_file_fails_its_span_by_name_and_leaves_the_store_untouched(emulator, tmp_path, fault, named):
    store, root = _stored_before(emulator, tmp_path)
    before = store_bytes(root)
    path = file_path(SPOT, MARKET_ID, "1h", "2025-01")
    emulator.set_faults([f"{fault}:endpoint=archive,file=2025-01.zip"])
    with pytest.raises(IngestRequestFailed) as failure:
        ingest_days(client_for(emulator), store, MARKET, "1h", JANUARY, archive=archive_for(emulator))
    emulator.clear_faults()
    message = str(failure.value)
    assert f"archive file {path}: " in message and "nothing of it was stored" in message
    assert named.format(sha=published_sha(emulator, path)) in message
    assert failure.value.report.failed_from == JANUARY[0] and not failure.value.report.written
    assert store_bytes(root) == before


def test_a_checksum_mismatch_is_retried(emulator, tmp_path):
    store = CandleStore(tmp_path / "store")
    emulator.set_faults(["bad_checksum:endpoint=archive,times=1"])
    emulator.reset_stats()
    report = ingest_days(client_for(emulator), store, MARKET, "1h", JANUARY, archive=archive_for(emulator))
    assert report.succeeded and emulator.faults[0]["fired"] == 1
    assert emulator.stats["requests"]["archive"] == 2  # the zip, downloaded twice
    pd.testing.assert_frame_equal(store.read("binance", MARKET, "1h"), rest(emulator, "1h", JANUARY[0], dt.date(2025, 2, 1)), check_exact=True)
    sha = published_sha(emulator, file_path(SPOT, MARKET_ID, "1h", "2025-01"))
    assert set(store.provenance("binance", MARKET, "1h")["source"]) == {f"archive:{file_path(SPOT, MARKET_ID, '1h', '2025-01')}#{sha}"}


def test_a_file_the_archive_lacks_comes_from_rest(emulator, tmp_path):
    store = CandleStore(tmp_path / "store")
    emulator.set_faults(["not_found:endpoint=archive,file=2025-01"])
    emulator.reset_stats()
    report = ingest_days(client_for(emulator), store, MARKET, "1h", JANUARY[:5], archive=archive_for(emulator))
    assert report.succeeded and report.archive_files == 0
    assert emulator.stats["requests"]["klines"] >= 1
    pd.testing.assert_frame_equal(store.read("binance", MARKET, "1h"), rest(emulator, "1h", JANUARY[0], JANUARY[5]), check_exact=True)
    assert set(store.provenance("binance", MARKET, "1h")["source"]) == {"rest"}


def test_a_slow_archive_is_retried_then_fails_by_name(emulator, tmp_path):
    store, root = _stored_before(emulator, tmp_path)
    before = store_bytes(root)
    emulator.set_faults(["timeout:endpoint=archive,delay=3,times=1"])  # one slow download: retried
    report = ingest_days(client_for(emulator), store, MARKET, "1h", JANUARY[:5], archive=archive_for(emulator, timeout=1))
    assert report.succeeded and report.archive_files == 1
    emulator.set_faults(["timeout:endpoint=archive,delay=3"])  # slow every time: fails, writes nothing
    before = store_bytes(root)
    with pytest.raises(IngestRequestFailed, match=r"archive file spot/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2025-02.zip: still failing after 2 attempts: (ReadTimeout|ConnectionError)"):
        ingest_days(client_for(emulator), store, MARKET, "1h", days_between(dt.date(2025, 2, 1), dt.date(2025, 2, 8)), archive=archive_for(emulator, timeout=1))
    assert store_bytes(root) == before


# ---- config, the asset, provenance in metadata, corrected files ------------------------------------


def test_history_source_config(tmp_path):
    write_exchange_config(tmp_path / "a", "http://127.0.0.1:1", timeframes=["1h"], markets=[MARKET])
    assert load_exchanges_config(tmp_path / "a").get("binance").effective_archive_url is None  # REST pointed elsewhere
    write_exchange_config(tmp_path / "b", "http://127.0.0.1:1", timeframes=["1h"], markets=[MARKET], archive_url="http://127.0.0.1:2")
    assert load_exchanges_config(tmp_path / "b").get("binance").effective_archive_url == "http://127.0.0.1:2"
    write_exchange_config(tmp_path / "c", "http://127.0.0.1:1", timeframes=["1h"], markets=[MARKET], archive_url="http://127.0.0.1:2", history_source="rest")
    assert load_exchanges_config(tmp_path / "c").get("binance").effective_archive_url is None
    write_exchange_config(tmp_path / "d", "http://127.0.0.1:1", timeframes=["1h"], markets=[MARKET], history_source="archive")
    with pytest.raises(ConfigError, match=r"history_source.*set archive_url too"):
        load_exchanges_config(tmp_path / "d")
    write_exchange_config(tmp_path / "e", "http://127.0.0.1:1", "okx", timeframes=["1h"], markets=[MARKET], history_source="archive")
    with pytest.raises(ConfigError, match=r"history_source.*okx has no public archive"):
        load_exchanges_config(tmp_path / "e")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "exchanges.yaml").write_text("exchanges:\n  binance:\n    timeframes: [1h]\n    markets: [BTC/USDT]\n")
    assert load_exchanges_config(tmp_path / "f").get("binance").effective_archive_url == "https://data.binance.vision"


def test_asset_records_provenance_and_a_corrected_file_is_picked_up(emulator, tmp_path, monkeypatch):
    """Through the Dagster asset: an archive file that was wrong (and later corrected under the same
    name with a new checksum) is found by `atlas verify --archive` and replaced by full_refresh and
    by `--repair`."""
    config = write_exchange_config(
        tmp_path / "config", emulator.base_url, timeframes=["1h"], markets=[MARKET], history_start=LISTED,
        archive_url=emulator.base_url, max_retries=1,
    )
    root = tmp_path / "home"
    monkeypatch.setenv("ATLAS_CONFIG", str(config))
    monkeypatch.setenv("ATLAS_HOME", str(root))
    store = CandleStore(root)
    start, end = dt.date(2025, 3, 1), dt.date(2025, 3, 6)
    path = file_path(SPOT, MARKET_ID, "1h", "2025-03")
    truth = rest(emulator, "1h", start, end)

    emulator.set_faults(["altered:endpoint=archive,file=2025-03"])  # the archive publishes a wrong file
    altered_sha = published_sha(emulator, path)
    with dg.instance_for_test() as instance:
        (run,) = run_range(config, root, instance, [MARKET], start, end, timeframes=("1h",))
        assert run.success
        events = run.result.get_asset_materialization_events()
        assert {e.materialization.metadata["source"].value for e in events} == {f"archive:{path}#{altered_sha}"}
        assert not store.read("binance", MARKET, "1h").equals(truth)
        emulator.clear_faults()  # corrected: same name, new checksum
        sha = published_sha(emulator, path)
        assert sha != altered_sha

        out = io.StringIO()
        failure = verify_archive_days(store, None, None, None, repair=False, instance=lambda: instance, out=out)
        assert f"changed archive file {path}: stored days came from sha256 {altered_sha}, the archive now publishes {sha} (5 days 2025-03-01..2025-03-05)" in out.getvalue()
        assert failure and "5 stored day(s)" in failure

        (run,) = run_range(config, root, instance, [MARKET], start, end, timeframes=("1h",), full_refresh=True)
        assert run.success
        pd.testing.assert_frame_equal(store.read("binance", MARKET, "1h"), truth, check_exact=True)
        assert set(store.provenance("binance", MARKET, "1h")["source"]) == {f"archive:{path}#{sha}"}

        emulator.set_faults(["altered:endpoint=archive,file=2025-03"])
        (run,) = run_range(config, root, instance, [MARKET], start, end, timeframes=("1h",), full_refresh=True)
        emulator.clear_faults()
        assert not store.read("binance", MARKET, "1h").equals(truth)
        out = io.StringIO()
        assert verify_archive_days(store, "binance", MARKET, "1h", repair=True, instance=lambda: instance, out=out) is None, out.getvalue()
        pd.testing.assert_frame_equal(store.read("binance", MARKET, "1h"), truth, check_exact=True)
        assert set(store.provenance("binance", MARKET, "1h")["source"]) == {f"archive:{path}#{sha}"}
        out = io.StringIO()
        assert verify_archive_days(store, None, None, None, repair=False, instance=lambda: instance, out=out) is None
        assert "1 archive file(s) checked, every stored day matches" in out.getvalue()


def test_store_keeps_each_days_source_across_rewrites(tmp_path):
    """Provenance lives in the footer beside each day: rewriting one day of a file keeps the others'."""
    store = CandleStore(tmp_path)
    frame = lambda day: pd.DataFrame(  # noqa: E731 - one candle at the day's start
        {"timestamp": [day_start_ms(day)], "open": [1.0], "high": [2.0], "low": [0.5], "close": [1.5], "volume": [3.0]}
    )
    d1, d2, d3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)
    archive = "archive:spot/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2024-03.zip#" + "a" * 64
    store.write_days("binance", MARKET, "1h", {d1: frame(d1), d2: frame(d2)}, complete=True, sources=archive)
    store.write_days("binance", MARKET, "1h", {d2: frame(d2), d3: frame(d3)}, complete=True, sources={d2: "rest", d3: "rest"})
    store.write_day("binance", MARKET, "1h", dt.date(2024, 3, 4), frame(dt.date(2024, 3, 4)), complete=True)
    assert store.provenance("binance", MARKET, "1h").values.tolist() == [
        [d1, archive], [d2, "rest"], [d3, "rest"], [dt.date(2024, 3, 4), None]
    ]
    assert store.day_status("binance", MARKET, "1h", d1).source == archive
    assert store.verify() == []
    with pytest.raises(ValueError, match="source must be a non-empty string"):
        store.write_days("binance", MARKET, "1h", {d1: frame(d1)}, complete=True, sources={d1: ""})
