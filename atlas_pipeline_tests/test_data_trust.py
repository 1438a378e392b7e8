"""No silent loss: short pages, a wrong first-candle cache, and backfills cut short by a kill or Ctrl-C.

Everything goes through the real data path: ccxt against the emulator, a real Dagster instance, the
real candle store on disk, and real ``atlas fetch`` processes where a process has to die.
"""

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.candles import DAY_MS, day_start_ms
from atlas_pipeline.market_data.emulator import FaultRule, SyntheticCandleSource
from atlas_pipeline.market_data.ingest import CHUNK_CANDLES
from atlas_pipeline_tests.support import assert_frames_equal, day_counts, run_range, write_exchange_config

D = dt.date
MARKET = "BTC/USDT"
LISTED = "2017-08-17"


@pytest.fixture
def synthetic(emulator_factory):
    """One synthetic market listed 2017-08-17, with no gaps, so every closed day is full."""
    return emulator_factory(SyntheticCandleSource(seed=11, markets={MARKET: LISTED}))


def _config(tmp_path: Path, server, timeframe: str) -> Path:
    return write_exchange_config(
        tmp_path / "config", server.base_url, timeframes=[timeframe], markets=[MARKET], history_start="2017-01-01"
    )


def _assert_no_day_complete_with_candles_missing(store: CandleStore, source, timeframe: str, start: D, end: D) -> None:
    """Every day the store calls complete holds exactly the source's candles of that day."""
    expected = day_counts(source.candles(MARKET, timeframe, day_start_ms(start), day_start_ms(end)))
    coverage = store.coverage("binance", MARKET, timeframe, start, end)
    complete = coverage[coverage["complete"]]
    wrong = {row.day: (row.rows, expected.get(row.day, 0)) for row in complete.itertuples() if row.rows != expected.get(row.day, 0)}
    assert not wrong, f"days marked complete with candles missing (stored, source): {dict(list(wrong.items())[:5])}"


def test_a_short_page_loses_nothing_and_the_rerun_asks_for_nothing(tmp_path: Path, synthetic) -> None:
    """The reported case: the 2nd klines request of a 2019-01-01..2019-06-01 1h fetch answered with
    its first 600 rows used to store 1,600 of 3,624 candles and mark 84 days empty and complete."""
    start, end = D(2019, 1, 1), D(2019, 6, 1)
    config = _config(tmp_path, synthetic, "1h")
    # klines requests: the first-candle lookup, then the fetch's pages; the fetch's 2nd page is short
    synthetic.set_faults([FaultRule(kind="short_page", endpoint="klines", after=2, times=1, rows=600)])
    with dg.instance_for_test() as instance:
        [run] = run_range(config, tmp_path / "store", instance, [MARKET], start, end, timeframes=("1h",))
        assert run.success, run.failure_reason()
        assert synthetic.faults[0]["fired"] == 1
        store = CandleStore(str(tmp_path / "store"))
        source = synthetic.source.candles(MARKET, "1h", day_start_ms(start), day_start_ms(end))
        assert len(source) == 3_624
        assert_frames_equal(store.read("binance", MARKET, "1h", start, end), source)
        _assert_no_day_complete_with_candles_missing(store, synthetic.source, "1h", start, end)

        synthetic.reset_stats()
        [rerun] = run_range(config, tmp_path / "store", instance, [MARKET], start, end, timeframes=("1h",))
        assert rerun.success and synthetic.stats["requests"].get("klines", 0) == 0


def test_a_cached_first_candle_later_than_the_truth_is_corrected_before_it_is_trusted(tmp_path: Path, synthetic) -> None:
    """Days before the cached first candle would be stored empty and complete with no request."""
    start, end = D(2017, 8, 10), D(2017, 9, 10)
    store = CandleStore(str(tmp_path / "store"))
    store.write_day("binance", MARKET, "1h", D(2017, 9, 20), synthetic.source.candles(MARKET, "1h", day_start_ms(D(2017, 9, 20)), day_start_ms(D(2017, 9, 21))), complete=True)
    store.set_first_candle("binance", MARKET, "1h", day_start_ms(D(2017, 9, 1)))  # a wrong cache
    config = _config(tmp_path, synthetic, "1h")
    with dg.instance_for_test() as instance:
        [run] = run_range(config, tmp_path / "store", instance, [MARKET], start, end, timeframes=("1h",))
        assert run.success, run.failure_reason()
    source = synthetic.source.candles(MARKET, "1h", day_start_ms(start), day_start_ms(end))
    assert int(source["timestamp"].iloc[0]) == day_start_ms(D(2017, 8, 17))
    assert_frames_equal(store.read("binance", MARKET, "1h", start, end), source)
    assert store.first_candle("binance", MARKET, "1h") == day_start_ms(D(2017, 8, 17))
    _assert_no_day_complete_with_candles_missing(store, synthetic.source, "1h", start, end)


def _atlas_fetch(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "atlas_pipeline.cli", "fetch", "--exchange", "binance", *args],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_days(store: CandleStore, timeframe: str, at_least: int, process: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = len(store.coverage("binance", MARKET, timeframe))
        if stored >= at_least:
            return stored
        assert process.poll() is None, f"atlas fetch ended early: {process.stderr.read()}"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} days stored after {timeout} s")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_an_interrupted_1m_backfill_keeps_what_it_validated_and_the_rerun_continues(
    tmp_path: Path, synthetic, how: str
) -> None:
    """Chunks are written as the backfill goes: a kill or Ctrl-C keeps the chunks already stored
    (whole, complete, equal to the source), and the rerun fetches only the rest."""
    start, end = D(2021, 1, 1), D(2021, 6, 1)  # 151 days of 1m: 3 chunks of two months at most
    config = _config(tmp_path, synthetic, "1m")
    synthetic.set_faults([FaultRule(kind="timeout", endpoint="klines", delay=0.01)])  # a slower exchange
    env = {"ATLAS_CONFIG": str(config), "ATLAS_HOME": str(tmp_path / "home"), "DAGSTER_HOME": ""}
    args = ("--symbol", MARKET, "--timeframe", "1m", "--start", start.isoformat(), "--end", end.isoformat())
    store = CandleStore(str(tmp_path / "home"))

    process = _atlas_fetch(env, *args)
    stored = _wait_for_days(store, "1m", 1, process)
    os.killpg(process.pid, getattr(signal, how))
    _, stderr = process.communicate(timeout=60)
    if how == "SIGINT":
        assert process.returncode == 130, stderr
        assert stderr.strip().splitlines()[-2] == "atlas: interrupted"  # then where the full log is
    else:
        assert process.returncode == -signal.SIGKILL
    coverage = store.coverage("binance", MARKET, "1m")
    assert stored <= len(coverage) < (end - start).days, "the kill should land mid-backfill"
    assert coverage["complete"].all() and (coverage["rows"] == 1440).all()
    assert list(coverage["day"]) == [start + dt.timedelta(days=i) for i in range(len(coverage))], "a prefix of whole chunks"
    # chunks of two months (1m) are written a month file at a time, each file atomically
    assert 2 * 31 * 1440 <= CHUNK_CANDLES < 3 * 28 * 1440
    assert len(coverage) in (31, 59, 90, 120), "whole months"

    synthetic.clear_faults()
    synthetic.reset_stats()
    rerun = subprocess.run(
        [sys.executable, "-m", "atlas_pipeline.cli", "fetch", "--exchange", "binance", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    source = synthetic.source.candles(MARKET, "1m", day_start_ms(start), day_start_ms(end))
    assert_frames_equal(store.read("binance", MARKET, "1m", start, end), source)
    remaining = (end - start).days - len(coverage)
    # only the days not yet stored are fetched: 1,440 candles a day in pages of 1,000
    assert synthetic.stats["requests"]["klines"] <= 1 + -(-remaining * 1440 // 1000) + 3
    _assert_no_day_complete_with_candles_missing(store, synthetic.source, "1m", start, end)

    # Up to date now: the same command makes no request and starts no run.
    synthetic.reset_stats()
    again = subprocess.run(
        [sys.executable, "-m", "atlas_pipeline.cli", "fetch", "--exchange", "binance", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert f"{MARKET}: up to date ({(end - start).days} days" in again.stderr
    assert synthetic.stats["total"] == 0

    # Each CLI range run logged one "materialization planned" event, not one per partition (151):
    # SQLite stores events one by one, which delayed a 1m backfill's first progress line by 30 s.
    with dg.DagsterInstance.from_config(str(tmp_path / "home" / "dagster_home")) as instance:
        runs = instance.get_runs()
        planned = [
            record
            for run in runs
            for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records
        ]
        assert len(runs) == 2 and len(planned) == 2


# ---- property: random fault schedules, kills included -------------------------------------------

INGEST_SCRIPT = """
import datetime as dt, sys
from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection
from atlas_pipeline.market_data.ingest import ingest_days

url, root, timeframe, start, end = sys.argv[1:]
start, end = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
connection = ExchangeConnection("binance", api_url=url, timeout_seconds=1, min_request_interval_ms=0, max_retries=4)
days = [start + dt.timedelta(days=i) for i in range((end - start).days)]
ingest_days(ExchangeClient(connection), CandleStore(root), "%s", timeframe, days)
""" % MARKET


def _random_faults(rng: random.Random) -> list[FaultRule]:
    """A schedule of finite faults (each fits in the client's retries), in random order and places."""
    faults = [
        FaultRule(kind="short_page", endpoint="klines", after=rng.randint(0, 8), times=rng.choice([1, 2, 5]), rows=rng.choice([1, 50, 600])),
        FaultRule(kind="server_error", endpoint="klines", after=rng.randint(0, 12), times=rng.randint(1, 2)),
        FaultRule(kind="timeout", endpoint="klines", after=rng.randint(0, 12), times=1, delay=1.5),
        FaultRule(kind="duplicates", endpoint="klines", after=rng.randint(0, 12), times=rng.randint(1, 3)),
        FaultRule(kind="out_of_order", endpoint="klines", after=rng.randint(0, 12), times=1),
        FaultRule(kind="rate_limit", endpoint="klines", after=rng.randint(0, 12), times=1, retry_after=0),
    ]
    if rng.random() < 0.5:  # a per-request cap below the documented limit, all along
        faults.append(FaultRule(kind="short_page", endpoint="klines", rows=rng.choice([400, 700])))
    return rng.sample(faults, k=rng.randint(2, len(faults)))


def _assert_complete_days_exact(store: CandleStore, source, timeframe: str, start: D, end: D) -> None:
    """Every day stored complete equals the source's day exactly; nothing else may be stored."""
    coverage = store.coverage("binance", MARKET, timeframe, start, end)
    assert coverage["complete"].all(), "a past day stored as not complete"
    stored = store.read("binance", MARKET, timeframe, start, end)
    expected = source.candles(MARKET, timeframe, day_start_ms(start), day_start_ms(end))
    days = {day_start_ms(day) for day in coverage["day"]}
    mask = (expected["timestamp"] // DAY_MS * DAY_MS).isin(days)
    assert_frames_equal(stored, expected[mask])


@pytest.mark.parametrize(
    ("timeframe", "start", "end"),
    [("1m", D(2021, 1, 1), D(2021, 4, 15)), ("1h", D(2018, 6, 1), D(2019, 9, 1))],
)
@pytest.mark.parametrize("seed", range(3))
def test_random_fault_schedules_end_in_exactly_the_source_after_at_most_one_rerun(
    tmp_path: Path, synthetic, timeframe: str, start: D, end: D, seed: int
) -> None:
    rng = random.Random(f"{timeframe}-{seed}")
    faults = _random_faults(rng)
    synthetic.set_faults(faults)
    root = tmp_path / "store"
    store = CandleStore(str(root))
    args = [synthetic.base_url, str(root), timeframe, start.isoformat(), end.isoformat()]
    # the first run is killed: while fetching (seconds after its start), or after it wrote a chunk
    kill = ("no kill", "while fetching", "after a chunk")[seed]
    kill_delay = rng.uniform(1.5, 4.0) if kill == "while fetching" else rng.uniform(0.0, 1.0)
    note = f"faults {[(f.kind, f.after, f.times, f.rows) for f in faults]}; {kill} ({kill_delay:.1f} s)"

    for attempt in range(2):  # the run, and at most one rerun
        process = subprocess.Popen([sys.executable, "-c", INGEST_SCRIPT, *args], stderr=subprocess.PIPE, text=True)
        if attempt == 0 and kill != "no kill":
            deadline = time.monotonic() + 120
            while kill == "after a chunk" and store.coverage("binance", MARKET, timeframe).empty:
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            time.sleep(kill_delay)
            process.kill()
        process.wait(timeout=300)
        stderr = process.stderr.read()
        _assert_complete_days_exact(store, synthetic.source, timeframe, start, end)
        if process.returncode == 0:
            break
        assert attempt == 0 and process.returncode == -signal.SIGKILL, f"{note}: attempt {attempt} failed: {stderr[-2000:]}"
    expected = synthetic.source.candles(MARKET, timeframe, day_start_ms(start), day_start_ms(end))
    assert_frames_equal(store.read("binance", MARKET, timeframe, start, end), expected)
    assert len(store.coverage("binance", MARKET, timeframe, start, end)) == (end - start).days, note
