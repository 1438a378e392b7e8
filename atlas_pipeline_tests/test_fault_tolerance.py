"""Crashes and races: a killed writer, two writers of the same days, and secrets kept out of logs."""

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.candles import DAY_MS
from atlas_pipeline.market_data.emulator import FileCandleSource
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles, run_range, write_exchange_config

DAYS = [dt.date(2021, 3, 1) + dt.timedelta(days=i) for i in range(20)]

# A writer process: rewrites the same 20 days of 1m candles (one month file, ~29k rows) forever,
# alternating two versions that differ only in volume (version 1.0 or 2.0 everywhere).
WRITER = textwrap.dedent(
    """
    import datetime as dt, sys
    import numpy as np, pandas as pd
    from atlas_pipeline import CandleStore

    root, version = sys.argv[1], float(sys.argv[2])
    days = [dt.date(2021, 3, 1) + dt.timedelta(days=i) for i in range(20)]
    store = CandleStore(root)

    def day_frame(day, volume):
        start = (day - dt.date(1970, 1, 1)).days * 86_400_000
        ts = start + np.arange(1440, dtype=np.int64) * 60_000
        price = np.full(1440, 100.0)
        return pd.DataFrame({"timestamp": ts, "open": price, "high": price, "low": price, "close": price,
                             "volume": np.full(1440, volume)})

    frames = {v: {d: day_frame(d, v) for d in days} for v in (version, version + 1)}
    print("ready", flush=True)
    while True:
        for v in (version, version + 1):
            store.write_days("binance", "BTC/USDT", "1m", frames[v], complete=True)
    """
)


def _start_writer(root: Path, version: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(version)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def _versions_per_day(store: CandleStore) -> dict[dt.date, set[float]]:
    candles = store.read("binance", "BTC/USDT", "1m", DAYS[0], DAYS[-1] + dt.timedelta(days=1))
    by_day = candles.groupby(candles["timestamp"] // DAY_MS)["volume"].agg(lambda v: set(v.unique()))
    return {dt.date(1970, 1, 1) + dt.timedelta(days=int(day)): versions for day, versions in by_day.items()}


def test_killing_a_writer_mid_write_leaves_whole_files(tmp_path: Path) -> None:
    """SIGKILL at random moments of a rewrite loop: every read afterwards sees one whole version."""
    rng = np.random.default_rng(7)
    store = CandleStore(str(tmp_path))
    for attempt in range(6):
        writer = _start_writer(tmp_path, 1.0)
        time.sleep(0.15 + float(rng.uniform(0, 0.5)))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        versions = _versions_per_day(store)  # the month file must still parse
        assert sorted(versions) == DAYS, f"attempt {attempt}: days lost"
        seen = set().union(*versions.values())
        assert len(seen) == 1 and seen <= {1.0, 2.0}, f"attempt {attempt}: a mix of versions {seen}"
        coverage = store.coverage("binance", "BTC/USDT", "1m")
        assert (coverage["rows"] == 1440).all() and len(coverage) == 20
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    # a killed writer may leave its temp file behind; it is never read as data
    assert all(name.startswith(".") for name in leftovers), leftovers


def test_two_writers_of_the_same_days_never_corrupt_them(tmp_path: Path) -> None:
    first, second = _start_writer(tmp_path, 1.0), _start_writer(tmp_path, 10.0)
    store = CandleStore(str(tmp_path))
    try:
        deadline = time.monotonic() + 3
        reads = 0
        while time.monotonic() < deadline:
            versions = _versions_per_day(store)
            seen = set().union(*versions.values())
            assert sorted(versions) == DAYS and len(seen) == 1 and seen <= {1.0, 2.0, 10.0, 11.0}, seen
            reads += 1
        assert reads > 3
    finally:
        for writer in (first, second):
            writer.kill()
            writer.wait()
    assert len(set().union(*_versions_per_day(store).values())) == 1


@needs_shared_candles
def test_api_keys_never_reach_logs_metadata_or_errors(
    tmp_path: Path, emulator_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, secret_key = "ak-SECRET-7f3a9", "sk-SECRET-c41d2"
    monkeypatch.setenv("ATLAS_TEST_KEY", secret)
    monkeypatch.setenv("ATLAS_TEST_SECRET", secret_key)
    server = emulator_factory(FileCandleSource(SHARED_CANDLES))
    keys = {"api_key_env": "ATLAS_TEST_KEY", "api_secret_env": "ATLAS_TEST_SECRET"}
    good = write_exchange_config(tmp_path / "good", server.base_url, **keys)
    down = write_exchange_config(tmp_path / "down", "http://127.0.0.1:9", max_retries=0, **keys)
    with dg.instance_for_test() as instance:
        [ok] = run_range(good, tmp_path / "store", instance, ["ETH/BTC"], dt.date(2018, 1, 12), dt.date(2018, 1, 14))
        [failed] = run_range(
            down, tmp_path / "store", instance, ["ETH/BTC"], dt.date(2018, 1, 12), dt.date(2018, 1, 14), full_refresh=True
        )
        assert ok.success and not failed.success
        everything = "\n".join(
            repr(record) for run in (ok, failed) for record in instance.all_logs(run.result.run_id)
        )
    assert "ETH/BTC" in everything and "load markets" in everything  # the logs are really there
    assert secret not in everything and secret_key not in everything
    stored = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert secret.encode() not in stored and secret_key.encode() not in stored

