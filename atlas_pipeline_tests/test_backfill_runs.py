"""What a UI backfill of an OHLCV asset launches: bounded runs, one per market (or per day).

The backfill is launched as the UI launches it, with the ``launchPartitionBackfill`` GraphQL
mutation (``allPartitions`` for "Backfill all" on an asset with no common job, the partition names
otherwise), on Atlas's own code location loaded in a code server; then one iteration of the
backfill daemon's code submits its runs to a queued run coordinator, and the runs' partition range
tags say what each run covers.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance_for_test import instance_for_test
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from dagster_graphql.test.utils import execute_dagster_graphql

from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline_tests.support import write_exchange_config

REPO = Path(__file__).resolve().parents[1]
LOCATION = "atlas_pipeline"
MARKETS = ["AAA/USDT", "BBB/USDT", "CCC/USDT", "DDD/USDT"]
KEYS = [m.replace("/", "-") for m in MARKETS]
KEY = dg.AssetKey(["binance", "ohlcv_1h"])
TODAY = dt.datetime.now(dt.UTC).date()
START = TODAY - dt.timedelta(days=9)  # ten days with today: more days than markets
DAYS = [(START + dt.timedelta(days=i)).isoformat() for i in range(10)]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkspaceProcessContext]:
    config = write_exchange_config(
        tmp_path / "config", "http://127.0.0.1:9", markets=MARKETS, timeframes=["1h"], history_start=START.isoformat()
    )
    monkeypatch.setenv("ATLAS_CONFIG", str(config))  # read by the code server this starts
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "home"))
    queued = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}}
    with instance_for_test(overrides=queued) as instance:
        target = ModuleTarget("atlas_pipeline.definitions", "defs", str(REPO), LOCATION)
        with create_test_daemon_workspace_context(target, instance) as context:
            yield context


def _backfill(workspace: WorkspaceProcessContext, params: dict) -> list[tuple[str, str]]:
    """Launch a backfill with ``params`` and run one daemon iteration: the runs' (start, end) ranges."""
    reply = execute_dagster_graphql(
        workspace.create_request_context(), LAUNCH_PARTITION_BACKFILL_MUTATION, variables={"backfillParams": params}
    )
    assert reply.data["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", reply
    list(execute_backfill_iteration(workspace, logging.getLogger("atlas.test.backfill")))
    runs = workspace.instance.get_runs()
    assert all(run.status == dg.DagsterRunStatus.QUEUED for run in runs)
    return sorted((run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]) for run in runs)


def _covered(ranges: list[tuple[str, str]]) -> list[str]:
    """The partitions the runs' ranges resolve to (Dagster: a rectangle per range)."""
    partitions_def = build_definitions(os.environ["ATLAS_CONFIG"]).resolve_assets_def(KEY).partitions_def
    return [
        str(key)
        for start, end in ranges
        for key in partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(start, end))
    ]


def test_backfill_all_launches_one_run_per_market(workspace) -> None:
    """'Backfill all' (allPartitions): one run per market over all its days, not one for everything."""
    ranges = _backfill(workspace, {"assetSelection": [{"path": KEY.path}], "allPartitions": True})
    assert ranges == [(f"{DAYS[0]}|{key}", f"{DAYS[-1]}|{key}") for key in KEYS]


def test_the_ui_partition_selection_of_the_ohlcv_job_launches_one_run_per_market(workspace) -> None:
    """What the UI sends for an asset of the ``ohlcv_<exchange>`` job: the partition set and every key."""
    names = [f"{day}|{key}" for key in KEYS for day in DAYS]
    params = {
        "assetSelection": [{"path": KEY.path}],
        "partitionNames": names,
        "fromFailure": False,
        "selector": {
            "partitionSetName": "ohlcv_binance_partition_set",
            "repositorySelector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"},
        },
    }
    ranges = _backfill(workspace, params)
    assert ranges == [(f"{DAYS[0]}|{key}", f"{DAYS[-1]}|{key}") for key in KEYS]
    assert sorted(_covered(ranges)) == sorted(names)


def test_a_few_days_of_many_markets_launch_one_run_per_day(workspace) -> None:
    """Dagster splits along the dimension with fewer selected keys: 2 days x 4 markets gives two
    runs, each one day over the four markets (the daily schedule's shape)."""
    names = [f"{day}|{key}" for day in DAYS[-3:-1] for key in KEYS]
    ranges = _backfill(workspace, {"assetSelection": [{"path": KEY.path}], "partitionNames": names})
    assert ranges == [(f"{day}|{KEYS[0]}", f"{day}|{KEYS[-1]}") for day in DAYS[-3:-1]]
    assert sorted(_covered(ranges)) == sorted(names)
