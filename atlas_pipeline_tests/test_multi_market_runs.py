"""Runs over several markets (the daily schedule's, a backfill's per-day runs): a market that fails
does not stop the others, whose days are stored and recorded; the run fails naming the failed ones.

Real ccxt against the emulator serving a seeded synthetic market; the failing market is real too:
the source serves it broken candles (high below low), or the exchange does not list it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from atlas_pipeline import CandleStore
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.market_data.schedules import day_run_requests
from atlas_pipeline.defs.run_results import failure_reason
from atlas_pipeline.config import load_exchanges_config
from atlas_pipeline.market_data.candles import day_start_ms
from atlas_pipeline.market_data.emulator import FaultRule, SyntheticCandleSource
from atlas_pipeline_tests.support import assert_frames_equal, write_exchange_config

D = dt.date
MARKETS = ["AAA/USDT", "BBB/USDT", "CCC/USDT"]
KEY = dg.AssetKey(["binance", "ohlcv_1h"])
START, END = D(2024, 3, 1), D(2024, 3, 4)  # three days
DAYS = [START + dt.timedelta(days=i) for i in range((END - START).days)]


class BadMarketSource(SyntheticCandleSource):
    """The seeded market, except that ``bad``'s candles have one row with its high below its low."""

    def __init__(self, bad: str | None) -> None:
        super().__init__(seed=11, markets={market: "2023-01-01" for market in MARKETS})
        self.bad = bad

    def candles(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        frame = super().candles(symbol, timeframe, start_ms, end_ms)
        if symbol == self.bad and len(frame) > 1:
            row = len(frame) // 2
            frame.loc[row, "high"] = frame.loc[row, "low"] * 0.99
        return frame


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def _run(config: Path, store_root: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """One run over every market x ``DAYS`` of 1h candles: the rectangle from the first market's
    first day to the last market's last day, as a backfill or the schedule would launch it."""
    defs = build_definitions(config, store_root=str(store_root))
    tags = {
        "dagster/asset_partition_range_start": f"{START}|{MARKETS[0].replace('/', '-')}",
        "dagster/asset_partition_range_end": f"{DAYS[-1]}|{MARKETS[-1].replace('/', '-')}",
    }
    return defs.resolve_job_def("ohlcv_binance").execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def _partitions(*markets: str) -> list[str]:
    return sorted(f"{day}|{market.replace('/', '-')}" for market in markets for day in DAYS)


def _assert_stored_as_served(store: CandleStore, source: SyntheticCandleSource, market: str) -> None:
    expected = source.candles(market, "1h", day_start_ms(START), day_start_ms(END))
    assert_frames_equal(store.read("binance", market, "1h", START, END), expected)
    assert store.coverage("binance", market, "1h", START, END)["complete"].all()


def test_a_market_with_bad_candles_fails_alone(tmp_path: Path, emulator_factory, instance) -> None:
    source = BadMarketSource(bad="BBB/USDT")
    emulator = emulator_factory(source)
    config = write_exchange_config(tmp_path / "config", emulator.base_url, markets=MARKETS, timeframes=["1h"])
    result = _run(config, tmp_path / "store", instance)

    assert not result.success
    reason = failure_reason(result)
    assert "BBB/USDT 1h" in reason and "ohlc_sanity" in reason, reason
    assert "AAA/USDT" not in reason and "CCC/USDT" not in reason, reason
    store = CandleStore(str(tmp_path / "store"))
    for market in ("AAA/USDT", "CCC/USDT"):  # fetched after the bad one, too
        _assert_stored_as_served(store, source, market)
    assert store.coverage("binance", "BBB/USDT", "1h").empty  # nothing of the bad market written

    # exactly the stored days are recorded, each with its day's metadata; BBB's are not
    assert sorted(instance.get_materialized_partitions(KEY)) == _partitions("AAA/USDT", "CCC/USDT")
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=KEY, asset_partitions=[f"{DAYS[1]}|CCC-USDT"]), limit=1
    ).records
    assert record.asset_materialization.metadata["candles"].value == 24
    assert record.asset_materialization.metadata["complete_day"].value is True

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    sanity = checks["ohlc_sanity"]
    assert not sanity.passed and sanity.metadata["failed_markets"].value == ["BBB-USDT"]
    assert "BBB/USDT" in sanity.metadata["details"].value
    assert checks["unique_timestamps"].passed


def test_a_market_the_exchange_does_not_list_fails_alone(tmp_path: Path, emulator_factory, instance) -> None:
    source = BadMarketSource(bad=None)
    emulator = emulator_factory(source)
    markets = ["AAA/USDT", "ZZZ/BTC", "CCC/USDT"]  # the exchange never had ZZZ/BTC
    config = write_exchange_config(tmp_path / "config", emulator.base_url, markets=markets, timeframes=["1h"])
    defs = build_definitions(config, store_root=str(tmp_path / "store"))
    tags = {
        "dagster/asset_partition_range_start": f"{START}|AAA-USDT",
        "dagster/asset_partition_range_end": f"{DAYS[-1]}|CCC-USDT",
    }
    result = defs.resolve_job_def("ohlcv_binance").execute_in_process(instance=instance, tags=tags, raise_on_error=False)

    assert not result.success
    reason = failure_reason(result)
    assert "does not list market 'ZZZ/BTC'" in reason and "1 of 3 markets failed" in reason, reason
    store = CandleStore(str(tmp_path / "store"))
    for market in ("AAA/USDT", "CCC/USDT"):
        _assert_stored_as_served(store, source, market)
    assert sorted(instance.get_materialized_partitions(KEY)) == _partitions("AAA/USDT", "CCC/USDT")
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["ohlc_sanity"].passed  # nothing bad was served; the market is named as not checked
    assert checks["ohlc_sanity"].metadata["markets_not_checked"].value == "ZZZ/BTC (request failed)"


def test_an_unreachable_exchange_stops_at_the_first_market_naming_the_others(tmp_path: Path, instance) -> None:
    config = write_exchange_config(tmp_path / "config", "http://127.0.0.1:9", markets=MARKETS, timeframes=["1h"], max_retries=0)
    result = _run(config, tmp_path / "store", instance)
    assert not result.success
    reason = failure_reason(result)
    assert "binance load markets" in reason, reason
    assert "not attempted (binance could not load its markets): BBB/USDT, CCC/USDT" in reason, reason
    assert not instance.get_materialized_partitions(KEY)


def test_a_ban_stops_the_remaining_markets(tmp_path: Path, emulator_factory, instance) -> None:
    """A 418 (IP ban) on the first market's candles: asking for the next markets would only lengthen
    the ban, so they are not attempted, and the failure names them."""
    emulator = emulator_factory(BadMarketSource(bad=None))
    emulator.set_faults([FaultRule(kind="rate_limit", endpoint="klines", status=418, retry_after=None)])
    config = write_exchange_config(tmp_path / "config", emulator.base_url, markets=MARKETS, timeframes=["1h"])
    result = _run(config, tmp_path / "store", instance)
    reason = failure_reason(result)
    assert "AAA/USDT 1h" in reason and "HTTP 418" in reason, reason
    assert "not attempted (binance is rate limiting or banning requests): BBB/USDT, CCC/USDT" in reason, reason
    assert emulator.stats["faults_fired"]["rate_limit"] == 1  # no request after the ban


def test_the_daily_tick_on_a_failing_market_records_the_others(tmp_path: Path, emulator_factory, instance) -> None:
    """The schedule's request itself (one run over every market for the day) with a bad market."""
    source = BadMarketSource(bad="AAA/USDT")
    emulator = emulator_factory(source)
    config = write_exchange_config(tmp_path / "config", emulator.base_url, markets=MARKETS, timeframes=["1h"])
    defs = build_definitions(config, store_root=str(tmp_path / "store"))
    settings = load_exchanges_config(config).get("binance")
    [request] = day_run_requests(settings, [m.replace("/", "-") for m in MARKETS], DAYS[0], "daily-test")
    result = defs.resolve_job_def("ohlcv_binance").execute_in_process(
        instance=instance, tags=request.tags, asset_selection=request.asset_selection, raise_on_error=False
    )
    assert not result.success and "AAA/USDT 1h" in failure_reason(result)
    assert sorted(instance.get_materialized_partitions(KEY)) == [f"{DAYS[0]}|BBB-USDT", f"{DAYS[0]}|CCC-USDT"]


INTERRUPTED_RUN = """
import sys, time
from pathlib import Path
import dagster as dg
from atlas_pipeline.market_data.emulator import EmulatorServer
from atlas_pipeline_tests.test_multi_market_runs import BadMarketSource, MARKETS, _run, write_exchange_config

class SlowLastMarket(BadMarketSource):
    def candles(self, symbol, timeframe, start_ms, end_ms):
        if symbol == MARKETS[-1]:
            time.sleep(60)  # still fetching when the interrupt comes
        return super().candles(symbol, timeframe, start_ms, end_ms)

folder = Path(sys.argv[1])
emulator = EmulatorServer(SlowLastMarket(bad=None)).start()
config = write_exchange_config(folder / "config", emulator.base_url, markets=MARKETS, timeframes=["1h"], timeout_seconds=120)
with dg.DagsterInstance.from_config(str(folder / "home")) as instance:
    _run(config, folder / "store", instance)
"""


def test_an_interrupted_run_records_the_markets_it_finished(tmp_path: Path) -> None:
    """Ctrl-C (or a cancel) while the third market is fetched: the first two are stored and recorded."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "home").mkdir()
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_RUN, str(tmp_path)], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    store = CandleStore(str(tmp_path / "store"))
    deadline = time.monotonic() + 120
    while store.coverage("binance", "BBB/USDT", "1h").empty:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.1)
    time.sleep(1.0)  # BBB's last file written; CCC's request is held by the source
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        assert sorted(instance.get_materialized_partitions(KEY)) == _partitions("AAA/USDT", "BBB/USDT")
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE
    assert store.coverage("binance", "CCC/USDT", "1h").empty
