"""Store integrity and repair (issue 8 part 3): every defect reproduced through real files.

Flipped bytes, truncated files, foreign columns, stray files and a broken ``series.json`` must never
read back as wrong candles: reads return exactly what was stored or raise ``CorruptStoreFile``
naming the file, ``verify`` reports it, and ingest and ``atlas verify --repair`` fetch the days again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.candles import DAY_MS, day_start_ms, split_by_day
from atlas_pipeline.market_data.emulator import FileCandleSource
from atlas_pipeline.market_data.store import CorruptStoreFile
from atlas_pipeline.market_data.candles import consecutive_ranges
from atlas_pipeline_tests.support import (
    SHARED_CANDLES,
    assert_frames_equal,
    between,
    needs_shared_candles,
    run_range,
    shared_candles,
    write_exchange_config,
)

pytestmark = needs_shared_candles

EX, SYM, TF = "binance", "ETH/BTC", "5m"
D = dt.date


def series_dir(root: Path, symbol_key: str = "ETH-BTC", timeframe: str = TF) -> Path:
    return root / "ohlcv" / EX / symbol_key / timeframe


def stored_real_year(root: Path) -> tuple[CandleStore, Path, pd.DataFrame]:
    """All real ETH/BTC 5m candles (20 days of 2018) in one year file."""
    store = CandleStore(root)
    frame = shared_candles("binance_ETH-BTC_5m")
    store.write_days(EX, SYM, TF, split_by_day(frame), complete=True)
    return store, series_dir(root) / "2018.parquet", frame


def flip(path: Path, position: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


def outcome(call, path: Path, expected) -> str:
    """'same' if the read returned exactly ``expected``, 'caught' if it raised naming ``path``."""
    try:
        got = call()
    except CorruptStoreFile as error:
        assert error.path == str(path) and str(path) in str(error), error
        return "caught"
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected, check_exact=True)  # never wrong values
    else:
        assert got == expected
    return "same"


def test_no_flipped_byte_of_a_year_file_reads_back_as_wrong_candles(tmp_path: Path) -> None:
    store, path, frame = stored_real_year(tmp_path)
    good = path.read_bytes()
    day = D(2018, 1, 20)
    original = (store.read(EX, SYM, TF), store.read_day(EX, SYM, TF, day), store.coverage(EX, SYM, TF))
    footer = len(good) - 8 - int.from_bytes(good[-8:-4], "little")
    bookkeeping = good.index(b'{"version":2')
    rng = np.random.default_rng(8)
    positions = [int(p) for p in rng.choice(len(good), 60, replace=False)]
    # and every kind of place: magic, first data page, footer length, thrift footer, bookkeeping
    positions += [0, 3, 4, 40, footer, footer + 30, bookkeeping + 2, bookkeeping + 26, bookkeeping + 60]
    positions += [bookkeeping + 200, len(good) - 9, len(good) - 8, len(good) - 5, len(good) - 1]
    results = {"read": [], "read_day": [], "coverage": []}
    for position in positions:
        path.write_bytes(good)
        flip(path, position, int(rng.integers(1, 256)))
        results["read"].append(outcome(lambda: store.read(EX, SYM, TF), path, original[0]))
        results["read_day"].append(outcome(lambda: store.read_day(EX, SYM, TF, day), path, original[1]))
        try:
            coverage = store.coverage(EX, SYM, TF)
            pd.testing.assert_frame_equal(coverage, original[2])  # a footer-only read: data flips unseen
        except CorruptStoreFile as error:
            assert error.path == str(path)
        [problem] = store.verify()
        assert (problem.path, problem.kind) == (str(path), "corrupt")
        assert problem.days[0] <= D(2018, 1, 10) and problem.days[-1] >= D(2018, 1, 30)
    # The whole-file checksum catches every single flip, wherever it lands.
    assert results["read"] == ["caught"] * len(positions)
    assert results["read_day"] == ["caught"] * len(positions)
    path.write_bytes(good)
    assert store.verify() == []
    assert_frames_equal(store.read(EX, SYM, TF), frame)


def test_flips_are_caught_on_an_fsspec_root_too() -> None:
    root = f"memory://integrity-{uuid.uuid4().hex}"
    store = CandleStore(root)
    frame = shared_candles("binance_ETH-BTC_5m")
    store.write_days(EX, SYM, TF, split_by_day(frame), complete=True)
    fs, base = fsspec.core.url_to_fs(root)
    path = f"{base}/ohlcv/{EX}/ETH-BTC/{TF}/2018.parquet"
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0x10
    fs.pipe_file(path, bytes(data))
    with pytest.raises(CorruptStoreFile, match="checksum mismatch") as caught:
        store.read(EX, SYM, TF)
    assert caught.value.path == path
    moved = store.quarantine(path)
    assert fs.exists(moved) and not fs.exists(path)
    assert store.read_day(EX, SYM, TF, D(2018, 1, 20)) is None
    fs.rm(base, recursive=True)


def test_truncated_file_names_the_file_everywhere(tmp_path: Path) -> None:
    store, path, _ = stored_real_year(tmp_path)
    data = path.read_bytes()
    for size in (0, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:size])
        for call in (
            lambda: store.read(EX, SYM, TF),
            lambda: store.read_day(EX, SYM, TF, D(2018, 1, 20)),
            lambda: store.coverage(EX, SYM, TF),
            lambda: store.day_status(EX, SYM, TF, D(2018, 1, 20)),
        ):
            with pytest.raises(CorruptStoreFile) as caught:
                call()
            assert caught.value.path == str(path) and str(path) in str(caught.value)
        [problem] = store.verify()
        assert problem.kind == "corrupt" and problem.path == str(path)
        assert problem.days[0] == D(2018, 1, 1) and problem.days[-1] == D(2018, 12, 31)  # bookkeeping lost
    error = pickle.loads(pickle.dumps(caught.value))
    assert (error.path, error.reason) == (caught.value.path, caught.value.reason)


def test_write_over_a_corrupt_file_quarantines_it_and_writes(tmp_path: Path, caplog) -> None:
    store, path, frame = stored_real_year(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    day = D(2018, 2, 1)
    new_day = frame.iloc[:288].assign(timestamp=day_start_ms(day) + np.arange(288, dtype=np.int64) * 300_000)
    with caplog.at_level(logging.WARNING, logger="atlas_pipeline.market_data.store"):
        store.write_day(EX, SYM, TF, day, new_day, complete=True)
    assert str(path) in caplog.text and "quarantined" in caplog.text
    assert_frames_equal(store.read(EX, SYM, TF), new_day)
    assert store.read_day(EX, SYM, TF, D(2018, 1, 20)) is None  # the bad file's days: not stored
    [kept] = list((tmp_path / "quarantine" / "ohlcv" / EX / "ETH-BTC" / TF).iterdir())
    assert kept.name.startswith("2018.parquet.2") and kept.name.endswith("Z")  # named with when
    assert store.verify() == []


def legacy_file(path: Path, frame: pd.DataFrame, days: dict | None = None, **columns) -> None:
    """A period file as stores wrote them before checksums (bookkeeping version 1)."""
    if days is None:
        days = {
            d.isoformat(): [len(f), int(f.timestamp.iloc[0]), int(f.timestamp.iloc[-1]), True]
            for d, f in split_by_day(frame).items()
        }
    table = pa.Table.from_pandas(frame.assign(**columns), preserve_index=False)
    meta = json.dumps({"version": 1, "days": days}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({b"atlas": meta}), path)


def test_files_from_before_checksums_still_read_and_get_one(tmp_path: Path) -> None:
    frame = shared_candles("binance_ETH-BTC_5m")
    path = series_dir(tmp_path) / "2018.parquet"
    legacy_file(path, frame)
    (path.parent / "series.json").write_text(json.dumps({"symbol": SYM, "first_candle": None}))
    store = CandleStore(tmp_path)
    assert_frames_equal(store.read(EX, SYM, TF), frame)
    assert len(store.coverage(EX, SYM, TF)) == 21
    assert sorted(p.kind for p in store.verify()) == ["unverified", "unverified"]
    assert store.add_checksum(str(path)) and store.add_checksum(str(path.parent / "series.json"))
    assert store.verify() == [] and not store.add_checksum(str(path))
    assert_frames_equal(store.read(EX, SYM, TF), frame)
    assert store.series() == [(EX, SYM, TF)]


def _shuffled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[::-1].reset_index(drop=True)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f, p: legacy_file(p, f, volume=f.volume.astype("float32")), "volume: float"),
        (lambda f, p: legacy_file(p, f, extra=1.0), "extra"),
        (lambda f, p: legacy_file(p, f.drop(columns="volume")), "columns are"),
        (lambda f, p: legacy_file(p, f, timestamp=f.timestamp.astype("float64")), "timestamp: double"),
        (lambda f, p: legacy_file(p, f, close=f.close.where(f.index != 7)), "null values"),
        (lambda f, p: legacy_file(p, _shuffled(f), days=_days_of(f)), "not strictly increasing"),
        (lambda f, p: legacy_file(p, f.assign(timestamp=f.timestamp - 40 * DAY_MS), days=_days_of(f)), "rows"),
        (lambda f, p: legacy_file(p, f, days={**_days_of(f), "2018-01-12": [5, None, None, True]}), "bookkeeping"),
        (lambda f, p: legacy_file(p, f, days={k: v for k, v in _days_of(f).items() if k != "2018-01-12"}), "bookkeeping counts"),
        (lambda f, p: legacy_file(p, f, days={**_days_of(f), "2019-01-01": [0, None, None, True]}), "outside the file's period"),
        (lambda f, p: p.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1"), "unreadable"),
    ],
    ids=["float32", "extra-column", "missing-column", "float-timestamps", "nulls", "unsorted", "outside-period",
         "bookkeeping-rows", "bookkeeping-missing-day", "bookkeeping-outside", "garbage"],
)
def test_files_breaking_the_frame_contract_are_refused(tmp_path: Path, damage, reason: str) -> None:
    frame = shared_candles("binance_ETH-BTC_5m")
    path = series_dir(tmp_path) / "2018.parquet"
    path.parent.mkdir(parents=True)
    damage(frame, path)
    store = CandleStore(tmp_path)
    with pytest.raises(CorruptStoreFile, match=reason) as caught:
        store.read(EX, SYM, TF)
    assert caught.value.path == str(path)
    [problem] = store.verify()
    assert problem.kind == "corrupt" and problem.path == str(path) and re.search(reason, problem.reason)


def _days_of(frame: pd.DataFrame) -> dict:
    return {
        d.isoformat(): [len(f), int(f.timestamp.iloc[0]), int(f.timestamp.iloc[-1]), True]
        for d, f in split_by_day(frame).items()
    }


def test_a_stray_month_file_beside_year_files_is_ignored_and_reported(tmp_path: Path) -> None:
    store, path, frame = stored_real_year(tmp_path)
    stray = path.parent / "2018-01.parquet"
    stray.write_bytes(path.read_bytes())  # e.g. a hand copy: would double every row if merged
    (path.parent / "notes.txt").write_text("junk")
    (path.parent / "2018-13.parquet").write_bytes(b"junk")
    (path.parent / ".2018.parquet.abc.tmp").write_bytes(b"a killed writer's temp file")
    (path.parent / "2019.parquet").mkdir()  # a folder with a period file's name
    assert_frames_equal(store.read(EX, SYM, TF), frame)
    assert len(store.coverage(EX, SYM, TF)) == 21
    problems = store.verify()
    assert sorted((Path(p.path).name, p.kind) for p in problems) == [
        ("2018-01.parquet", "stray"), ("2018-13.parquet", "stray"), ("2019.parquet", "stray"), ("notes.txt", "stray"),
    ]
    assert all("reads ignore it" in p.reason and p.days == () for p in problems)
    for problem in problems:
        store.quarantine(problem.path)
    assert store.verify() == [] and not stray.exists()


def test_a_truncated_series_json_breaks_nothing_else(tmp_path: Path, caplog) -> None:
    store, path, frame = stored_real_year(tmp_path)
    store.set_first_candle(EX, SYM, TF, int(frame.timestamp.iloc[0]))
    store.write_days(EX, "ADA/BTC", TF, split_by_day(shared_candles("binance_ADA-BTC_5m")), complete=True)
    info = path.parent / "series.json"
    info.write_text(info.read_text()[:10])
    with caplog.at_level(logging.WARNING, logger="atlas_pipeline.market_data.store"):
        assert store.series(EX) == [(EX, "ADA/BTC", TF)]  # reported and skipped, not the whole exchange
        assert store.first_candle(EX, SYM, TF) is None  # only a cache: unknown
    assert caplog.text.count(str(info)) == 2
    assert_frames_equal(store.read(EX, SYM, TF), frame)
    [problem] = store.verify()
    assert (problem.path, problem.kind, problem.days) == (str(info), "corrupt", ())
    assert "not JSON" in problem.reason

    store.set_first_candle(EX, SYM, TF, 123)  # a write repairs it (the bad one is kept aside)
    assert store.first_candle(EX, SYM, TF) == 123 and store.verify() == []
    assert store.series(EX) == [(EX, "ADA/BTC", TF), (EX, SYM, TF)]
    assert len(list((tmp_path / "quarantine").rglob("series.json.*"))) == 1

    info.write_text(info.read_text().replace("123", "124"))  # a flipped digit in the cache
    with pytest.raises(CorruptStoreFile, match="crc"):
        store._series_info(str(info.parent))
    assert store.first_candle(EX, SYM, TF) is None


@pytest.mark.parametrize("full_refresh", [True, False], ids=["full-refresh", "ingest"])
def test_ingest_refetches_the_days_of_a_truncated_file(tmp_path: Path, emulator_factory, full_refresh: bool) -> None:
    server = emulator_factory(FileCandleSource(SHARED_CANDLES))
    config = write_exchange_config(tmp_path / "config", server.base_url)
    store_root = tmp_path / "store"
    start, end = D(2018, 1, 12), D(2018, 1, 15)
    expected = between(shared_candles("binance_ETH-BTC_5m"), start, end)
    with dg.instance_for_test() as instance:
        [run] = run_range(config, store_root, instance, [SYM], start, end)
        assert run.success
        path = series_dir(store_root) / "2018.parquet"
        path.write_bytes(path.read_bytes()[:5000])
        store = CandleStore(store_root)
        with pytest.raises(CorruptStoreFile, match="2018.parquet"):
            store.read(EX, SYM, TF, start, end)
        [rerun] = run_range(config, store_root, instance, [SYM], start, end, full_refresh=full_refresh)
        assert rerun.success, rerun.failure_reason()
        logs = "\n".join(r.user_message for r in instance.all_logs(rerun.result.run_id))
    assert f"{path}: not a whole Parquet file" in logs
    assert_frames_equal(store.read(EX, SYM, TF, start, end), expected)
    assert store.verify() == [] and len(list((store_root / "quarantine").rglob("2018.parquet.*"))) == 1


def test_ingest_over_a_corrupt_file_restores_its_other_days_too(tmp_path: Path, emulator_factory) -> None:
    """Quarantining a file must not turn the days it held outside the run into a silent gap."""
    server = emulator_factory(FileCandleSource(SHARED_CANDLES))
    config = write_exchange_config(tmp_path / "config", server.base_url)
    store_root = tmp_path / "store"
    start, end = D(2018, 1, 12), D(2018, 1, 20)
    with dg.instance_for_test() as instance:
        [run] = run_range(config, store_root, instance, [SYM], start, end)
        assert run.success
        path = series_dir(store_root) / "2018.parquet"
        flip(path, 4000, 0x10)  # a data page: the bookkeeping still says which days the file held
        [rerun] = run_range(config, store_root, instance, [SYM], D(2018, 1, 14), D(2018, 1, 16))
        assert rerun.success, rerun.failure_reason()
        partitions = {event.partition for event in rerun.result.get_asset_materialization_events()}
        logs = "\n".join(r.user_message for r in instance.all_logs(rerun.result.run_id))
    assert f"{path}: " in logs and "and 6 more it held" in logs
    assert partitions == {"2018-01-14|ETH-BTC", "2018-01-15|ETH-BTC"}  # only the run's partitions
    store = CandleStore(store_root)
    assert_frames_equal(store.read(EX, SYM, TF, start, end), between(shared_candles("binance_ETH-BTC_5m"), start, end))
    assert list(store.coverage(EX, SYM, TF)["day"]) == [start + dt.timedelta(days=i) for i in range(8)]
    assert store.verify() == []


def atlas(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atlas_pipeline.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )


def test_atlas_verify_repair_quarantines_and_refetches_exactly_the_affected_days(tmp_path: Path, emulator_factory) -> None:
    server = emulator_factory(FileCandleSource(SHARED_CANDLES))
    config = write_exchange_config(tmp_path / "config", server.base_url)
    home = tmp_path / "home"
    env = {"ATLAS_CONFIG": str(config), "ATLAS_HOME": str(home), "DAGSTER_HOME": ""}
    start, end = D(2018, 1, 12), D(2018, 1, 15)
    fetched = atlas("fetch", "--exchange", EX, "--start", str(start), "--end", str(end), env=env)
    assert fetched.returncode == 0, fetched.stderr
    healthy = atlas("verify", env=env)
    assert healthy.returncode == 0 and "no problems" in healthy.stdout, healthy.stderr

    eth, ada = series_dir(home) / "2018.parquet", series_dir(home, "ADA-BTC") / "2018.parquet"
    flip(eth, 5000, 0x04)  # inside the data pages: the footer's bookkeeping still names the days
    (ada.parent / "2018-01.parquet").write_bytes(ada.read_bytes())
    found = atlas("verify", env=env)
    assert found.returncode == 1, found.stderr
    assert f"corrupt {eth}: checksum mismatch" in found.stdout and "(3 days 2018-01-12..2018-01-14)" in found.stdout
    assert f"stray {ada.parent / '2018-01.parquet'}" in found.stdout
    assert "--repair" in found.stderr.strip().splitlines()[-2]  # then where the full log is

    repaired = atlas("verify", "--repair", env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "refetch: binance ETH/BTC 5m 2018-01-12..2018-01-15" in repaired.stdout
    store = CandleStore(home)
    for symbol, name in ((SYM, "ETH-BTC"), ("ADA/BTC", "ADA-BTC")):
        assert_frames_equal(store.read(EX, symbol, TF), between(shared_candles(f"binance_{name}_5m"), start, end))
    assert list(store.coverage(EX, SYM, TF)["day"]) == [D(2018, 1, 12), D(2018, 1, 13), D(2018, 1, 14)]
    assert sorted(p.name.split(".parquet")[0] for p in (home / "quarantine").rglob("*.parquet.*")) == ["2018", "2018-01"]
    assert atlas("verify", env=env).returncode == 0


def test_atlas_verify_repair_restores_a_truncated_file(tmp_path: Path, emulator_factory) -> None:
    server = emulator_factory(FileCandleSource(SHARED_CANDLES))
    market = "UNITTEST/BTC"  # real 1m candles, 2017-11-04..14: month files
    config = write_exchange_config(
        tmp_path / "config", server.base_url, markets=[market], timeframes=["1m"], history_start="2017-11-03"
    )
    home = tmp_path / "home"
    env = {"ATLAS_CONFIG": str(config), "ATLAS_HOME": str(home), "DAGSTER_HOME": ""}
    fetched = atlas("fetch", "--exchange", EX, "--start", "2017-11-06", "--end", "2017-11-09", env=env)
    assert fetched.returncode == 0, fetched.stderr
    path = series_dir(home, "UNITTEST-BTC", "1m") / "2017-11.parquet"
    path.write_bytes(path.read_bytes()[:-50])
    found = atlas("verify", "--exchange", EX, "--symbol", market, "--timeframe", "1m", env=env)
    assert found.returncode == 1 and f"corrupt {path}: not a whole Parquet file" in found.stdout
    assert "(30 days 2017-11-01..2017-11-30)" in found.stdout  # the footer is gone: the whole month

    repaired = atlas("verify", "--repair", env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"refetch: binance {market} 1m 2017-11-03..2017-12-01" in repaired.stdout  # clipped to history_start
    source = shared_candles("binance_UNITTEST-BTC_1m")
    assert_frames_equal(CandleStore(home).read(EX, market, "1m"), source)  # every source candle, exactly
    bad_args = atlas("verify", "--timeframe", "7m", env=env)
    assert bad_args.returncode == 2 and "7m" in bad_args.stderr


def test_consecutive_ranges() -> None:
    days = [D(2024, 1, 1), D(2024, 1, 2), D(2024, 1, 5), D(2024, 2, 29), D(2024, 3, 1)]
    assert consecutive_ranges(days) == [
        (D(2024, 1, 1), D(2024, 1, 3)), (D(2024, 1, 5), D(2024, 1, 6)), (D(2024, 2, 29), D(2024, 3, 2)),
    ]
