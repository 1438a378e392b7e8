"""Backfill requests: ``ohlcv_<exchange>_backfill`` (launched with run config) and the
``ohlcv_<exchange>_backfills`` sensor give one bounded ``ohlcv_<exchange>`` run per market.

On a real instance: the request job runs in-process, the sensor is evaluated on its success event
(Dagster's run status sensor context), and a requested run is executed against the emulator: it
materializes exactly its market x the requested days.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.market_data.backfills import REQUEST_TAG
from atlas_pipeline.market_data.emulator import SyntheticCandleSource
from atlas_pipeline_tests.support import write_exchange_config

MARKETS = ["AAA/USDT", "BBB/USDT", "CCC/USDT", "DDD/USDT"]
TODAY = dt.datetime.now(dt.UTC).date()
START = TODAY - dt.timedelta(days=6)
OP_CONFIG = "request_ohlcv_binance_backfill"


@pytest.fixture
def defs(tmp_path: Path, emulator_factory) -> dg.Definitions:
    listed = {market: (START - dt.timedelta(days=30)).isoformat() for market in MARKETS}
    emulator = emulator_factory(SyntheticCandleSource(3, markets=listed))
    config = write_exchange_config(
        tmp_path / "config", emulator.base_url, markets=MARKETS, timeframes=["1d", "1h"], history_start=START.isoformat()
    )
    return build_definitions(config, store_root=str(tmp_path / "store"))


def _request(defs: dg.Definitions, instance: dg.DagsterInstance, config: dict) -> tuple[bool, list[dg.RunRequest]]:
    """Run the request job with ``config``; if it succeeded, the sensor's answer to its success."""
    result = defs.resolve_job_def("ohlcv_binance_backfill").execute_in_process(
        instance=instance, run_config={"ops": {OP_CONFIG: {"config": config}}}, raise_on_error=False
    )
    if not result.success:
        return False, []
    success = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records[0]
    context = dg.build_run_status_sensor_context(
        sensor_name="ohlcv_binance_backfills",
        dagster_event=success.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    )
    sensor = defs.resolve_sensor_def("ohlcv_binance_backfills")
    return True, list(sensor(context) or [])


def _covered(defs: dg.Definitions, request: dg.RunRequest) -> list[str]:
    partitions_def = defs.resolve_assets_def(dg.AssetKey(["ohlcv", "binance", "1d"])).partitions_def
    key_range = dg.PartitionKeyRange(request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG])
    return [str(key) for key in partitions_def.get_partition_keys_in_range(key_range)]


def test_a_request_for_everything_gives_one_run_per_market_over_every_day_and_timeframe(defs) -> None:
    with dg.instance_for_test() as instance:
        ok, requests = _request(defs, instance, {})
    assert ok
    assert len(requests) == len(MARKETS)
    days = [(START + dt.timedelta(days=i)).isoformat() for i in range((TODAY - START).days + 1)]
    for request, market in zip(requests, MARKETS):
        key = market.replace("/", "-")
        assert sorted(_covered(defs, request)) == sorted(f"{day}|{key}" for day in days)
        assert {k.to_user_string() for k in request.asset_selection or []} == {"ohlcv/binance/1d", "ohlcv/binance/1h"}
        assert request.tags[REQUEST_TAG]
    assert len({request.run_key for request in requests}) == len(MARKETS)


def test_a_requested_run_materializes_exactly_its_market_and_days(defs) -> None:
    with dg.instance_for_test() as instance:
        ok, requests = _request(
            defs, instance, {"start": (START + dt.timedelta(days=1)).isoformat(), "end": (TODAY - dt.timedelta(days=2)).isoformat(),
                             "markets": ["BBB/USDT", "DDD-USDT"], "timeframes": ["1d"]}
        )
        assert ok
        assert [_covered(defs, r)[0].split("|")[1] for r in requests] == ["BBB-USDT", "DDD-USDT"]
        request = requests[1]
        result = defs.resolve_job_def("ohlcv_binance").execute_in_process(
            instance=instance, tags=request.tags, asset_selection=list(request.asset_selection or []), raise_on_error=False
        )
        assert result.success
        materialized = sorted(
            e.materialization.partition for e in result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey(["ohlcv", "binance", "1d"])
        )
    days = [(START + dt.timedelta(days=i)).isoformat() for i in range(1, (TODAY - START).days - 1)]
    assert materialized == [f"{day}|DDD-USDT" for day in days]


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"markets": ["ZZZ/USDT"]}, "ZZZ-USDT"),
        ({"end": (TODAY + dt.timedelta(days=3)).isoformat()}, "must lie within"),
    ],
)
def test_a_bad_request_fails_its_run_naming_the_field_and_requests_nothing(defs, config: dict, named: str) -> None:
    with dg.instance_for_test() as instance:
        ok, requests = _request(defs, instance, config)
        failures = [
            r.event_log_entry.dagster_event.step_failure_data.error.message
            for run in instance.get_runs()
            for r in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
        ]
    assert not ok and requests == []
    assert any(named in message for message in failures), failures
