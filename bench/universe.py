"""Universe scale probes (issue 9, DESIGN.md section 12): N synthetic markets x 1d+1h+1m since 2017,
two backtests over all markets, a fresh Dagster instance per N, PostgreSQL by default.

Run: ``.venv/bin/python bench/universe.py [--markets 25,100,500] [--postgres-url URL | --no-postgres]
[--sqlite] [--no-daemon] [--skip-all-names] [--profile-launch] [--bookkeeping-timeframes 1d,1h,1m]``. Without
``--postgres-url`` it starts a throwaway PostgreSQL server as the tests do
(``atlas_pipeline_tests/postgres_server.py``). One function per measurement, a table at the end:

- definitions load: ``build_definitions`` + the asset graph, in this process;
- ``rerun_trigger``: the ``research_reruns`` sensor after every market got a new day, and with
  nothing new (bar at 500: < 10 s and < 1 GB; < 2 s), and that it requested exactly the changed
  partitions (details below);
- ``schedule``: the daily schedule's tick with the scheduler daemon's code (``bench/schedule_tick.py``;
  bar < 30 s);
- ``ui``: a real ``dagster-webserver`` on the universe's instance, POSTed what the UI sends
  (``bench/ui_graphql.py``): Dagster's backfill launch for a range chosen in the dialog (one market
  since 2017), for every partition ("Backfill all": every name, as the dialog sends it for an asset
  of the ``ohlcv_<exchange>`` job; skip with ``--skip-all-names``) and ``allPartitions`` (assets
  without a common job), Atlas's backfill request (the launchpad launching
  ``ohlcv_<exchange>_backfill``; bar < 5 s) and the sensor turning it into one run per market,
  and the asset page's partition health query, cold and cached (bar < 1 s); ``--profile-launch``:
  Dagster's launch for one market again, in-process under cProfile (where its time goes);
- ``bookkeeping``: a 2017 -> today backfill of one market per timeframe through the real asset
  (``bench/ingest.py``'s run), minus Atlas's own stages (bar on PostgreSQL for 1h: <= 10 s);
  once per storage, it does not depend on N.

``rerun_trigger`` in detail: every backtest and metrics partition has been materialized before
(reported runless: the sensor only reads the event log); then every market gets a new day of
candles from successful runs, one per timeframe over every market as the daily schedule requests
them (``--run-per-market``: one per market), runs and events written directly (no fetching).
Timed twice, tick after tick until every market's rerun was requested (at most
``MAX_RUNS_PER_TICK`` runs a tick): (a) the sensor evaluated in-process as the daemon's code server
does (``evaluate_tick``), peak RSS of that evaluation (the process high-water mark reset just
before it); (b) unless ``--no-daemon``, the sensor daemon's real iterations on a frozen clock with
a ``QueuedRunCoordinator``, i.e. including Dagster creating and queueing the requested runs.

The event log holds only what the bench writes (the sensor selects by asset key and storage id,
indexed; the partition health query reads the asset's status cache, built from its events).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import resource
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.research.assets import LEADERBOARD_KEY, backtest_asset_key, metrics_asset_key
from atlas_pipeline.defs.research.automation import RESEARCH_AUTOMATION_SENSOR
from atlas_pipeline.defs.research.reruns import MAX_RUNS_PER_TICK
from atlas_pipeline.market_data.candles import symbol_key
from atlas_pipeline.market_data.emulator import EmulatorServer, SyntheticCandleSource

EXCHANGE = "binance"
TIMEFRAMES = ("1d", "1h", "1m")
HISTORY_START = dt.date(2017, 1, 1)
SEED = 7
BACKTESTS = {  # two backtests over all markets, one per timeframe
    "sma_1d": {"strategy": "sma_crossover", "params": {"fast": 10, "slow": 30}, "timeframe": "1d"},
    "sma_1h": {"strategy": "sma_crossover", "params": {"fast": 20, "slow": 50}, "timeframe": "1h"},
}
TICK_BAR_SECONDS = 10.0
TICK_BAR_MB = 1024
QUIET_BAR_SECONDS = 2.0
LAUNCH_BAR_SECONDS = 5.0
STATUS_BAR_SECONDS = 1.0
NO_TELEMETRY = {"telemetry": {"enabled": False}}
QUEUED_RUNS = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}}

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


# --- the universe -----------------------------------------------------------------------------


@dataclass
class Universe:
    markets: list[str]  # ccxt symbols
    config_dir: Path
    store_root: Path
    defs_file: Path  # a code location file for the daemon measurements
    defs: dg.Definitions
    instance: dg.DagsterInstance
    storage: str  # "SQLite" or "PostgreSQL"
    definitions_seconds: float
    home: Path  # the instance's DAGSTER_HOME (its dagster.yaml)
    postgres_url: str | None  # the server's admin URL (fresh databases for other sections)

    @property
    def market_keys(self) -> list[str]:
        return [symbol_key(market) for market in self.markets]


def universe_markets(n: int) -> dict[str, dt.date]:
    """N synthetic markets, listed over 2017-2019 (earlier days are "not listed yet")."""
    return {f"C{i:04d}/USDT": HISTORY_START + dt.timedelta(days=(i * 7) % 1000) for i in range(n)}


def write_universe_config(folder: Path, markets: list[str], api_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exchanges = {EXCHANGE: {
        "timeframes": list(TIMEFRAMES), "markets": markets, "history_start": HISTORY_START.isoformat(),
        "api_url": api_url, "min_request_interval_ms": 0,
    }}
    backtests = {
        name: {**spec, "exchange": EXCHANGE, "symbols": markets, "period": {"start": "2019-01-01"},
               "cash": 10_000, "sizing": {"fraction": 0.95}}
        for name, spec in BACKTESTS.items()
    }
    (folder / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": exchanges}))
    (folder / "backtests.yaml").write_text(yaml.safe_dump({"backtests": backtests}))
    return folder


@contextlib.contextmanager
def build_universe(work: Path, n: int, api_url: str, postgres_url: str | None) -> Iterator[Universe]:
    folder = work / f"{n}-{'pg' if postgres_url else 'sqlite'}"
    markets = list(universe_markets(n))
    config_dir = write_universe_config(folder / "config", markets, api_url)
    store_root = folder / "store"
    began = time.perf_counter()
    defs = build_definitions(config_dir, str(store_root))
    defs.resolve_asset_graph()
    definitions_seconds = time.perf_counter() - began
    defs_file = folder / f"universe_{n}_{uuid.uuid4().hex[:8]}_defs.py"
    defs_file.write_text(
        "from atlas_pipeline.defs.definitions import build_definitions\n\n"
        f"defs = build_definitions({str(config_dir)!r}, store_root={str(store_root)!r})\n"
    )
    with _instance(folder / "dagster_home", postgres_url) as (instance, storage):
        yield Universe(markets, config_dir, store_root, defs_file, defs, instance, storage, definitions_seconds,
                       folder / "dagster_home", postgres_url)


@contextlib.contextmanager
def _instance(home: Path, postgres_url: str | None) -> Iterator[tuple[dg.DagsterInstance, str]]:
    """A fresh instance whose ``dagster.yaml`` in ``home`` also serves the webserver of the UI section."""
    home.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        config: dict = {**NO_TELEMETRY, **QUEUED_RUNS}
        if postgres_url:
            url = stack.enter_context(fresh_postgres_database(postgres_url))
            config["storage"] = {"postgres": {"postgres_url": url}}
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance, "PostgreSQL" if postgres_url else "SQLite"


@contextlib.contextmanager
def fresh_postgres_database(url: str) -> Iterator[str]:
    """A new database on the server at ``url`` (dropped afterwards), as a dagster-postgres URL."""
    import sqlalchemy as sa

    if url.startswith(("postgresql://", "postgres://")):  # SQLAlchemy 2.1 maps these to psycopg 3,
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]  # dagster-postgres ships psycopg2
    admin = sa.engine.make_url(url)
    name = f"atlas_universe_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        engine.dispose()


# --- writing history cheaply ------------------------------------------------------------------


def seed_research(universe: Universe) -> float:
    """Every backtest and metrics partition, and the leaderboard, materialized once (runless
    reports: the rerun trigger only asks whether a partition was ever materialized)."""
    began = time.perf_counter()
    for name in BACKTESTS:
        for key in (backtest_asset_key(name), metrics_asset_key(name)):
            for market in universe.market_keys:
                universe.instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=market))
    universe.instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=LEADERBOARD_KEY))
    return time.perf_counter() - began


def record_new_day(universe: Universe, day: dt.date, run_per_market: bool = False) -> tuple[float, int]:
    """``day`` of every timeframe and market materialized by successful runs: one per timeframe over
    every market (as the daily schedule requests them), or one per market over every timeframe
    (``run_per_market``). Runs, materializations and successes are written directly (no fetching).
    Returns the seconds it took and the number of runs."""
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData

    job = f"ohlcv_{EXCHANGE}"
    pairs = [(timeframe, market) for market in universe.market_keys for timeframe in TIMEFRAMES]
    groups: dict[str, list[tuple[str, str]]] = {}
    for timeframe, market in pairs:
        groups.setdefault(market if run_per_market else timeframe, []).append((timeframe, market))
    began = time.perf_counter()
    for group in groups.values():
        run = dg.DagsterRun(job_name=job, run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
        universe.instance.add_run(run)
        for timeframe, market in group:
            materialization = dg.AssetMaterialization(
                asset_key=ohlcv_asset_key(EXCHANGE, timeframe), partition=f"{day.isoformat()}|{market}"
            )
            event = DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, job_name=job,
                                 event_specific_data=StepMaterializationData(materialization))
            universe.instance.report_dagster_event(event, run.run_id)
        universe.instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_SUCCESS.value, job_name=job), run.run_id)
    return time.perf_counter() - began, len(groups)


# --- measuring ----------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset this process's high-water RSS (Linux ``clear_refs``); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) in MB; ``ru_maxrss`` if /proc is not there."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith(f"{field}:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Dagster's clock, frozen, moved past the sensor's 30 s interval before each tick (the sensor
    notes its settle marks on it, the daemon its intervals)."""

    def __init__(self) -> None:
        self.now = time.time()

    @contextlib.contextmanager
    def next_tick(self) -> Iterator[None]:
        from dagster._core.test_utils import freeze_time

        self.now += 31
        with freeze_time(self.now):
            yield


@dataclass
class Tick:
    seconds: float
    peak_mb: float
    before_mb: float
    run_requests: list[dg.RunRequest]
    cursor: str | None
    message: str | None


def sensor_tick(universe: Universe, cursor: str | None, clock: Clock) -> Tick:
    """The sensor evaluated as the daemon's code server does (run requests resolved), timed."""
    sensor = universe.defs.resolve_sensor_def(RESEARCH_AUTOMATION_SENSOR)
    context = dg.build_sensor_context(instance=universe.instance, cursor=cursor, definitions=universe.defs)
    before = rss_mb("VmRSS")
    with clock.next_tick():
        reset_peak_rss()
        began = time.perf_counter()
        data = sensor.evaluate_tick(context)
        seconds = time.perf_counter() - began
    return Tick(seconds, rss_mb("VmHWM"), before, list(data.run_requests or []), data.cursor, data.skip_message)


LOCATION = "atlas_universe"


@contextlib.contextmanager
def in_process_workspace(universe: Universe) -> Iterator[object]:
    """The universe's code location loaded in this process, as a daemon's workspace."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, python_file=str(universe.defs_file), attribute="defs"),
        location_name=LOCATION,
    )
    with WorkspaceProcessContext(universe.instance, InProcessWorkspaceLoadTarget(origin)) as context:
        yield context


class DaemonTicks:
    """The sensor daemon's own iteration (``execute_sensor_iteration``) over the universe's code
    location, in-process, each on the next tick of the frozen clock."""

    def __init__(self, universe: Universe, clock: Clock, submit_workers: int = 0) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._universe = universe
        self._clock = clock
        self._stack = contextlib.ExitStack()
        self._context = self._stack.enter_context(in_process_workspace(universe))
        # dagster.yaml's ``sensors: num_submit_workers`` (default: none, runs submitted one by one)
        self._submit = self._stack.enter_context(ThreadPoolExecutor(submit_workers)) if submit_workers else None
        self._logger = logging.getLogger("bench.universe.daemon")
        self._logger.setLevel(logging.WARNING)

    def tick(self) -> tuple[float, float, int]:
        """One iteration: seconds, peak RSS (MB), runs it created."""
        from dagster._daemon.sensor import execute_sensor_iteration

        runs_before = self._universe.instance.get_runs_count()
        with self._clock.next_tick():
            reset_peak_rss()
            began = time.perf_counter()
            list(execute_sensor_iteration(self._context, self._logger, None, self._submit))
            seconds = time.perf_counter() - began
        return seconds, rss_mb("VmHWM"), self._universe.instance.get_runs_count() - runs_before

    def close(self) -> None:
        self._stack.close()


def _verdict(ok: bool) -> str:
    return "" if ok else ": MISSED"


# --- sections -----------------------------------------------------------------------------------

SETTLE_TICKS = 3
"""With a settle delay (PostgreSQL) the tick after new events only notes the newest id; a later one reads them."""


def rerun_trigger(
    universe: Universe, daemon: bool = True, run_per_market: bool = False, submit_workers: int = 0
) -> tuple[bool, dict[str, str]]:
    """The research rerun trigger after every market got a new day, and with nothing new."""
    n = len(universe.markets)
    clock = Clock()
    seeded = seed_research(universe)
    first = sensor_tick(universe, None, clock)
    ticks = DaemonTicks(universe, clock, submit_workers) if daemon else None
    try:
        if ticks:
            ticks.tick()  # the daemon's first tick: its cursor starts here
        day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
        recorded, runs = record_new_day(universe, day, run_per_market)
        print(f"  seeded {2 * len(BACKTESTS) * n + 1:,} research materializations in {seeded:.1f} s; "
              f"recorded {day} for every market ({runs:,} runs, {n * len(TIMEFRAMES):,} candle materializations) "
              f"in {recorded:.1f} s; first tick {first.seconds:.2f} s")

        cursor, settling, ticks_seen = first.cursor, [], []
        for _ in range(SETTLE_TICKS + n // MAX_RUNS_PER_TICK + 2):  # until the backlog is drained
            tick = sensor_tick(universe, cursor, clock)
            cursor = tick.cursor
            if tick.run_requests:
                ticks_seen.append(tick)
            elif ticks_seen:
                break
            else:
                settling.append(tick.seconds)
        quiet = sensor_tick(universe, cursor, clock)
        requests = [request for tick in ticks_seen for request in tick.run_requests]
        expected = {backtest_asset_key(name) for name in BACKTESTS} | {metrics_asset_key(name) for name in BACKTESTS}
        exact = (
            sorted(r.partition_key for r in requests) == sorted(universe.market_keys)
            and all(set(r.asset_selection or ()) == expected for r in requests)
            and quiet.run_requests == []
        )
        updated, rest = ticks_seen[0], ticks_seen[1:]
        slowest = max(ticks_seen, key=lambda tick: tick.seconds)
        peak = max(tick.peak_mb for tick in ticks_seen)
        ok_updated = slowest.seconds < TICK_BAR_SECONDS and peak < TICK_BAR_MB
        ok_quiet = quiet.seconds < QUIET_BAR_SECONDS
        if settling:
            print(f"  settle delay: {len(settling)} tick(s) read nothing yet ({', '.join(f'{s:.2f} s' for s in settling)})")
        print(f"  evaluate_tick, every market updated: {updated.seconds:6.2f} s, peak RSS {updated.peak_mb:,.0f} MB "
              f"(+{updated.peak_mb - updated.before_mb:,.0f} MB over {updated.before_mb:,.0f}) "
              f"(bar < {TICK_BAR_SECONDS:g} s, < {TICK_BAR_MB:,} MB{_verdict(ok_updated)}): {len(updated.run_requests)} runs x "
              f"{len(expected)} assets, the other {n - len(updated.run_requests):,} markets left for the next ticks")
        if rest:
            print(f"  evaluate_tick, the next {len(rest)} ticks (backlog re-checked, {MAX_RUNS_PER_TICK} runs each): "
                  f"{min(t.seconds for t in rest):.2f}-{max(t.seconds for t in rest):.2f} s, peak RSS {peak:,.0f} MB")
        print(f"  evaluate_tick, nothing new:          {quiet.seconds:6.2f} s, peak RSS {quiet.peak_mb:,.0f} MB "
              f"(bar < {QUIET_BAR_SECONDS:g} s{_verdict(ok_quiet)}): {quiet.message}")
        print(f"  requested exactly every market's backtest + metrics, once, over {len(ticks_seen)} tick(s): "
              f"{'yes' if exact else 'NO'}")
        ok = ok_updated and ok_quiet and exact
        row = {
            "rerun tick, all updated": f"{slowest.seconds:.2f} s, {peak:,.0f} MB{_verdict(ok_updated)}",
            "rerun tick, nothing new": f"{quiet.seconds:.2f} s{_verdict(ok_quiet)}",
            "reruns exact": "yes" if exact else "NO",
        }
        if ticks:
            iterations: list[tuple[float, float, int]] = []
            for _ in range(SETTLE_TICKS + n // MAX_RUNS_PER_TICK + 2):
                iteration = ticks.tick()
                if iteration[2]:
                    iterations.append(iteration)
                elif iterations:
                    break
            quiet_seconds, _, quiet_created = ticks.tick()
            created = sum(runs for _, _, runs in iterations)
            seconds = [elapsed for elapsed, _, _ in iterations]
            workers = f", {submit_workers} submit workers" if submit_workers else ""
            print(f"  daemon iterations, every market updated: {len(iterations)} of {min(seconds):.2f}-{max(seconds):.2f} s "
                  f"creating and queueing {created:,} runs ({sum(seconds) / max(created, 1) * 1000:,.0f} ms a run{workers}), "
                  f"peak RSS {max(peak for _, peak, _ in iterations):,.0f} MB")
            print(f"  daemon iteration, nothing new:          {quiet_seconds:6.2f} s ({quiet_created} runs)")
            ok &= created == n and quiet_created == 0
            row["daemon, runs created"] = f"{sum(seconds) / max(created, 1) * 1000:,.0f} ms a run"
        return ok, row
    finally:
        if ticks:
            ticks.close()


def schedule(universe: Universe, work: Path, api_url: str) -> tuple[bool, dict[str, str]]:
    """The daily schedule's tick at this N (``bench/schedule_tick.py``'s measure, its own fresh instance)."""
    import schedule_tick

    n = len(universe.markets)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_postgres_database(universe.postgres_url)) if universe.postgres_url else None
        args = argparse.Namespace(markets=n, timeframes=list(TIMEFRAMES), start=HISTORY_START, postgres_url=url)
        seconds, runs = schedule_tick.tick(args, work / f"schedule-{n}-{universe.storage}", api_url)
    ok = seconds < schedule_tick.TICK_BAR_SECONDS and len(runs) == len(TIMEFRAMES)
    print(f"  daily schedule tick (scheduler daemon's code): {seconds:.2f} s, {len(runs)} runs queued "
          f"(bar < {schedule_tick.TICK_BAR_SECONDS:g} s{_verdict(ok)})")
    return ok, {"schedule tick": f"{seconds:.2f} s{_verdict(ok)}"}


def ui(universe: Universe, work: Path, all_names: bool) -> tuple[bool, dict[str, str]]:
    """Backfill launches and the partition health query, POSTed to a real webserver."""
    from ui_graphql import Webserver

    n = len(universe.markets)
    asset = [EXCHANGE, "ohlcv_1h"]
    job = f"ohlcv_{EXCHANGE}"
    days = [(HISTORY_START + dt.timedelta(days=i)).isoformat() for i in range(_days_since_start())]
    row: dict[str, str] = {}
    began = time.perf_counter()
    with Webserver(universe.defs_file, universe.home, work / f"webserver-{n}-{universe.storage}.log") as web:
        print(f"  webserver up with the code location loaded in {time.perf_counter() - began:.1f} s")
        cold = web.partition_health(asset)
        warm = web.partition_health(asset)
        ok_status = max(cold.seconds, warm.seconds) < STATUS_BAR_SECONDS
        print(f"  partition health query ({'/'.join(asset)}): {cold.seconds:.2f} s, then {warm.seconds:.2f} s "
              f"(bar < {STATUS_BAR_SECONDS:g} s{_verdict(ok_status)})")
        row["partition status"] = f"{cold.seconds:.2f} / {warm.seconds:.2f} s{_verdict(ok_status)}"

        one = web.launch_backfill_as_the_ui_does(asset, job, [f"{day}|{universe.market_keys[0]}" for day in days])
        print(f"  Dagster's backfill launch, a range chosen in the UI ({len(days):,} days of one market, job "
              f"partition set): {one.seconds:.2f} s")
        row["UI backfill: 1 market (Dagster)"] = f"{one.seconds:.1f} s"
        if all_names:
            names = [f"{day}|{key}" for day in days for key in universe.market_keys]
            every = web.launch_backfill_as_the_ui_does(asset, job, names)
            del names
            print(f"  Dagster's backfill launch, every partition as the dialog sends it ({len(days) * n:,} names, "
                  f"{every.request_mb:.0f} MB): {every.seconds:.2f} s, webserver peak RSS {web.peak_rss_mb():,.0f} MB")
            row["UI backfill: all names (Dagster)"] = f"{every.seconds:.1f} s"
        pure = web.launch_backfill_as_the_ui_does(asset, job, None)
        print(f"  Dagster's backfill launch, allPartitions (assets without a common job): {pure.seconds:.2f} s")
        row["UI backfill: allPartitions (Dagster)"] = f"{pure.seconds:.1f} s"

        request = web.launch_run_as_the_launchpad_does(f"ohlcv_{EXCHANGE}_backfill", {})
        ok_launch = request.seconds < LAUNCH_BAR_SECONDS
        print(f"  Atlas's backfill request, everything (launchpad: ohlcv_{EXCHANGE}_backfill): {request.seconds:.2f} s "
              f"(bar < {LAUNCH_BAR_SECONDS:g} s{_verdict(ok_launch)})")
    seconds, requests = backfill_sensor(universe)
    exact = sorted(r.tags[ASSET_PARTITION_RANGE_START_TAG] for r in requests) == sorted(
        f"{days[0]}|{key}" for key in universe.market_keys
    ) and all(r.tags[ASSET_PARTITION_RANGE_END_TAG].split("|")[0] == days[-1] for r in requests)
    print(f"  ohlcv_{EXCHANGE}_backfills sensor on its success: {seconds:.2f} s, {len(requests):,} run requests, one per "
          f"market over {days[0]}..{days[-1]}: {'yes' if exact else 'NO'}")
    row["UI backfill: Atlas request"] = f"{request.seconds:.2f} s{_verdict(ok_launch)}; sensor {seconds:.2f} s -> {len(requests)} runs"
    return ok_status and ok_launch and exact, row


def profile_launch(universe: Universe, top: int = 8) -> None:
    """Dagster's backfill launch for one market since 2017 (the dialog's payload), in-process under
    cProfile (the webserver's resolver with this process's workspace): where its time goes."""
    import cProfile
    import pstats

    from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
    from dagster_graphql.test.utils import execute_dagster_graphql
    from ui_graphql import backfill_params

    days = [(HISTORY_START + dt.timedelta(days=i)).isoformat() for i in range(_days_since_start())]
    names = [f"{day}|{universe.market_keys[0]}" for day in days]
    params = backfill_params([EXCHANGE, "ohlcv_1h"], f"ohlcv_{EXCHANGE}", names, LOCATION, "__repository__")
    with in_process_workspace(universe) as workspace:
        request = workspace.create_request_context()
        profile = cProfile.Profile()
        began = time.perf_counter()
        profile.enable()
        execute_dagster_graphql(request, LAUNCH_PARTITION_BACKFILL_MUTATION, variables={"backfillParams": params})
        profile.disable()
        seconds = time.perf_counter() - began
    stats = pstats.Stats(profile).stats  # (file, line, function) -> (calls, _, own, cumulative, _)
    rows = sorted(
        ((cumulative, calls, f"{Path(file).parent.name}/{Path(file).name}:{function}")
         for (file, _, function), (_, calls, _, cumulative, _) in stats.items()
         if "/dagster/_core/" in file or function.startswith(("assert_valid", "create_and_launch"))),
        reverse=True,
    )[:top]
    print(f"  cProfile of Dagster's backfill launch (one market since 2017), in-process: {seconds:.2f} s; "
          "Dagster functions by cumulative time:")
    for cumulative, calls, name in rows:
        print(f"    {cumulative:7.2f} s  {calls:>10,} calls  {name}")


def backfill_sensor(universe: Universe) -> tuple[float, list[dg.RunRequest]]:
    """The request job run in-process (everything), then the sensor evaluated on its success event."""
    result = universe.defs.resolve_job_def(f"ohlcv_{EXCHANGE}_backfill").execute_in_process(
        instance=universe.instance, run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    )
    success = universe.instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records[0]
    context = dg.build_run_status_sensor_context(
        sensor_name=f"ohlcv_{EXCHANGE}_backfills", dagster_event=success.event_log_entry.dagster_event,
        dagster_instance=universe.instance, dagster_run=universe.instance.get_run_by_id(result.run_id),
    )
    began = time.perf_counter()
    requests = list(universe.defs.resolve_sensor_def(f"ohlcv_{EXCHANGE}_backfills")(context) or [])
    return time.perf_counter() - began, requests


def bookkeeping(work: Path, api_url: str, timeframes: list[str], postgres_url: str | None) -> tuple[bool, list[dict[str, str]]]:
    """A 2017 -> today backfill of one market per timeframe (``bench/ingest.py``'s run): Dagster's
    bookkeeping is the run's time minus Atlas's own stages."""
    import ingest

    from atlas_pipeline.config import load_exchanges_config

    storage = "PostgreSQL" if postgres_url else "SQLite"
    symbol = next(iter(universe_markets(1)))
    today = dt.datetime.now(dt.UTC).date()
    ok, rows = True, []
    for timeframe in timeframes:
        folder = work / f"bookkeeping-{storage}-{timeframe}"
        config_dir = ingest.bench_config(folder / "config", api_url, symbol, timeframe, HISTORY_START)
        settings = load_exchanges_config(config_dir).get(EXCHANGE)
        backfill = ingest.Backfill(symbol, timeframe, HISTORY_START, today + dt.timedelta(days=1), settings, config_dir)
        ingest.warm_up(backfill, folder / "warm-up")  # as ingest.py does: first-call costs hit no timed run
        with contextlib.ExitStack() as stack:
            if postgres_url:
                url = stack.enter_context(fresh_postgres_database(postgres_url))
                instance = stack.enter_context(ingest.postgres_instance(folder / "dagster", url))
            else:
                instance = stack.enter_context(ingest.sqlite_instance(folder / "dagster"))
            run = ingest.run_pipeline(backfill, instance, folder / "store")
        own = sum(run.stages.values())
        kept = run.seconds - own
        bar = postgres_url is not None and timeframe == "1h"
        fine = not bar or kept <= ingest.BOOKKEEPING_BAR_SECONDS
        ok &= fine
        verdict = f" (bar <= {ingest.BOOKKEEPING_BAR_SECONDS:g} s{_verdict(fine)})" if bar else ""
        print(f"  {storage} {timeframe} {symbol} {HISTORY_START}..{today} ({backfill.partitions:,} partitions): run "
              f"{run.seconds:.1f} s, Atlas's own stages {own:.1f} s, Dagster bookkeeping {kept:.1f} s{verdict}", flush=True)
        rows.append({"storage": storage, "timeframe": timeframe, "partitions": f"{backfill.partitions:,}",
                     "run": f"{run.seconds:.1f} s", "Atlas's stages": f"{own:.1f} s", "bookkeeping": f"{kept:.1f} s{verdict}"})
    return ok, rows


def _days_since_start() -> int:
    """Days in the date dimension: history start through today (``end_offset=1``)."""
    return (dt.datetime.now(dt.UTC).date() - HISTORY_START).days + 1


def bench_universe(n: int, work: Path, api_url: str, postgres_url: str | None, args: argparse.Namespace) -> tuple[bool, dict[str, str]]:
    with build_universe(work, n, api_url, postgres_url) as universe:
        partitions = n * _days_since_start()
        print(f"{n:,} markets x {', '.join(TIMEFRAMES)} since {HISTORY_START} ({partitions:,} partitions per OHLCV asset), "
              f"{len(BACKTESTS)} backtests over all markets, {universe.storage}; definitions {universe.definitions_seconds:.2f} s",
              flush=True)
        row = {"storage": universe.storage, "markets": f"{n:,}", "partitions/asset": f"{partitions:,}",
               "definitions": f"{universe.definitions_seconds:.2f} s"}
        ok = True
        for section in (
            lambda: rerun_trigger(universe, not args.no_daemon, args.run_per_market, args.submit_workers),
            lambda: schedule(universe, work, api_url),
            lambda: ui(universe, work, not args.skip_all_names),
        ):
            fine, numbers = section()
            ok &= fine
            row.update(numbers)
        if args.profile_launch:
            profile_launch(universe)
        return ok, row


def print_table(rows: list[dict[str, str]]) -> None:
    columns = list(dict.fromkeys(column for row in rows for column in row))
    print("| " + " | ".join(columns) + " |")
    print("| " + " | ".join("---" for _ in columns) + " |")
    for row in rows:
        print("| " + " | ".join(row.get(column, "") for column in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--markets", default="25,100,500",
                        help="comma-separated universe sizes (default 25,100,500; '' for only the bookkeeping)")
    parser.add_argument("--postgres-url", help="a PostgreSQL server (a role allowed to create databases); default: start one")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--sqlite", action="store_true", help="also measure on Dagster's default SQLite storage")
    parser.add_argument("--no-daemon", action="store_true", help="skip the sensor daemon's iterations (run submission)")
    parser.add_argument("--submit-workers", type=int, default=0,
                        help="threads the daemon submits runs with (dagster.yaml sensors.num_submit_workers; default 0: one by one)")
    parser.add_argument("--run-per-market", action="store_true",
                        help="record the new day with one candle run per market (default: one per timeframe)")
    parser.add_argument("--profile-launch", action="store_true",
                        help="also cProfile Dagster's backfill launch in-process and print where its time goes")
    parser.add_argument("--skip-all-names", action="store_true", help="skip Dagster's launch with every partition name")
    parser.add_argument("--bookkeeping-timeframes", default=",".join(TIMEFRAMES),
                        help="timeframes of the 2017 -> today one-market backfill ('' to skip; default 1d,1h,1m)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    sizes = [int(size) for size in args.markets.split(",") if size]  # none: only the bookkeeping
    ok, rows, bookkeeping_rows = True, [], []
    with tempfile.TemporaryDirectory(prefix="atlas-universe-bench-") as folder, contextlib.ExitStack() as stack:
        work = Path(folder)
        storages: list[str | None] = [None] if args.sqlite else []
        if not args.no_postgres:
            if args.postgres_url:
                storages.append(args.postgres_url)
            else:
                sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's test helpers
                from atlas_pipeline_tests.postgres_server import postgres_server

                storages.append(stack.enter_context(postgres_server()).url("postgres"))
        source = SyntheticCandleSource(SEED, markets=universe_markets(max(sizes, default=1)))
        server = stack.enter_context(EmulatorServer(source))
        for postgres_url in storages:
            for n in sizes:
                fine, row = bench_universe(n, work, server.base_url, postgres_url, args)
                ok &= fine
                rows.append(row)
            timeframes = [tf for tf in args.bookkeeping_timeframes.split(",") if tf]
            if timeframes:
                print(f"bookkeeping of a {HISTORY_START} -> today backfill of one market, "
                      f"{'PostgreSQL' if postgres_url else 'SQLite'}:")
                fine, more = bookkeeping(work, server.base_url, timeframes, postgres_url)
                ok &= fine
                bookkeeping_rows.extend(more)
    print()
    if rows:
        print_table(rows)
    if bookkeeping_rows:
        print()
        print_table(bookkeeping_rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")  # as atlas and the Dockerfile set it
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")  # as the Dockerfile sets it
    main()
