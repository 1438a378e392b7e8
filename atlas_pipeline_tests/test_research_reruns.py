"""The ``research_reruns`` sensor: reruns read from materializations since a storage-id cursor.

Its everyday guarantees (exactly the changed markets, partitions never run left alone, no rerun of
a backtest already run by hand) are tested in ``test_research_assets.py``; here: blocking checks,
unfinished runs, the leaderboard, the settle delay, and that a tick never enumerates partitions.
"""

from __future__ import annotations

import datetime as dt
import shutil

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.test_utils import create_run_for_test

from atlas_pipeline.config import load_exchanges_config
from atlas_pipeline.config.backtests import load_backtests_config
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.research.assets import LEADERBOARD_KEY, backtest_asset_key, metrics_asset_key
from atlas_pipeline.defs.research.automation import SETTLE_ENV, rerun_tick, settle_seconds
from atlas_pipeline.defs.research.reruns import RerunCursor, rerun_graph
from atlas_pipeline.market_data.emulator import FileCandleSource
from atlas_pipeline.market_data.emulator.faults import FaultRule
from atlas_pipeline_tests.e2e import REPO_ROOT
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles, run_range, write_exchange_config
from atlas_pipeline_tests.test_research_assets import (  # noqa: F401  (setup is a fixture)
    OHLCV,
    PEEKING_STRATEGY,
    SMA,
    SMA_SETTINGS,
    materialize_research,
    requested,
    sensor_tick,
    candles_template,
    setup,
    write_backtests,
)

pytestmark = needs_shared_candles

D = dt.date
BACKTEST = backtest_asset_key(SMA)
METRICS = metrics_asset_key(SMA)


def materialized(defs: dg.Definitions, instance, partition: str = "ETH-BTC") -> None:
    assert materialize_research(defs, instance, SMA, partition).success


def report_candles(instance, run_id: str, day: str = "2018-01-20", market: str = "ETH-BTC") -> None:
    """A candle materialization stored under ``run_id`` (as a run writes it)."""
    event = DagsterEvent(
        DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="ohlcv_binance",
        event_specific_data=StepMaterializationData(dg.AssetMaterialization(asset_key=OHLCV, partition=f"{day}|{market}")),
    )
    instance.report_dagster_event(event, run_id)


def finish(instance, run_id: str, status: DagsterEventType) -> None:
    instance.report_dagster_event(DagsterEvent(status.value, job_name="ohlcv_binance"), run_id)


def test_a_failed_candle_run_triggers_nothing(setup, emulator_factory) -> None:
    """A blocking check failing on candles fails the run before any materialization is recorded:
    in the events, a failed ``ASSET_CHECK_EVALUATION`` and a ``STEP_FAILURE``, no ``ASSET_MATERIALIZATION``."""
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    materialized(defs, instance)
    quiet = sensor_tick(defs, instance)

    faulty = emulator_factory(FileCandleSource(SHARED_CANDLES), faults=[FaultRule(kind="bad_ohlc", endpoint="klines")])
    write_exchange_config(config_dir, faulty.base_url)
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 20), D(2018, 1, 21), full_refresh=True)
    assert not run.success
    assert not next(e for e in run.result.get_asset_check_evaluations() if e.check_name == "ohlc_sanity").passed
    assert run.result.get_asset_materialization_events() == []

    assert sensor_tick(defs, instance, quiet.cursor).run_requests == []


def test_a_run_with_a_failed_blocking_check_feeds_no_rerun(setup, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backtest whose ``lookahead_bias`` check fails *is* materialized, in a failed run: its metrics
    (materialized before) must not rerun. A backtest run alone by hand does rerun its metrics."""
    config_dir, store_root, instance = setup
    strategies = tmp_path / "peeking_strategies"
    strategies.mkdir()
    (strategies / "peeks.py").write_text(PEEKING_STRATEGY)
    shutil.copy(REPO_ROOT / "strategies" / "sma_crossover.py", strategies)
    monkeypatch.setenv("ATLAS_STRATEGIES", str(strategies))
    write_backtests(config_dir, {SMA: SMA_SETTINGS, "peeks": {**SMA_SETTINGS, "strategy": "peeks"}})
    defs = build_definitions(config_dir, store_root=str(store_root))
    materialized(defs, instance)
    instance.report_runless_asset_event(dg.AssetMaterialization(metrics_asset_key("peeks"), partition="ETH-BTC"))
    quiet = sensor_tick(defs, instance)

    peeking = materialize_research(defs, instance, "peeks", "ETH-BTC")
    assert not peeking.success and len(peeking.get_asset_materialization_events()) == 1  # the backtest only
    assert dg.materialize([defs.resolve_assets_def(BACKTEST)], instance=instance, partition_key="ETH-BTC").success
    tick = sensor_tick(defs, instance, quiet.cursor)
    # peeks/metrics is not requested: the run that changed peeks/backtest failed its blocking check
    assert [(r.partition_key, r.asset_selection) for r in tick.run_requests] == [("ETH-BTC", [METRICS])]


def test_changes_wait_until_their_run_finished_and_are_never_dropped(setup) -> None:
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    materialized(defs, instance)
    materialized(defs, instance, "ADA-BTC")
    quiet = sensor_tick(defs, instance)

    running = create_run_for_test(instance, job_name="ohlcv_binance", status=dg.DagsterRunStatus.STARTED).run_id
    report_candles(instance, running)
    waiting = sensor_tick(defs, instance, quiet.cursor)
    assert waiting.run_requests == [] and "waiting on 1 unfinished run" in waiting.skip_message
    # the cursor moved past the event; the change waits in the cursor, read once
    still = sensor_tick(defs, instance, waiting.cursor)
    assert still.run_requests == []

    finish(instance, running, DagsterEventType.RUN_SUCCESS)
    done = sensor_tick(defs, instance, still.cursor)
    assert requested(done, BACKTEST) == {"ETH-BTC"}

    # a failed run whose blocking candle check failed, naming no market: its materializations feed nothing
    failed_run(instance, ["ETH-BTC", "ADA-BTC"], failed_markets=None)
    rejected = sensor_tick(defs, instance, done.cursor)
    assert rejected.run_requests == [] and "2 from runs with failed blocking checks" in rejected.skip_message
    # naming the markets it failed on (as a range run's OHLCV checks do): the others were validated
    failed_run(instance, ["ETH-BTC", "ADA-BTC"], failed_markets=["ADA-BTC"])
    partly = sensor_tick(defs, instance, rejected.cursor)
    assert requested(partly, BACKTEST) == {"ETH-BTC"}


def failed_run(instance, markets: list[str], failed_markets: list[str] | None) -> str:
    """A finished, failed candle run that materialized ``markets`` and failed a blocking check."""
    run_id = create_run_for_test(instance, job_name="ohlcv_binance", status=dg.DagsterRunStatus.STARTED).run_id
    for market in markets:
        report_candles(instance, run_id, market=market)
    check = dg.AssetCheckEvaluation(
        asset_key=OHLCV, check_name="ohlc_sanity", passed=False, severity=dg.AssetCheckSeverity.ERROR, blocking=True,
        metadata={} if failed_markets is None else {"failed_markets": dg.MetadataValue.json(failed_markets)},
    )
    instance.report_dagster_event(
        DagsterEvent(DagsterEventType.ASSET_CHECK_EVALUATION.value, job_name="ohlcv_binance", event_specific_data=check),
        run_id,
    )
    finish(instance, run_id, DagsterEventType.RUN_FAILURE)
    return run_id


def test_a_market_waits_while_another_run_still_writes_its_candles(setup) -> None:
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    materialized(defs, instance)
    quiet = sensor_tick(defs, instance)
    done = create_run_for_test(instance, job_name="ohlcv_binance", status=dg.DagsterRunStatus.STARTED).run_id
    later = create_run_for_test(instance, job_name="ohlcv_binance", status=dg.DagsterRunStatus.STARTED).run_id
    report_candles(instance, done, "2018-01-20")
    report_candles(instance, later, "2018-01-21")
    finish(instance, done, DagsterEventType.RUN_SUCCESS)
    held = sensor_tick(defs, instance, quiet.cursor)
    assert held.run_requests == []
    finish(instance, later, DagsterEventType.RUN_SUCCESS)
    assert len(sensor_tick(defs, instance, held.cursor).run_requests) == 1  # one run for both changes


def test_a_queued_rerun_of_the_partition_takes_the_change(setup) -> None:
    """A run of the partition that has not started yet will read the new candles: no second run."""
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    materialized(defs, instance)
    quiet = sensor_tick(defs, instance)
    create_run_for_test(
        instance, job_name="__ASSET_JOB", status=dg.DagsterRunStatus.NOT_STARTED,  # (QUEUED needs a code location)
        tags={"dagster/partition": "ETH-BTC"}, asset_selection=frozenset({BACKTEST, METRICS}),
    )
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 20), D(2018, 1, 21), full_refresh=True)
    assert run.success
    tick = sensor_tick(defs, instance, quiet.cursor)
    assert tick.run_requests == [] and "1 already rerun" in tick.skip_message


def test_the_leaderboard_reruns_once_after_the_metrics_runs_finished(setup) -> None:
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    materialized(defs, instance)
    assert dg.materialize([defs.resolve_assets_def(LEADERBOARD_KEY)], instance=instance).success
    quiet = sensor_tick(defs, instance)

    pending = create_run_for_test(
        instance, job_name="__ASSET_JOB", status=dg.DagsterRunStatus.NOT_STARTED,  # (QUEUED needs a code location)
        tags={"dagster/partition": "ADA-BTC"}, asset_selection=frozenset({BACKTEST, METRICS}),
    )
    materialized(defs, instance)  # new metrics for ETH-BTC, by hand, while ADA-BTC's run is queued
    held = sensor_tick(defs, instance, quiet.cursor)
    assert held.run_requests == [] and "held until its inputs' runs finish: leaderboard" in held.skip_message
    instance.report_run_canceled(pending)
    [request] = sensor_tick(defs, instance, held.cursor).run_requests
    assert request.asset_selection == [LEADERBOARD_KEY] and request.partition_key is None


def test_with_a_settle_delay_a_tick_reads_only_ids_that_existed_that_long_ago(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL, ids are allocated at insert and may commit out of order; reading only ids that
    existed ``settle`` seconds ago leaves every lower insert time to commit."""
    config_dir, store_root, instance = setup
    monkeypatch.setenv(SETTLE_ENV, "10")
    assert settle_seconds(instance) == 10
    defs = build_definitions(config_dir, store_root=str(store_root))
    materialized(defs, instance)
    exchanges = load_exchanges_config(config_dir)
    graph = rerun_graph(load_backtests_config(exchanges, config_dir).backtests.values(), exchanges.exchanges)
    first = rerun_tick(instance, graph, None, now=1_000.0)
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 20), D(2018, 1, 21), full_refresh=True)
    assert run.success
    marked = rerun_tick(instance, graph, first.cursor.to_json(), now=1_005.0)  # records the newest id
    assert marked.events_read == 0 and marked.run_requests == []
    early = rerun_tick(instance, graph, marked.cursor.to_json(), now=1_014.0)  # that id is only 9 s old
    assert early.events_read == 0
    ripe = rerun_tick(instance, graph, early.cursor.to_json(), now=1_016.0)
    assert ripe.events_read == 1 and requested(ripe, BACKTEST) == {"ETH-BTC"}
    monkeypatch.delenv(SETTLE_ENV)
    assert settle_seconds(instance) == 0  # SQLite: one writer, ids commit in order


def test_a_tick_never_enumerates_partitions(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Costs follow the new events: neither the day dimension nor the date x market rectangle is listed."""
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    materialized(defs, instance)
    quiet = sensor_tick(defs, instance)
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 20), D(2018, 1, 21), full_refresh=True)
    assert run.success

    def forbidden(*args, **kwargs):
        raise AssertionError("a rerun tick enumerated partitions")

    for cls in (dg.MultiPartitionsDefinition, dg.TimeWindowPartitionsDefinition):
        for name in ("get_partition_keys", "get_num_partitions", "get_partition_keys_in_range"):
            monkeypatch.setattr(cls, name, forbidden)
    assert requested(sensor_tick(defs, instance, quiet.cursor), BACKTEST) == {"ETH-BTC"}


def test_a_tick_requests_at_most_max_runs_and_keeps_the_rest_for_the_next(setup) -> None:
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    materialized(defs, instance)
    materialized(defs, instance, "ADA-BTC")
    exchanges = load_exchanges_config(config_dir)
    graph = rerun_graph(load_backtests_config(exchanges, config_dir).backtests.values(), exchanges.exchanges)
    quiet = rerun_tick(instance, graph, None)
    for symbol in ("ADA/BTC", "ETH/BTC"):  # ADA-BTC's candles change first
        [run] = run_range(config_dir, store_root, instance, [symbol], D(2018, 1, 20), D(2018, 1, 21), full_refresh=True)
        assert run.success
    first = rerun_tick(instance, graph, quiet.cursor.to_json(), max_runs=1)
    assert [r.partition_key for r in first.run_requests] == ["ADA-BTC"]
    assert "1 market(s) left for the next ticks" in first.message()
    second = rerun_tick(instance, graph, first.cursor.to_json(), max_runs=1)
    assert [r.partition_key for r in second.run_requests] == ["ETH-BTC"]
    assert rerun_tick(instance, graph, second.cursor.to_json(), max_runs=1).run_requests == []


def test_a_cursor_of_another_format_starts_afresh(setup) -> None:
    _, _, instance = setup
    cursor = RerunCursor.parse('{"some": "declarative automation cursor"}', instance)
    assert cursor.origin == instance.event_log_storage.get_maximum_record_id()
    # A version-1 cursor names the asset keys of before the rename (backtest/<name>): not read.
    old = RerunCursor(origin=0, backlog={"backtest/sma_5m|ETH-BTC": [1, 1.0]}).to_json().replace('"v":2', '"v":1')
    assert RerunCursor.parse(old, instance).backlog == {}


def test_reruns_run_in_one_job_per_exchange_entry(setup) -> None:
    """Backtests on two exchange entries, one listing its markets and one choosing them by universe
    rules: their research assets have different market partitions, which one Dagster job cannot
    hold (the definitions failed to load). Each entry's reruns run in its own job."""
    import yaml

    config_dir, store_root, instance = setup
    exchanges = yaml.safe_load((config_dir / "exchanges.yaml").read_text())
    exchanges["exchanges"]["okx"] = {**exchanges["exchanges"]["binance"], "markets": [], "universe": {"quote": ["BTC"]}}
    (config_dir / "exchanges.yaml").write_text(yaml.safe_dump(exchanges))
    write_backtests(config_dir, {SMA: SMA_SETTINGS, "sma_okx": {**SMA_SETTINGS, "exchange": "okx", "symbols": ["ETH/BTC"]}})
    defs = build_definitions(config_dir, store_root=str(store_root))
    jobs = {job.name: job for job in defs.get_repository_def().get_all_jobs()}
    assert set(jobs["research_reruns_okx"].asset_layer.executable_asset_keys) == {
        backtest_asset_key("sma_okx"), metrics_asset_key("sma_okx")
    }
    assert set(jobs["research_reruns_unpartitioned"].asset_layer.executable_asset_keys) == {LEADERBOARD_KEY}

    materialized(defs, instance)
    quiet = sensor_tick(defs, instance)
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 20), D(2018, 1, 21), full_refresh=True)
    assert run.success
    [request] = sensor_tick(defs, instance, quiet.cursor).run_requests
    assert (request.job_name, request.partition_key) == ("research_reruns_binance", "ETH-BTC")
    assert set(request.asset_selection) == {BACKTEST, METRICS}
