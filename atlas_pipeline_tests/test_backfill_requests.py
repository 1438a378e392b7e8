"""Backfill requests: ``ohlcv_<exchange>_backfill`` (launched with run config) and the
``ohlcv_<exchange>_backfills`` sensor give one bounded ``ohlcv_<exchange>`` run per market.

On a real instance: the launchpad's mutation and the sensor daemon's own iteration turn a request
for everything into one queued run per market whose ranges cover the asset exactly once; the request
job runs in-process and the sensor is evaluated on its success event for a narrower request, whose
run, executed against the emulator, materializes exactly its market x the requested days; a bad
request fails naming the field.
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


def _covered(defs: dg.Definitions, tags: dict[str, str]) -> list[str]:
    """The partitions a run's range tags resolve to (Dagster: a rectangle per range)."""
    partitions_def = defs.resolve_assets_def(dg.AssetKey(["binance", "ohlcv_1d"])).partitions_def
    key_range = dg.PartitionKeyRange(tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG])
    return [str(key) for key in partitions_def.get_partition_keys_in_range(key_range)]


def test_a_requested_run_materializes_exactly_its_market_and_days(defs) -> None:
    with dg.instance_for_test() as instance:
        ok, requests = _request(
            defs, instance, {"start": (START + dt.timedelta(days=1)).isoformat(), "end": (TODAY - dt.timedelta(days=2)).isoformat(),
                             "markets": ["BBB/USDT", "DDD-USDT"], "timeframes": ["1d"]}
        )
        assert ok
        assert [_covered(defs, r.tags)[0].split("|")[1] for r in requests] == ["BBB-USDT", "DDD-USDT"]
        request = requests[1]
        result = defs.resolve_job_def("ohlcv_binance").execute_in_process(
            instance=instance, tags=request.tags, asset_selection=list(request.asset_selection or []), raise_on_error=False
        )
        assert result.success
        materialized = sorted(
            e.materialization.partition for e in result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey(["binance", "ohlcv_1d"])
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


def test_a_request_for_everything_through_the_daemon_gives_one_run_per_market_over_every_day(tmp_path: Path) -> None:
    """The whole path on Dagster's own code: the launchpad's ``launchPipelineExecution`` of the
    request job (queued, then launched as the run queue launches it, in this process), then the
    sensor daemon's iteration, which creates and queues one ``ohlcv_binance`` run per market over
    every day and timeframe: together exactly the asset's partitions, each once."""
    import contextlib
    import logging
    import sys

    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import freeze_time
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.sensor import execute_sensor_iteration
    from dagster_graphql.client.query import LAUNCH_PIPELINE_EXECUTION_MUTATION
    from dagster_graphql.test.utils import execute_dagster_graphql

    config = write_exchange_config(
        tmp_path / "config", "http://127.0.0.1:9", markets=MARKETS, timeframes=["1d", "1h"], history_start=START.isoformat()
    )
    defs_file = tmp_path / "defs.py"
    defs_file.write_text(
        "from atlas_pipeline.defs.definitions import build_definitions\n"
        f"defs = build_definitions({str(config)!r}, store_root={str(tmp_path / 'store')!r})\n"
    )
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, python_file=str(defs_file), attribute="defs"), location_name="atlas"
    )
    queued = {
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"},
        "run_launcher": {"module": "dagster._core.launcher.sync_in_memory_run_launcher", "class": "SyncInMemoryRunLauncher"},
    }
    now = dt.datetime.now(dt.UTC).timestamp()
    with contextlib.ExitStack() as stack:
        instance = stack.enter_context(dg.instance_for_test(overrides=queued))
        workspace = stack.enter_context(WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)))
        logger = logging.getLogger("atlas.test.backfill_requests")

        def tick(at: float) -> None:
            with freeze_time(at):
                list(execute_sensor_iteration(workspace, logger, None, None))

        tick(now)  # the run status sensor starts watching here
        params = {
            "selector": {"repositoryLocationName": "atlas", "repositoryName": "__repository__", "jobName": "ohlcv_binance_backfill"},
            "runConfigData": {"ops": {OP_CONFIG: {"config": {}}}},
            "executionMetadata": {"tags": []},
        }
        with freeze_time(now + 1):
            reply = execute_dagster_graphql(workspace.create_request_context(), LAUNCH_PIPELINE_EXECUTION_MUTATION,
                                            variables={"executionParams": params})
            assert reply.data["launchPipelineExecution"]["__typename"] == "LaunchRunSuccess", reply
            request_run = reply.data["launchPipelineExecution"]["run"]["runId"]
            instance.launch_run(request_run, workspace.create_request_context())  # as the run queue does
        assert instance.get_run_by_id(request_run).status == dg.DagsterRunStatus.SUCCESS
        tick(now + 40)
        runs = sorted((r for r in instance.get_runs() if r.job_name == "ohlcv_binance"), key=lambda r: r.tags[ASSET_PARTITION_RANGE_START_TAG])
        assert all(run.status == dg.DagsterRunStatus.QUEUED and run.tags[REQUEST_TAG] == request_run for run in runs)
        assert len(runs) == len(MARKETS)
        assert all(r.asset_selection == {dg.AssetKey(["binance", f"ohlcv_{tf}"]) for tf in ("1d", "1h")} for r in runs)
    defs = build_definitions(config, store_root=str(tmp_path / "store"))
    covered = [key for run in runs for key in _covered(defs, run.tags)]
    days = [(START + dt.timedelta(days=i)).isoformat() for i in range((TODAY - START).days + 1)]
    assert sorted(covered) == sorted(f"{day}|{m.replace('/', '-')}" for m in MARKETS for day in days)
