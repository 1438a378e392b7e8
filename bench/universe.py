"""Universe scale probes (DESIGN.md section 12): N synthetic markets x 1d+1h since 2017, two backtests
over all markets, on a fresh Dagster instance per N.

Run: ``.venv/bin/python bench/universe.py [--markets 25,100,500] [--postgres-url URL] [--no-daemon]
[--submit-workers K] [--run-per-market]``.

Each measurement is one function taking a ``Universe`` (add new ones the same way and call them
from ``bench_universe``):

- ``rerun_trigger``: the ``research_reruns`` sensor (bar, issue 9 at N = 500: a tick after every
  market updated < 10 s and < 1 GB; with nothing new < 2 s; it requests exactly the changed
  partitions). Every backtest and metrics partition has been materialized before (reported
  runless: the sensor only reads the event log); then every market gets a new day of 1d and 1h
  candles from successful runs, one per timeframe over every market as the daily schedule requests
  them (``--run-per-market``: one per market), runs and events written directly (no fetching).
  Timed twice, tick after tick until every market's rerun was requested (at most
  ``MAX_RUNS_PER_TICK`` runs a tick): (a) the sensor evaluated in-process as the daemon's code
  server does (``evaluate_tick``: reading, deciding, resolving the run requests), peak RSS of that
  evaluation (the process high-water mark reset just before it); (b) unless ``--no-daemon``, the
  sensor daemon's real iterations on a frozen clock with a ``QueuedRunCoordinator``, i.e. including
  Dagster creating and queueing the requested runs (they stay queued: no run queue daemon runs).

``--postgres-url`` (e.g. ``postgresql://atlas@127.0.0.1:5432/postgres``, a role allowed to create
databases) repeats everything on dagster-postgres storage, one fresh database per N (dropped after).
Without history: the event log holds only what the bench writes; the sensor's queries select by
asset key and storage id (indexed), so older events should not change the numbers.
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

from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.research.assets import LEADERBOARD_KEY, backtest_asset_key, metrics_asset_key
from atlas_pipeline.defs.research.automation import RESEARCH_AUTOMATION_SENSOR
from atlas_pipeline.defs.research.reruns import MAX_RUNS_PER_TICK
from atlas_pipeline.market_data.candles import symbol_key
from atlas_pipeline.market_data.emulator import EmulatorServer, SyntheticCandleSource

EXCHANGE = "binance"
TIMEFRAMES = ("1d", "1h")
HISTORY_START = dt.date(2017, 1, 1)
SEED = 7
BACKTESTS = {  # two backtests over all markets, one per timeframe
    "sma_1d": {"strategy": "sma_crossover", "params": {"fast": 10, "slow": 30}, "timeframe": "1d"},
    "sma_1h": {"strategy": "sma_crossover", "params": {"fast": 20, "slow": 50}, "timeframe": "1h"},
}
TICK_BAR_SECONDS = 10.0
TICK_BAR_MB = 1024
QUIET_BAR_SECONDS = 2.0
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
        yield Universe(markets, config_dir, store_root, defs_file, defs, instance, storage, definitions_seconds)


@contextlib.contextmanager
def _instance(home: Path, postgres_url: str | None) -> Iterator[tuple[dg.DagsterInstance, str]]:
    home.mkdir(parents=True)
    if not postgres_url:
        with dg.DagsterInstance.local_temp(str(home), overrides={**NO_TELEMETRY, **QUEUED_RUNS}) as instance:
            yield instance, "SQLite"
        return
    with fresh_postgres_database(postgres_url) as url:
        overrides = {**NO_TELEMETRY, **QUEUED_RUNS, "storage": {"postgres": {"postgres_url": url}}}
        with dg.DagsterInstance.local_temp(str(home), overrides=overrides) as instance:
            yield instance, "PostgreSQL"


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


class DaemonTicks:
    """The sensor daemon's own iteration (``execute_sensor_iteration``) over the universe's code
    location, in-process, each on the next tick of the frozen clock."""

    def __init__(self, universe: Universe, clock: Clock, submit_workers: int = 0) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

        self._universe = universe
        self._clock = clock
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(executable_path=sys.executable, python_file=str(universe.defs_file), attribute="defs"),
            location_name="atlas_universe",
        )
        self._stack = contextlib.ExitStack()
        self._context = self._stack.enter_context(
            WorkspaceProcessContext(universe.instance, InProcessWorkspaceLoadTarget(origin))
        )
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


def rerun_trigger(universe: Universe, daemon: bool = True, run_per_market: bool = False, submit_workers: int = 0) -> bool:
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
        return ok
    finally:
        if ticks:
            ticks.close()


def bench_universe(
    n: int, work: Path, api_url: str, postgres_url: str | None, daemon: bool, run_per_market: bool, submit_workers: int
) -> bool:
    with build_universe(work, n, api_url, postgres_url) as universe:
        partitions = n * ((dt.datetime.now(dt.UTC).date() - HISTORY_START).days + 2)
        print(f"{n:,} markets x {', '.join(TIMEFRAMES)} since {HISTORY_START} ({partitions:,} partitions per OHLCV asset), "
              f"{len(BACKTESTS)} backtests over all markets, {universe.storage}; definitions {universe.definitions_seconds:.2f} s",
              flush=True)
        return rerun_trigger(universe, daemon, run_per_market, submit_workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--markets", default="25,100,500", help="comma-separated universe sizes (default 25,100,500)")
    parser.add_argument("--postgres-url", help="also measure on dagster-postgres storage (a fresh database per size)")
    parser.add_argument("--no-daemon", action="store_true", help="skip the daemon iterations (run submission)")
    parser.add_argument("--submit-workers", type=int, default=0,
                        help="threads the daemon submits runs with (dagster.yaml sensors.num_submit_workers; default 0: one by one)")
    parser.add_argument("--run-per-market", action="store_true",
                        help="record the new day with one candle run per market (default: one per timeframe)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    sizes = [int(size) for size in args.markets.split(",")]
    storages = [None] + ([args.postgres_url] if args.postgres_url else [])
    ok = True
    with tempfile.TemporaryDirectory(prefix="atlas-universe-bench-") as work:
        source = SyntheticCandleSource(SEED, markets=universe_markets(max(sizes)))
        server = EmulatorServer(source).start()  # the config points ccxt here; the rerun section fetches nothing
        try:
            for postgres_url in storages:
                for n in sizes:
                    ok &= bench_universe(n, Path(work), server.base_url, postgres_url, not args.no_daemon,
                                         args.run_per_market, args.submit_workers)
        finally:
            server.stop()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")  # as atlas and the Dockerfile set it
    main()
