"""Compatibility tests pinning ``CandleStore``, the cache API shared by data collection and backtests.

Real Parquet files under ``tmp_path`` and, where the behaviour must not depend on the backend, the
same checks against an fsspec ``memory://`` root.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import atlas_pipeline.market_data.store as store_module
from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.candles import (
    CANDLE_COLUMNS,
    DAY_MS,
    day_start_ms,
    empty_candles,
    split_by_day,
    timeframe_ms,
)
from atlas_pipeline.market_data.store import DayStatus, SeriesKey

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "candles"
EX, SYM, TF = "binance", "BTC/USDT", "1h"
D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)


def candles(start: dt.date | str, periods: int, timeframe: str = TF, seed: int = 0) -> pd.DataFrame:
    """``periods`` valid candles from ``start`` on the timeframe grid; prices differ per seed."""
    first = day_start_ms(start) if isinstance(start, dt.date) else int(pd.Timestamp(start, tz="UTC").value // 10**6)
    ts = first + timeframe_ms(timeframe) * np.arange(periods, dtype=np.int64)
    close = 100.0 + seed + np.arange(periods, dtype=np.float64)
    return pd.DataFrame(
        {"timestamp": ts, "open": close - 0.5, "high": close + 1, "low": close - 1, "close": close, "volume": close / 10}
    )


def day_candles(day: dt.date, timeframe: str = TF, seed: int = 0) -> pd.DataFrame:
    return candles(day, DAY_MS // timeframe_ms(timeframe), timeframe, seed)


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> CandleStore:
    """A store on a local folder, and the same API on an fsspec memory:// root."""
    if request.param == "local":
        yield CandleStore(tmp_path / "atlas")
        return
    root = f"memory://atlas-test-{uuid.uuid4().hex}"
    yield CandleStore(root)
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def names_in(store: CandleStore, timeframe: str = TF, symbol: str = "BTC-USDT") -> list[str]:
    """Every file name (temp files included) in a series folder, on either backend."""
    fs, path = fsspec.core.url_to_fs(store.root)
    folder = f"{path}/ohlcv/{EX}/{symbol}/{timeframe}"
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)) if fs.exists(folder) else []


# ---- round trips -----------------------------------------------------------------------------


def real_eth_btc() -> pd.DataFrame:
    frame = pd.read_parquet(DATA / "binance_ETH-BTC_5m.parquet")
    frame["timestamp"] = frame["timestamp"].dt.as_unit("ms").astype("int64")
    return frame.loc[:, list(CANDLE_COLUMNS)]


def test_real_candles_round_trip(store):
    frame = real_eth_btc()
    days = split_by_day(frame)
    store.write_days(EX, "ETH/BTC", "5m", days, complete=True)

    pd.testing.assert_frame_equal(store.read(EX, "ETH/BTC", "5m"), frame)
    for day, expected in days.items():
        pd.testing.assert_frame_equal(store.read_day(EX, "ETH/BTC", "5m", day), expected)
    cov = store.coverage(EX, "ETH/BTC", "5m")
    assert cov["day"].tolist() == sorted(days)
    assert cov["rows"].sum() == len(frame)
    assert cov["first_timestamp"].iloc[0] == frame["timestamp"].iloc[0]  # the listing day is partial
    assert cov["last_timestamp"].iloc[-1] == frame["timestamp"].iloc[-1]


def test_read_accepts_every_time_form_and_is_half_open(store):
    frame = candles("2023-12-31", 72)  # three days across a year (= file) boundary
    store.write_days(EX, SYM, TF, split_by_day(frame), complete=True)
    jan1 = frame[(frame.timestamp >= day_start_ms(D1)) & (frame.timestamp < day_start_ms(D2))].reset_index(drop=True)
    for start, end in [
        (D1, D2),
        ("2024-01-01", "2024-01-02"),
        (dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)),
        (pd.Timestamp("2024-01-01 01:00", tz="Europe/Paris"), pd.Timestamp("2024-01-02", tz="UTC")),
        (day_start_ms(D1), day_start_ms(D2)),
    ]:
        pd.testing.assert_frame_equal(store.read(EX, SYM, TF, start, end), jan1)
    # Unaligned bounds cut inside files: start is inclusive, end exclusive.
    got = store.read(EX, SYM, TF, "2023-12-31 23:00", "2024-01-01 02:00")
    assert got["timestamp"].tolist() == [day_start_ms(D1) + h * 3_600_000 for h in (-1, 0, 1)]
    pd.testing.assert_frame_equal(store.read(EX, SYM, TF, start=D2), frame.iloc[48:].reset_index(drop=True))
    pd.testing.assert_frame_equal(store.read(EX, SYM, TF, end=D1), frame.iloc[:24].reset_index(drop=True))


def test_read_of_nothing_is_an_empty_candle_frame(store):
    pd.testing.assert_frame_equal(store.read(EX, SYM, TF), empty_candles())
    store.write_day(EX, SYM, TF, D1, day_candles(D1), complete=True)
    for start, end in [(D2, D3), ("2019-01-01", "2019-02-01"), (D2, D1)]:
        got = store.read(EX, SYM, TF, start, end)
        pd.testing.assert_frame_equal(got, empty_candles())


def test_files_are_compacted_per_period_and_read_across_them(store):
    """1h -> a file per year, 1m -> a file per month, 1s -> a file per day; reads span them."""
    store.write_days(EX, SYM, "1h", split_by_day(candles("2023-12-31", 48, "1h")), complete=True)
    store.write_days(EX, SYM, "1m", split_by_day(candles("2024-01-31", 2 * 1440, "1m")), complete=True)
    store.write_days(EX, SYM, "1s", split_by_day(candles("2024-01-31 23:59:50", 20, "1s")), complete=True)
    assert [n for n in names_in(store, "1h") if n.endswith(".parquet")] == ["2023.parquet", "2024.parquet"]
    assert [n for n in names_in(store, "1m") if n.endswith(".parquet")] == ["2024-01.parquet", "2024-02.parquet"]
    assert [n for n in names_in(store, "1s") if n.endswith(".parquet")] == ["2024-01-31.parquet", "2024-02-01.parquet"]
    assert len(store.read(EX, SYM, "1m", "2024-01-31 23:00", "2024-02-01 01:00")) == 120
    assert len(store.read(EX, SYM, "1s")) == 20


def test_write_days_rewrites_each_file_once(store, monkeypatch):
    writes = []
    real = store_module._write_parquet
    monkeypatch.setattr(store_module, "_write_parquet", lambda table, where: (writes.append(table.num_rows), real(table, where)))
    days = split_by_day(candles("2022-01-01", 3 * 365 * 24))  # 2022, 2023, 2024 (until 31 Dec)
    store.write_days(EX, SYM, TF, days, complete=True)
    assert len(writes) == 3
    assert sum(writes) == 3 * 365 * 24


# ---- day semantics ---------------------------------------------------------------------------


def test_write_day_replaces_only_that_day(store):
    store.write_days(EX, SYM, TF, {d: day_candles(d, seed=1) for d in (D1, D2, D3)}, complete=True)
    replacement = day_candles(D2, seed=2).iloc[[0, 5, 9]].reset_index(drop=True)
    store.write_day(EX, SYM, TF, D2, replacement, complete=True)

    pd.testing.assert_frame_equal(store.read_day(EX, SYM, TF, D2), replacement)
    pd.testing.assert_frame_equal(store.read_day(EX, SYM, TF, D1), day_candles(D1, seed=1))
    pd.testing.assert_frame_equal(store.read_day(EX, SYM, TF, D3), day_candles(D3, seed=1))
    assert len(store.read(EX, SYM, TF)) == 24 + 3 + 24
    assert store.coverage(EX, SYM, TF)["rows"].tolist() == [24, 3, 24]


def test_days_written_out_of_order_read_sorted(store):
    store.write_day(EX, SYM, TF, D3, day_candles(D3), complete=True)
    store.write_day(EX, SYM, TF, D1, day_candles(D1), complete=True)
    store.write_days(EX, SYM, TF, {D2: day_candles(D2)}, complete=True)
    ts = store.read(EX, SYM, TF)["timestamp"]
    assert ts.is_monotonic_increasing and ts.is_unique and len(ts) == 72


def test_empty_day_is_stored_and_distinct_from_never_stored(store):
    assert store.read_day(EX, SYM, TF, D1) is None
    assert store.day_status(EX, SYM, TF, D1) is None
    store.write_day(EX, SYM, TF, D1, empty_candles(), complete=True)

    got = store.read_day(EX, SYM, TF, D1)
    pd.testing.assert_frame_equal(got, empty_candles())
    assert store.read_day(EX, SYM, TF, D2) is None
    assert store.day_status(EX, SYM, TF, D1) == DayStatus(D1, 0, None, None, True)
    cov = store.coverage(EX, SYM, TF)
    assert cov["day"].tolist() == [D1] and cov["rows"].tolist() == [0]
    assert cov["first_timestamp"].isna().all() and cov["last_timestamp"].isna().all()
    # A day with candles can become empty (and back) by rewriting it.
    store.write_day(EX, SYM, TF, D2, day_candles(D2), complete=True)
    store.write_day(EX, SYM, TF, D2, empty_candles(), complete=True)
    assert store.read(EX, SYM, TF).empty
    assert store.day_status(EX, SYM, TF, D2).rows == 0


def test_complete_flags_and_completing_a_partial_day(store):
    store.write_days(EX, SYM, TF, {D1: day_candles(D1), D2: day_candles(D2).iloc[:5]}, complete={D1: True, D2: False})
    assert store.day_status(EX, SYM, TF, D2) == DayStatus(
        D2, 5, day_start_ms(D2), day_start_ms(D2) + 4 * 3_600_000, False
    )
    assert store.coverage(EX, SYM, TF)["complete"].tolist() == [True, False]
    # The data plane merges the delta fetch and re-writes the day as complete.
    merged = pd.concat([store.read_day(EX, SYM, TF, D2), day_candles(D2).iloc[5:]], ignore_index=True)
    store.write_day(EX, SYM, TF, D2, merged, complete=True)
    assert store.day_status(EX, SYM, TF, D2) == DayStatus(
        D2, 24, day_start_ms(D2), day_start_ms(D2) + 23 * 3_600_000, True
    )
    with pytest.raises(ValueError, match="2024-01-03: no complete flag"):
        store.write_days(EX, SYM, TF, {D3: day_candles(D3)}, complete={D1: True})


def test_coverage_types_and_range(store):
    store.write_days(EX, SYM, TF, split_by_day(candles("2023-12-30", 24 * 4)), complete=True)
    store.write_day(EX, SYM, TF, D3, empty_candles(), complete=False)
    cov = store.coverage(EX, SYM, TF)
    assert list(cov.columns) == ["day", "rows", "first_timestamp", "last_timestamp", "complete"]
    assert [str(t) for t in cov.dtypes] == ["object", "int64", "Int64", "Int64", "bool"]
    assert all(type(d) is dt.date for d in cov["day"])
    assert cov["day"].tolist() == [dt.date(2023, 12, 30), dt.date(2023, 12, 31), D1, D2, D3]
    assert cov["complete"].tolist() == [True, True, True, True, False]
    assert store.coverage(EX, SYM, TF, "2023-12-31", D2)["day"].tolist() == [dt.date(2023, 12, 31), D1]
    # An unaligned range covers the days it overlaps.
    assert store.coverage(EX, SYM, TF, "2024-01-01 12:00", "2024-01-02 01:00")["day"].tolist() == [D1, D2]
    empty = store.coverage(EX, SYM, "4h")
    assert empty.empty and list(empty.columns) == list(cov.columns) and str(empty["rows"].dtype) == "int64"


def test_coverage_reads_footers_not_data(tmp_path, monkeypatch):
    store = CandleStore(tmp_path)
    store.write_days(EX, SYM, TF, split_by_day(candles("2023-12-30", 24 * 4)), complete=True)

    def no_data(*args, **kwargs):
        raise AssertionError("coverage must not read candle data")

    monkeypatch.setattr(pq, "read_table", no_data)
    assert store.coverage(EX, SYM, TF)["rows"].tolist() == [24, 24, 24, 24]
    assert store.day_status(EX, SYM, TF, D2).rows == 24


def test_first_candle_cache_and_series(store):
    assert store.first_candle(EX, SYM, TF) is None
    store.set_first_candle(EX, SYM, TF, 1_502_942_400_000)
    assert store.series() == []  # a cached first candle is not stored data
    store.write_day(EX, SYM, TF, D1, day_candles(D1), complete=True)
    store.write_day(EX, "ETH/USDT:USDT", "1m", D1, empty_candles(), complete=True)
    store.write_day("kraken", SYM, TF, D1, empty_candles(), complete=True)
    assert CandleStore(store.root).first_candle(EX, SYM, TF) == 1_502_942_400_000
    assert store.first_candle(EX, SYM, "1m") is None

    assert store.series() == [
        SeriesKey(EX, "BTC/USDT", "1h"),
        SeriesKey(EX, "ETH/USDT:USDT", "1m"),
        SeriesKey("kraken", "BTC/USDT", "1h"),
    ]
    assert store.series("kraken") == [("kraken", "BTC/USDT", "1h")]
    assert store.series("bybit") == []
    # Path keys are lossy: a second symbol with the same key must not mix into the series.
    with pytest.raises(ValueError, match="BTC-USDT"):
        store.write_day(EX, "BTC-USDT", TF, D2, day_candles(D2), complete=True)
    assert store.read_day(EX, SYM, TF, D2) is None


def test_root_default_and_urls(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "home"))
    assert CandleStore().root == str(tmp_path / "home")
    monkeypatch.delenv("ATLAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert CandleStore().root == str(tmp_path / "user" / ".atlas")
    url = CandleStore(f"file://{tmp_path}/viaurl")
    url.write_day(EX, SYM, TF, D1, day_candles(D1), complete=True)
    assert (tmp_path / "viaurl" / "ohlcv" / EX / "BTC-USDT" / TF / "2024.parquet").is_file()
    assert len(CandleStore(tmp_path / "viaurl").read(EX, SYM, TF)) == 24


# ---- the store's own input invariants ----------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns="volume"), "columns must be exactly"),
        (lambda f: f.assign(extra=1.0), "columns must be exactly"),
        (lambda f: f.astype({"timestamp": "Int64"}), "timestamp is Int64, expected int64"),
        (lambda f: f.astype({"timestamp": "float64", "close": "float32"}), "timestamp is float64.*close is float32"),
        (lambda f: f.assign(timestamp=pd.to_datetime(f.timestamp, unit="ms", utc=True)), "timestamp is datetime64"),
        (lambda f: f.assign(timestamp=f.timestamp + DAY_MS), r"24 timestamp\(s\) outside the day"),
        (lambda f: f.assign(timestamp=f.timestamp - 1), r"1 timestamp\(s\) outside the day .* row 0"),
        (lambda f: f.iloc[[0, 2, 1]], "strictly increasing, row 2"),
        (lambda f: f.iloc[[0, 1, 1, 2]], "strictly increasing, row 2"),
    ],
)
def test_bad_candles_are_refused_naming_series_and_day(store, mutate, message):
    store.write_day(EX, SYM, TF, D2, day_candles(D2), complete=True)
    with pytest.raises(ValueError, match=message) as error:
        store.write_day(EX, SYM, TF, D2, mutate(day_candles(D2, seed=7)), complete=True)
    assert "binance BTC/USDT 1h day 2024-01-02" in str(error.value)
    pd.testing.assert_frame_equal(store.read_day(EX, SYM, TF, D2), day_candles(D2))


def test_one_bad_day_writes_nothing(store):
    bad = day_candles(D3).iloc[::-1]
    with pytest.raises(ValueError, match="2024-01-03"):
        store.write_days(EX, SYM, TF, {D1: day_candles(D1), D3: bad}, complete=True)
    assert store.read_day(EX, SYM, TF, D1) is None and store.series() == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.write_day("bin/ance", SYM, TF, D1, empty_candles(), complete=True), "exchange 'bin/ance'"),
        (lambda s: s.write_day("..", SYM, TF, D1, empty_candles(), complete=True), "exchange '..'"),
        (lambda s: s.read(EX, SYM, "1h/../x"), "timeframe '1h/../x'"),
        (lambda s: s.coverage(EX, SYM, "7m"), "'7m' does not divide a UTC day"),
        (lambda s: s.write_day(EX, SYM, TF, "2024-01-01 05:00", empty_candles(), complete=True), "not a UTC day"),
        (lambda s: s.write_day(EX, SYM, TF, D1, empty_candles(), complete=1), "complete must be a bool"),
        (lambda s: s.write_day(EX, SYM, TF, D1, pd.DataFrame(), complete=True), "columns must be exactly"),
        (lambda s: s.set_first_candle(EX, SYM, TF, 1.5e12), "first candle must be int ms"),
    ],
)
def test_bad_arguments_are_refused(store, call, message):
    with pytest.raises(ValueError, match=message):
        call(store)
    assert store.series() == []


def test_day_arguments_accept_midnight_forms(store):
    store.write_day(EX, SYM, TF, "2024-01-02", day_candles(D2), complete=True)
    store.write_day(EX, SYM, TF, pd.Timestamp("2024-01-03", tz="UTC"), day_candles(D3), complete=True)
    assert store.day_status(EX, SYM, TF, day_start_ms(D2)).rows == 24
    assert len(store.read_day(EX, SYM, TF, dt.datetime(2024, 1, 3))) == 24


# ---- atomicity and concurrency -------------------------------------------------------------------


def _crash_while_writing(table, where):
    """Write part of a file, then die: what a crash (or a full disk) mid-write looks like."""
    if hasattr(where, "write"):
        where.write(b"PAR1 half a file")
    raise OSError("simulated crash mid-write")


@pytest.mark.parametrize("failure", ["parquet writer", "rename"])
def test_crash_mid_write_keeps_the_old_file_and_leaves_no_temp_files(store, monkeypatch, failure):
    store.write_days(EX, SYM, TF, {D1: day_candles(D1), D2: empty_candles()}, complete=True)
    fs, path = fsspec.core.url_to_fs(store.root)
    data_file = f"{path}/ohlcv/{EX}/BTC-USDT/{TF}/2024.parquet"
    before = fs.cat_file(data_file)

    if failure == "parquet writer":
        monkeypatch.setattr(store_module, "_write_parquet", _crash_while_writing)
    elif isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        monkeypatch.setattr(store_module.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    else:
        monkeypatch.setattr(fs, "mv", lambda *a, **k: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        store.write_days(EX, SYM, TF, {D1: day_candles(D1, seed=9), D3: day_candles(D3)}, complete=True)
    monkeypatch.undo()

    assert fs.cat_file(data_file) == before
    assert names_in(store) in (["2024.parquet", "series.json"], [".lock", "2024.parquet", "series.json"])
    pd.testing.assert_frame_equal(store.read_day(EX, SYM, TF, D1), day_candles(D1))
    assert store.read_day(EX, SYM, TF, D2).empty and store.read_day(EX, SYM, TF, D3) is None


def _write_days_one_by_one(root: str, days: list[dt.date]) -> None:
    store = CandleStore(root)
    for day in days:
        store.write_day(EX, SYM, TF, day, day_candles(day), complete=True)


def test_concurrent_processes_do_not_lose_each_others_days(tmp_path):
    """Two processes rewriting the same year file day by day: every day of both must survive."""
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(60)]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_days_one_by_one, args=(str(tmp_path), days[i::2])) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = CandleStore(tmp_path)
    assert store.coverage(EX, SYM, TF)["day"].tolist() == days
    assert len(store.read(EX, SYM, TF)) == 60 * 24


def test_concurrent_threads_do_not_lose_each_others_days(store):
    import threading

    days = [dt.date(2024, 3, 1) + dt.timedelta(days=i) for i in range(40)]
    threads = [threading.Thread(target=_write_days_one_by_one, args=(store.root, days[i::2])) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.coverage(EX, SYM, TF)["day"].tolist() == days
