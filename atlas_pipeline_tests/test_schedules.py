"""The daily schedule asks for yesterday's day of every market, the intraday one for today's: one
partition range run per timeframe (or per batch of markets), not one run per market."""

import datetime as dt
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from atlas_pipeline import CandleStore
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.market_data.schedules import MARKETS_PER_RUN, day_run_requests
from atlas_pipeline.config import load_exchanges_config
from atlas_pipeline.market_data.candles import day_start_ms
from atlas_pipeline.market_data.emulator import SyntheticCandleSource
from atlas_pipeline_tests.support import assert_frames_equal, write_exchange_config

MARKETS = [f"C{i:02d}/USDT" for i in range(30)]
KEYS = [m.replace("/", "-") for m in MARKETS]


def _defs(tmp_path: Path, markets: list[str] = MARKETS, **settings: object) -> dg.Definitions:
    entry = {"timeframes": ["1h", "1d"], "markets": markets, **settings}
    (tmp_path / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": {"binance": entry}}))
    return build_definitions(tmp_path, store_root=str(tmp_path / "store"))


def _evaluate(defs: dg.Definitions, name: str, when: dt.datetime, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    schedule = defs.resolve_schedule_def(name)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def())
    result = schedule.evaluate_tick(context)
    assert result.skip_message is None
    return list(result.run_requests or [])


def _partitions(defs: dg.Definitions, request: dg.RunRequest) -> list[str]:
    """The partitions Dagster resolves the request's range tags into (per dimension: a rectangle)."""
    [key] = request.asset_selection
    partitions_def = defs.resolve_assets_def(key).partitions_def
    tags = request.tags
    return [
        str(k)
        for k in partitions_def.get_partition_keys_in_range(
            dg.PartitionKeyRange(tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG])
        )
    ]


def test_daily_schedule_requests_one_run_per_timeframe_over_every_market(tmp_path: Path) -> None:
    defs = _defs(tmp_path)
    schedule = defs.resolve_schedule_def("ohlcv_binance_daily")
    assert schedule.cron_schedule == "15 0 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "ohlcv_binance"
    with dg.instance_for_test() as instance:
        requests = _evaluate(defs, "ohlcv_binance_daily", dt.datetime(2024, 3, 1, 0, 15, tzinfo=dt.UTC), instance)
    assert len(requests) == 2  # 30 markets x 2 timeframes: one run each, not 60
    assert sorted(request.asset_selection[0].to_user_string() for request in requests) == ["binance/ohlcv_1d", "binance/ohlcv_1h"]
    for request in requests:
        assert request.partition_key is None
        assert sorted(_partitions(defs, request)) == sorted(f"2024-02-29|{key}" for key in KEYS)
    assert len({request.run_key for request in requests}) == 2


def test_large_universes_are_split_into_consecutive_batches_that_cover_each_market_once(tmp_path: Path) -> None:
    defs = _defs(tmp_path)
    settings = load_exchanges_config(tmp_path).get("binance")
    requests = day_run_requests(settings, KEYS, dt.date(2024, 2, 29), "daily-x", markets_per_run=12)
    assert len(requests) == 2 * 3  # batches of 12, 12 and 6 markets per timeframe
    for timeframe in ("1h", "1d"):
        mine = [r for r in requests if r.asset_selection[0].path[-1] == f"ohlcv_{timeframe}"]
        covered = [p for request in mine for p in _partitions(defs, request)]
        assert sorted(covered) == sorted(f"2024-02-29|{key}" for key in KEYS)  # each exactly once
        assert [len(_partitions(defs, r)) for r in mine] == [12, 12, 6]
    assert len({r.run_key for r in requests}) == 6
    assert MARKETS_PER_RUN >= 500  # the universes (500 markets) take one run per timeframe


def test_intraday_schedule_requests_today_and_is_off_by_default(tmp_path: Path) -> None:
    defs = _defs(tmp_path, markets=["BTC/USDT", "ETH/USDT"])
    assert defs.resolve_schedule_def("ohlcv_binance_intraday").default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test() as instance:
        requests = _evaluate(defs, "ohlcv_binance_intraday", dt.datetime(2024, 3, 1, 13, 5, tzinfo=dt.UTC), instance)
    assert len(requests) == 2
    for request in requests:
        assert _partitions(defs, request) == ["2024-03-01|BTC-USDT", "2024-03-01|ETH-USDT"]


def test_daily_job_covers_every_timeframe(tmp_path: Path) -> None:
    job = _defs(tmp_path).resolve_job_def("ohlcv_binance")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert keys == {"binance/ohlcv_1h", "binance/ohlcv_1d"}


def test_executing_a_daily_tick_lands_every_markets_day(tmp_path: Path, emulator_factory) -> None:
    """The tick's requests, run as the daemon would run them (their tags and asset selection),
    store and record yesterday for all 30 markets."""
    now = dt.datetime.now(dt.UTC)
    tick = now.replace(hour=0, minute=15, second=0, microsecond=0)
    yesterday = (tick - dt.timedelta(days=1)).date()
    source = SyntheticCandleSource(seed=7, markets={market: "2020-01-01" for market in MARKETS})
    emulator = emulator_factory(source)
    config = write_exchange_config(
        tmp_path / "config", emulator.base_url, markets=MARKETS, timeframes=["1h", "1d"], history_start="2020-01-01"
    )
    defs = build_definitions(config, store_root=str(tmp_path / "store"))
    job = defs.resolve_job_def("ohlcv_binance")
    with dg.instance_for_test() as instance:
        requests = _evaluate(defs, "ohlcv_binance_daily", tick, instance)
        assert len(requests) == 2
        for request in requests:
            result = job.execute_in_process(
                instance=instance, tags=request.tags, asset_selection=request.asset_selection, raise_on_error=False
            )
            assert result.success
            [key] = request.asset_selection
            assert sorted(instance.get_materialized_partitions(key)) == sorted(f"{yesterday}|{k}" for k in KEYS)
        assert len(instance.get_runs()) == 2
    store = CandleStore(str(tmp_path / "store"))
    end = yesterday + dt.timedelta(days=1)
    for market in MARKETS:
        for timeframe, count in (("1h", 24), ("1d", 1)):
            status = store.day_status("binance", market, timeframe, yesterday)
            assert status.complete and status.rows == count, (market, timeframe, status)
            expected = source.candles(market, timeframe, day_start_ms(yesterday), day_start_ms(end))
            assert_frames_equal(store.read("binance", market, timeframe, yesterday, end), expected)
