"""Daily schedule tick: the scheduler daemon's own code on a frozen clock, at N markets.

Run: ``.venv/bin/python bench/schedule_tick.py [--markets 500] [--timeframes 1m,1h,1d]
[--start 2017-01-01] [--postgres-url URL] [--execute]``. It writes a config of N markets, loads
Atlas's code location in a code server (as the daemon does), and on an instance with a queued run
coordinator (runs are created and queued, not launched) lets ``launch_scheduled_runs`` evaluate
``ohlcv_binance_daily`` at 00:15:30 UTC: prints the tick's wall time, the runs it queued and the
partitions they cover (bar: < 30 s at 500 markets x 3 timeframes since 2017 on PostgreSQL).
``--execute`` then runs each queued run in-process (its tags, its asset selection) against the
synthetic emulator and prints each run's time and its Dagster bookkeeping (run time minus Atlas's
own stages). Production settings: ``DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true`` and
``DAGSTER_EVENT_BATCH_SIZE`` as the Dockerfile sets them (override them in the environment).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")

import dagster as dg  # noqa: E402
import yaml  # noqa: E402
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG  # noqa: E402
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time  # noqa: E402
from dagster._core.workspace.load_target import ModuleTarget  # noqa: E402
from dagster._scheduler.scheduler import launch_scheduled_runs  # noqa: E402

from atlas_pipeline.defs.definitions import build_definitions  # noqa: E402
from atlas_pipeline.market_data.emulator import EmulatorServer, SyntheticCandleSource  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCHEDULE = "ohlcv_binance_daily"
TICK_BAR_SECONDS = 30.0
QUEUED = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}}

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def markets(count: int) -> list[str]:
    return [f"M{i:03d}/USDT" for i in range(count)]


def write_config(folder: Path, count: int, timeframes: list[str], start: dt.date, api_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entry = {
        "timeframes": timeframes,
        "markets": markets(count),
        "history_start": start.isoformat(),
        "api_url": api_url,
        "min_request_interval_ms": 0,
    }
    (folder / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": {"binance": entry}}))
    return folder


def instance_for(folder: Path, postgres_url: str | None) -> dg.DagsterInstance:
    overrides: dict = {**QUEUED, "telemetry": {"enabled": False}}
    if postgres_url:
        if postgres_url.startswith(("postgresql://", "postgres://")):
            postgres_url = "postgresql+psycopg2://" + postgres_url.split("://", 1)[1]
        overrides["storage"] = {"postgres": {"postgres_url": postgres_url}}
    folder.mkdir(parents=True)
    return dg.DagsterInstance.local_temp(str(folder), overrides=overrides)


def tick(args: argparse.Namespace, work: Path, api_url: str) -> tuple[float, list[dg.DagsterRun]]:
    """Evaluate the daily schedule once at 00:15:30 UTC today; the wall time and the queued runs."""
    config = write_config(work / "config", args.markets, args.timeframes, args.start, api_url)
    os.environ["ATLAS_CONFIG"], os.environ["ATLAS_HOME"] = str(config), str(work / "home")
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    logger = logging.getLogger("atlas.bench.schedule")
    with instance_for(work / "instance", args.postgres_url) as instance:
        target = ModuleTarget("atlas_pipeline.definitions", "defs", str(REPO), "atlas_pipeline")
        with create_test_daemon_workspace_context(target, instance) as workspace:
            workspace.create_request_context()  # the code server is up before the clock starts
            with freeze_time(today + dt.timedelta(minutes=10)):  # the daemon first sees the schedule
                list(launch_scheduled_runs(workspace, logger, today + dt.timedelta(minutes=10), {}))
            began = time.perf_counter()
            with freeze_time(today + dt.timedelta(minutes=15, seconds=30)):
                list(launch_scheduled_runs(workspace, logger, today + dt.timedelta(minutes=15, seconds=30), {}))
            seconds = time.perf_counter() - began
            return seconds, list(instance.get_runs())


def execute(args: argparse.Namespace, work: Path, runs: list[dg.DagsterRun]) -> None:
    """Each queued run in-process, as a run worker would run it, into a fresh store and instance."""
    defs = build_definitions(os.environ["ATLAS_CONFIG"], str(work / "store"))
    job = defs.resolve_job_def("ohlcv_binance")
    with instance_for(work / "instance-execute", args.postgres_url and args.postgres_url + "_execute") as instance:
        for run in runs:
            began = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                tags={k: v for k, v in run.tags.items() if k in (ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG)},
                asset_selection=list(run.asset_selection or []),
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                raise_on_error=False,
            )
            seconds = time.perf_counter() - began
            events = result.get_asset_materialization_events()
            own = sum(
                float(value.value)
                for name, value in events[0].materialization.metadata.items()
                if name.startswith("seconds_")
            ) if events else 0.0
            print(f"  run {run.tags[ASSET_PARTITION_RANGE_START_TAG]}..{run.tags[ASSET_PARTITION_RANGE_END_TAG]} "
                  f"{'/'.join(k.path[-1] for k in run.asset_selection or [])}: {seconds:.1f} s, {len(events):,} partitions, "
                  f"{'success' if result.success else 'FAILED'}; Atlas's own stages {own:.1f} s, "
                  f"Dagster bookkeeping {seconds - own:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--markets", type=int, default=500)
    parser.add_argument("--timeframes", type=lambda v: v.split(","), default=["1m", "1h", "1d"])
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2017, 1, 1))
    parser.add_argument("--postgres-url", help="a dagster-postgres instance (its tables are created if missing)")
    parser.add_argument("--execute", action="store_true", help="also run the queued runs in-process against the emulator")
    args = parser.parse_args()
    storage = "PostgreSQL" if args.postgres_url else "SQLite"
    print(f"{SCHEDULE} at {args.markets} markets x {len(args.timeframes)} timeframes ({','.join(args.timeframes)}) since "
          f"{args.start}, {storage}; DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS="
          f"{os.environ['DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS']} DAGSTER_EVENT_BATCH_SIZE={os.environ['DAGSTER_EVENT_BATCH_SIZE']}")
    with tempfile.TemporaryDirectory(prefix="atlas-schedule-bench-") as folder:
        work = Path(folder)
        emulator_markets = {market: args.start.isoformat() for market in markets(args.markets)}
        with EmulatorServer(SyntheticCandleSource(1, markets=emulator_markets)) as emulator:
            seconds, runs = tick(args, work, emulator.base_url)
            partitions = 0
            for run in runs:
                first, last = run.tags[ASSET_PARTITION_RANGE_START_TAG], run.tags[ASSET_PARTITION_RANGE_END_TAG]
                partitions += int(run.tags.get("atlas/markets", 0))
                print(f"  queued: {first} .. {last} ({'/'.join(k.to_user_string() for k in run.asset_selection or [])})")
            ok = seconds < TICK_BAR_SECONDS
            print(f"  tick: {seconds:.1f} s for {len(runs)} runs covering {partitions:,} partitions "
                  f"(bar < {TICK_BAR_SECONDS:g} s{'' if ok else ': MISSED'})", flush=True)
            if args.execute:
                execute(args, work, runs)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
