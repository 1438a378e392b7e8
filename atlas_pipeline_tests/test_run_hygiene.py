"""Run hygiene through the real path (issue 8): ``atlas`` processes SIGKILLed mid-run leave STARTED
runs; the next ``atlas`` command, and the daemon's ``dead_runs`` sensor, mark them failed so the run
queue moves again; a strategy that ends its process fails its backtest instead of ending ``atlas``
with exit code 0 and no output.

Every test uses a real Dagster instance in a temporary DAGSTER_HOME (SQLite, QueuedRunCoordinator
with ``max_concurrent_runs: 2``) and real processes; the emulator holds klines replies (``timeout``
fault) so a fetch is mid-run when it is killed.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from dagster._core.utils import make_new_run_id
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from atlas_pipeline import CandleStore
from atlas_pipeline.defs.run_hygiene import (
    DEAD_RUNS_SENSOR,
    HOST_TAG,
    NOT_FINISHED,
    PID_TAG,
    PROCESS_START_TAG,
    dead_runs_sensor,
    fail_dead_runs,
    process_start,
    process_tags,
)
from atlas_pipeline.market_data.candles import DAY_MS
from atlas_pipeline.market_data.emulator import FileCandleSource
from atlas_pipeline_tests.e2e import DagsterDev, wait_for
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles, shared_candles, write_exchange_config
from atlas_pipeline_tests.test_e2e_dagster_dev import launch_run, range_tags, wait_for_run

MAX_RUNS = 2
DAGSTER_YAML = {
    "telemetry": {"enabled": False},
    "run_coordinator": {
        "module": "dagster._core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {"max_concurrent_runs": MAX_RUNS},
    },
}
HOLD_KLINES = "timeout:endpoint=klines,delay=600"
FETCH_DAY = ["--exchange", "binance", "--symbol", "ETH/BTC", "--timeframe", "5m", "--start", "2018-01-12", "--end", "2018-01-13"]


def atlas_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "atlas_pipeline.cli", *args]


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """Environment of a fresh ATLAS_HOME and DAGSTER_HOME (queue of ``MAX_RUNS``)."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(DAGSTER_YAML))
    return {**os.environ, "ATLAS_HOME": str(tmp_path / "atlas_home"), "DAGSTER_HOME": str(dagster_home)}


def open_instance(env: dict[str, str]) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(env["DAGSTER_HOME"])


def unfinished_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records(filters=RunsFilter(statuses=NOT_FINISHED))]


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    [event] = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    return event.dagster_event.message


def kill_fetches_mid_run(env: dict[str, str], tmp_path: Path, server, count: int = MAX_RUNS) -> list[dg.DagsterRun]:
    """Start ``count`` ``atlas fetch`` processes whose klines requests the emulator holds, wait until
    their runs are STARTED and waiting on the exchange, SIGKILL them; their runs (the instance is new)."""
    instance = open_instance(env)
    logs = [tmp_path / f"fetch{i}.log" for i in range(count)]
    processes = []
    for log in logs:
        with open(log, "wb") as stderr:
            processes.append(subprocess.Popen(atlas_command("fetch", *FETCH_DAY), env=env, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=stderr))
    try:
        def all_mid_run() -> bool:
            for process, log in zip(processes, logs):
                assert process.poll() is None, f"atlas fetch ended early:\n{log.read_text()}"
            started = [run for run in unfinished_runs(instance) if run.status == DagsterRunStatus.STARTED]
            return len(started) == count and server.stats["requests"].get("klines", 0) >= count

        wait_for(all_mid_run, 120, f"{count} atlas fetch runs to be STARTED and waiting on klines", interval=0.5)
    finally:
        for process in processes:
            process.send_signal(signal.SIGKILL)
            process.wait()
    killed = unfinished_runs(instance)
    assert len(killed) == count
    assert {run.status for run in killed} == {DagsterRunStatus.STARTED}  # nothing notices the processes are gone
    assert {run.tags.get(PID_TAG) for run in killed} <= {str(p.pid) for p in processes} | {None}
    return killed


@dg.op
def nothing() -> None:
    pass


@dg.job
def queued_job() -> None:
    nothing()


def queued_run() -> dg.DagsterRun:
    """A run as the UI queues it (the dequeue step only reads its status, tags and location)."""
    location = GrpcServerCodeLocationOrigin(host="localhost", port=1, location_name="atlas_pipeline")
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), "queued_job")
    return dg.DagsterRun(job_name="queued_job", run_id=make_new_run_id(), status=DagsterRunStatus.QUEUED,
                         remote_job_origin=origin)


def dequeued_run_ids(instance: dg.DagsterInstance) -> list[str]:
    """What the QueuedRunCoordinator daemon's dequeue step would launch now."""
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=5)
    runs = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), fixed_iteration_time=None)
    return [run.run_id for run in runs]


@needs_shared_candles
def test_the_next_atlas_command_fails_runs_of_killed_processes_and_the_queue_moves(
    home: dict[str, str], tmp_path: Path, emulator_factory
) -> None:
    server = emulator_factory(FileCandleSource(SHARED_CANDLES), faults=[HOLD_KLINES])
    env = {**home, "ATLAS_CONFIG": str(write_exchange_config(tmp_path / "config", server.base_url, timeout_seconds=300, max_retries=0))}
    killed = kill_fetches_mid_run(env, tmp_path, server)
    instance = open_instance(env)
    queued = instance.add_run(queued_run())
    assert dequeued_run_ids(instance) == []  # "2 runs are currently in progress. Maximum is 2"

    server.clear_faults()
    healthy = subprocess.run(atlas_command("fetch", *FETCH_DAY), env=env, capture_output=True, text=True, timeout=300)
    assert healthy.returncode == 0, healthy.stderr
    for run in killed:
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        pid = run.tags[PID_TAG]
        message = failure_message(instance, run.run_id)
        assert f"pid {pid} on {process_tags()[HOST_TAG]}" in message and "is gone" in message, message
        assert f"atlas: run {run.run_id} (ohlcv_binance) marked failed: its process {pid} is gone" in healthy.stderr
    assert dequeued_run_ids(instance) == [queued.run_id]


@needs_shared_candles
def test_the_daemon_sensor_fails_runs_of_killed_processes_so_a_queued_ui_run_launches(
    home: dict[str, str], tmp_path: Path, emulator_factory
) -> None:
    """`atlas ui` (dagster dev: webserver + daemon) is up before the fetches are killed, so only its
    daemon can heal the queue; a run launched from the UI is QUEUED behind the dead runs until then."""
    server = emulator_factory(FileCandleSource(SHARED_CANDLES), faults=[HOLD_KLINES])
    env = {
        **home, "ATLAS_SENSOR_INTERVAL_SECONDS": "5",
        "ATLAS_CONFIG": str(write_exchange_config(tmp_path / "config", server.base_url, timeout_seconds=300, max_retries=0)),
    }
    dev = DagsterDev(env, tmp_path / "dagster_dev.log")
    try:
        dev.start(timeout=180)
        killed = kill_fetches_mid_run(env, tmp_path, server)
        server.clear_faults()
        run_id = launch_run(dev, "ohlcv_binance", [["binance", "ohlcv_5m"]], range_tags("2018-01-12|ETH-BTC", "2018-01-12|ETH-BTC"))
        began = time.monotonic()
        wait_for_run(dev, run_id, timeout=150)  # the sensor ticks every 5 s here; before the fix, QUEUED forever
        print(f"queued UI run finished {time.monotonic() - began:.1f} s after its launch")
    finally:
        dev.stop()
    instance = open_instance(env)
    for run in killed:
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        message = failure_message(instance, run.run_id)
        assert f"the {DEAD_RUNS_SENSOR} sensor" in message and f"pid {run.tags[PID_TAG]}" in message, message


STRATEGY = """
import os, signal, sys
import backtrader as bt


class Ends(bt.Strategy):
    def next(self):
        if len(self) > 50:
            {ending}
"""


@needs_shared_candles
@pytest.mark.parametrize(
    ("ending", "reason"),
    [("os._exit(0)", "exit code 0"), ("os.kill(os.getpid(), signal.SIGKILL)", "signal SIGKILL"), ("sys.exit(0)", "SystemExit: 0")],
)
def test_a_strategy_that_ends_its_process_fails_the_backtest_with_one_line(tmp_path: Path, ending: str, reason: str) -> None:
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    (strategies / "ends.py").write_text(STRATEGY.format(ending=ending))
    config = write_exchange_config(tmp_path / "config", "http://127.0.0.1:9")
    (config / "backtests.yaml").write_text(yaml.safe_dump({"backtests": {"ends": {
        "strategy": "ends", "exchange": "binance", "timeframe": "5m", "symbols": ["ETH/BTC"],
        "period": {"start": "2018-01-10", "end": "2018-01-13"},
    }}}))
    candles = shared_candles("binance_ETH-BTC_5m")
    days = {dt.date(2018, 1, 10) + dt.timedelta(days=i): None for i in range(3)}
    for day in days:
        start = (day - dt.date(1970, 1, 1)).days * DAY_MS
        days[day] = candles[(candles["timestamp"] >= start) & (candles["timestamp"] < start + DAY_MS)]
    CandleStore(str(tmp_path / "atlas_home")).write_days("binance", "ETH/BTC", "5m", days, complete=True)
    env = {  # DAGSTER_HOME unset: the CLI's own dagster.yaml (with run monitoring) must load
        **os.environ, "ATLAS_HOME": str(tmp_path / "atlas_home"), "ATLAS_CONFIG": str(config),
        "ATLAS_STRATEGIES": str(strategies), "DAGSTER_HOME": "",
    }
    result = subprocess.run(atlas_command("backtest", "ends"), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    last = result.stderr.strip().splitlines()[-2]  # then where the full log is
    assert last.startswith("atlas: failed: ends ETH/BTC: ends/backtest ETH/BTC: strategy 'ends'") and reason in last, last
    assert "## ends" not in result.stdout  # no result printed
    instance = dg.DagsterInstance.from_config(str(tmp_path / "atlas_home" / "dagster_home"))
    assert instance.get_run_records(filters=RunsFilter(statuses=NOT_FINISHED)) == []
    statuses = sorted(r.dagster_run.status.value for r in instance.get_run_records())
    assert statuses == ["FAILURE", "SUCCESS"], statuses  # the backtest failed; the leaderboard ran


def test_fail_dead_runs_fails_only_unfinished_runs_of_gone_processes_on_this_host() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    sleeper_start = process_start(sleeper.pid)
    assert sleeper_start
    sleeper.kill()
    wait_for(lambda: process_start(sleeper.pid) is None, 10, "the killed process to be a zombie", interval=0.05)
    assert sleeper.poll() is not None  # a zombie counted as gone before its parent reaps it
    assert process_start(sleeper.pid) is None

    me = process_tags()
    dead = {HOST_TAG: me[HOST_TAG], PID_TAG: str(sleeper.pid), PROCESS_START_TAG: sleeper_start}
    reused_pid = {**me, PROCESS_START_TAG: me[PROCESS_START_TAG] + "0"}  # this pid, another start
    with dg.instance_for_test() as instance:
        def run(tags: dict[str, str], status: DagsterRunStatus) -> str:
            return instance.create_run_for_job(queued_job, tags=tags, status=status).run_id

        gone = run(dead, DagsterRunStatus.STARTED)
        starting = run(dead, DagsterRunStatus.STARTING)
        not_started = run(dead, DagsterRunStatus.NOT_STARTED)
        canceling = run(dead, DagsterRunStatus.CANCELING)
        reused = run(reused_pid, DagsterRunStatus.STARTED)
        finished = run(dead, DagsterRunStatus.SUCCESS)
        alive = run(me, DagsterRunStatus.STARTED)
        elsewhere = run({**dead, HOST_TAG: "another-host"}, DagsterRunStatus.STARTED)
        untagged = run({}, DagsterRunStatus.STARTED)

        failed = fail_dead_runs(instance, reporter="the test")
        assert sorted(r.run_id for r in failed) == sorted([gone, starting, not_started, canceling, reused])
        status = lambda run_id: instance.get_run_by_id(run_id).status  # noqa: E731
        assert {status(r) for r in (gone, starting, not_started, reused)} == {DagsterRunStatus.FAILURE}
        assert status(canceling) == DagsterRunStatus.CANCELED
        assert status(finished) == DagsterRunStatus.SUCCESS
        assert {status(r) for r in (alive, elsewhere, untagged)} == {DagsterRunStatus.STARTED}
        assert f"pid {sleeper.pid} on {me[HOST_TAG]}" in failure_message(instance, gone)

        again = run(dead, DagsterRunStatus.STARTED)  # the sensor does the same on each tick
        skip = dead_runs_sensor()(dg.build_sensor_context(instance=instance))
        assert again in skip.skip_message and status(again) == DagsterRunStatus.FAILURE
        assert dead_runs_sensor().default_status == dg.DefaultSensorStatus.RUNNING
