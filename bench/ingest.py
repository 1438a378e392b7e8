"""Ingest speed: a 2017 -> today single-run backfill through the Dagster asset, against its floors.

Run: ``.venv/bin/python bench/ingest.py [--source rest|archive] [--symbol BTC/USDT] [--timeframe 1h]
[--start 2017-01-01] [--postgres-url URL] [--only-cli]``.

``--source archive`` (timeframe default 1m): the same backfill through the asset twice in one run,
once with ``history_source: archive`` (Binance's public archive as the emulator serves it: monthly
and daily files, REST for the tail) and once with ``history_source: rest``, each on a fresh SQLite
instance and store. Prints both wall times and their ratio (bar: archive >= 5x faster), the
archive's download+verify+parse rate (bar: >= 1M candles/s) and whether the two stores hold the
same candles (exit 1 if not). The archive is static files on the real exchange, so the emulator
builds every file of the range once before the timed runs; REST pages are built per request, as
the real exchange computes its answers.

``--source rest`` (the default) prints:
(a) the wall time of the real OHLCV asset (``materialize_ohlcv_range``: one range run for one market)
    on a fresh SQLite Dagster instance and a fresh candle store, ccxt talking to a synthetic emulator
    with rate limiting off;
(b) a no-op asset with the same partitions and ``BackfillPolicy.single_run()`` over the same range
    on a fresh instance of the same kind: Dagster's own floor (DESIGN.md section 10). The bar is
    pipeline / no-op <= 1.3;
(c) the same range paged with bare ccxt against the same emulator, and the ratios to it;
(d) measured first (``--only-cli``: nothing else): ``atlas fetch`` of the same backfill as a user
    runs it, in its own process on a fresh home: its peak RSS (bar < 500 MB: candles go to the store a chunk at a time) and the time from the
    command's start to its first progress line from the asset (bar <= 5 s);
(f) with (d): the same ``atlas fetch`` again, through yesterday, on the now up-to-date home: its wall time and the
    requests it sent to the emulator (bar: <= 3 s, zero requests);
(e) the candle store's write/read times for 9 years of 1h and 1m candles (``bench/store_read.py``).
It checks that the candles the pipeline stored equal those bare ccxt fetched, and exits 1 if not
(or if a run fails). Each job runs once untimed over two days first, so neither pays the warm-up.
With ``--postgres-url``, (a) and (b) run again on instances with dagster-postgres storage. Each
Dagster run also prints its bookkeeping: the pipeline's time minus Atlas's own stages (bar on
PostgreSQL: <= 10 s); set ``DAGSTER_EVENT_BATCH_SIZE`` (as production does) to batch its events.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import yaml

from atlas_pipeline.config import ExchangeSettings, load_exchanges_config
from atlas_pipeline.defs.market_data.launch import materialize_ohlcv_range, partition_range_tags
from atlas_pipeline.defs.market_data.partitions import ohlcv_partitions
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.demo import DEMO_SEED, write_demo_config
from atlas_pipeline.market_data.candles import CANDLE_COLUMNS, CANDLE_DTYPES, day_start_ms, timeframe_ms
from atlas_pipeline.market_data.emulator import build_emulator
from atlas_pipeline.market_data.exchange_client import ExchangeConnection, build_ccxt_exchange
from atlas_pipeline.market_data.store import CandleStore

sys.path.insert(0, str(Path(__file__).parent))
from store_read import measure_store_reads, print_numbers  # noqa: E402

EXCHANGE = "binance"
PAGE_LIMIT = 1000
BAR = 1.3
RSS_BAR_MB = 500
FIRST_PROGRESS_BAR_SECONDS = 5.0
REFETCH_BAR_SECONDS = 3.0
BOOKKEEPING_BAR_SECONDS = 10.0  # 2017 -> today 1h, one market, PostgreSQL (issue 9)
LOG_LEVEL = "WARNING"  # Dagster's console logger: failures only, not every event
WARM_UP_DAYS = 2
NO_TELEMETRY = {"telemetry": {"enabled": False}}

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


class BenchFailed(Exception):
    pass


@dataclass
class Backfill:
    """What both jobs run: one market over days ``[start, end)``."""

    symbol: str
    timeframe: str
    start: dt.date
    end: dt.date
    settings: ExchangeSettings
    config_dir: Path

    @property
    def partitions(self) -> int:
        return (self.end - self.start).days

    def tags(self, start: dt.date | None = None) -> dict[str, str]:
        return partition_range_tags(self.symbol, start or self.start, self.end - dt.timedelta(days=1))


@dataclass
class PipelineRun:
    seconds: float
    store_root: str
    started_ms: int
    stages: dict[str, float]
    metadata: dict[str, Any]


def bench_config(folder: Path, api_url: str, symbol: str, timeframe: str, start: dt.date, **settings: Any) -> Path:
    """The demo's config (ccxt -> emulator, no request interval), narrowed to this timeframe and
    start; ``settings`` added to the exchange entry."""
    write_demo_config(folder, api_url)
    path = folder / "exchanges.yaml"
    config = yaml.safe_load(path.read_text())
    entry = config["exchanges"][EXCHANGE]
    entry["markets"] = list(dict.fromkeys([*entry["markets"], symbol]))
    entry["timeframes"] = [timeframe]
    entry["history_start"] = start.isoformat()
    entry["min_request_interval_ms"] = 0
    entry.update(settings)
    path.write_text(yaml.safe_dump(config))
    return folder


def sqlite_instance(folder: Path) -> dg.DagsterInstance:
    """A fresh instance with Dagster's default (SQLite) storage; telemetry off, both jobs alike."""
    folder.mkdir(parents=True)
    return dg.DagsterInstance.local_temp(str(folder), overrides=NO_TELEMETRY)


def postgres_instance(folder: Path, url: str) -> dg.DagsterInstance:
    """A fresh instance with dagster-postgres storage at ``url`` (its tables are created if missing)."""
    folder.mkdir(parents=True)
    if url.startswith(("postgresql://", "postgres://")):  # SQLAlchemy 2.1 maps these to psycopg 3,
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]  # dagster-postgres ships psycopg2
    overrides = {**NO_TELEMETRY, "storage": {"postgres": {"postgres_url": url}}}
    return dg.DagsterInstance.local_temp(str(folder), overrides=overrides)


def run_pipeline(
    backfill: Backfill, instance: dg.DagsterInstance, store_root: Path, start: dt.date | None = None
) -> PipelineRun:
    """(a): the real asset over the range, one run, into a fresh store."""
    start = start or backfill.start
    defs = build_definitions(backfill.config_dir, str(store_root))
    started_ms = time.time_ns() // 1_000_000
    began = time.perf_counter()
    runs = materialize_ohlcv_range(
        defs, instance, EXCHANGE, [backfill.timeframe], [backfill.symbol], start, backfill.end, log_level=LOG_LEVEL
    )
    seconds = time.perf_counter() - began
    run = runs[0]
    if not run.success:
        raise BenchFailed(f"pipeline run failed: {run.failure_reason()}")
    events = run.result.get_asset_materialization_events()
    expected = (backfill.end - start).days
    if len(events) != expected:
        raise BenchFailed(f"pipeline run materialized {len(events)} partitions, expected {expected}")
    metadata = events[0].materialization.metadata
    stages = {
        name.removeprefix("seconds_"): float(value.value)
        for name, value in metadata.items()
        if name.startswith("seconds_")
    }
    return PipelineRun(seconds, str(store_root), started_ms, stages, {k: v.value for k, v in metadata.items()})


def noop_definitions(settings: ExchangeSettings) -> dg.Definitions:
    """A bare asset with the OHLCV asset's partitions and backfill policy that does nothing."""

    @dg.asset(
        key=["bench", "noop"],
        partitions_def=ohlcv_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def noop() -> dg.MaterializeResult:
        return dg.MaterializeResult()

    return dg.Definitions(assets=[noop], jobs=[dg.define_asset_job("bench_noop", selection=[noop])])


def run_noop(backfill: Backfill, instance: dg.DagsterInstance, start: dt.date | None = None) -> float:
    """(b): Dagster's floor for the same range run, on the given instance."""
    start = start or backfill.start
    defs = noop_definitions(backfill.settings)
    began = time.perf_counter()
    job = defs.resolve_job_def("bench_noop")
    result = job.execute_in_process(
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": LOG_LEVEL}}}},
        tags=backfill.tags(start),
        raise_on_error=False,
    )
    seconds = time.perf_counter() - began
    if not result.success:
        raise BenchFailed("no-op run failed")
    materialized = len(result.get_asset_materialization_events())
    expected = (backfill.end - start).days
    if materialized != expected:
        raise BenchFailed(f"no-op run materialized {materialized} partitions, expected {expected}")
    return seconds


def fetch_bare(api_url: str, symbol: str, timeframe: str, start: dt.date) -> tuple[float, pd.DataFrame, int]:
    """(c): since-paging with bare ccxt from ``start`` until now; the open candle dropped."""
    began = time.perf_counter()
    exchange = build_ccxt_exchange(ExchangeConnection(EXCHANGE, api_url=api_url, min_request_interval_ms=0))
    tf_ms = timeframe_ms(timeframe)
    rows: list[list[Any]] = []
    since, requests = day_start_ms(start), 0
    while since < exchange.milliseconds():
        batch = exchange.fetch_ohlcv(symbol, timeframe, since=since, limit=PAGE_LIMIT)
        requests += 1
        rows.extend(batch)
        if not batch:  # an empty page ends the history; a short one does not (DESIGN.md section 10)
            break
        since = int(batch[-1][0]) + tf_ms
    now = exchange.milliseconds()
    closed = [row[:6] for row in rows if row[0] + tf_ms <= now]
    frame = pd.DataFrame(closed, columns=list(CANDLE_COLUMNS)).astype(CANDLE_DTYPES)
    return time.perf_counter() - began, frame, requests


def compare(backfill: Backfill, run: PipelineRun, bare: pd.DataFrame) -> tuple[bool, str]:
    """Stored candles equal bare ccxt's up to the last stored one; later ones closed after the run began."""
    tf_ms = timeframe_ms(backfill.timeframe)
    store = CandleStore(run.store_root)
    stored = store.read(EXCHANGE, backfill.symbol, backfill.timeframe, backfill.start, backfill.end)
    stored = stored.reset_index(drop=True)
    cutoff = int(stored["timestamp"].iloc[-1]) + tf_ms if len(stored) else day_start_ms(backfill.start)
    head = bare[bare["timestamp"] < cutoff].reset_index(drop=True)
    later = bare[bare["timestamp"] >= cutoff]
    if not stored.equals(head):
        if len(stored) != len(head):
            return False, f"stored {len(stored):,} candles, bare ccxt {len(head):,} over the same span"
        differ = (stored != head).any(axis=1)
        at = pd.Timestamp(int(stored["timestamp"][differ].iloc[0]), unit="ms", tz="UTC")
        return False, f"{int(differ.sum()):,} candles differ, the first at {at:%Y-%m-%d %H:%M}"
    if len(later) and int(later["timestamp"].iloc[0]) + tf_ms <= run.started_ms:
        return False, f"the store lacks {len(later):,} candles that were closed before the run began"
    note = f"{len(stored):,} candles"
    if len(later):
        note += f"; bare ccxt has {len(later):,} more that closed after the run began"
    return True, note


@dataclass
class ProcessRun:
    seconds: float
    first_progress: float | None
    peak_rss_mb: float
    returncode: int
    last_line: str


def run_cli_process(backfill: Backfill, home: Path) -> ProcessRun:
    """(d): ``atlas fetch`` in a child process with a fresh ATLAS_HOME (and its own SQLite instance);
    stderr read line by line to time the first progress line the asset logs."""
    command = [
        sys.executable, "-m", "atlas_pipeline.cli", "fetch", "--exchange", EXCHANGE, "--symbol", backfill.symbol,
        "--timeframe", backfill.timeframe, "--start", backfill.start.isoformat(), "--end", backfill.end.isoformat(),
    ]
    env = {**os.environ, "ATLAS_CONFIG": str(backfill.config_dir), "ATLAS_HOME": str(home), "DAGSTER_HOME": ""}
    began = time.perf_counter()
    first_progress, last_line = None, ""
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as child:
        peak = _PeakRss(child.pid)
        for line in child.stderr:
            if first_progress is None and f"{backfill.symbol} {backfill.timeframe}:" in line and " - dagster - " in line:
                first_progress = time.perf_counter() - began
            last_line = line.strip() or last_line
        peak.stop()
    seconds = time.perf_counter() - began
    return ProcessRun(seconds, first_progress, peak.kb / 1024, child.returncode, last_line)


class _PeakRss:
    """The child's own high-water RSS (``VmHWM``), sampled until it exits. Not ``getrusage``: Linux
    counts a child's RSS from before its exec, i.e. this bench's own peak."""

    def __init__(self, pid: int) -> None:
        self.kb = 0
        self._path = f"/proc/{pid}/status"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            try:
                with open(self._path) as status:
                    line = next(l for l in status if l.startswith("VmHWM:"))
            except (OSError, StopIteration):
                continue
            self.kb = max(self.kb, int(line.split()[1]))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def print_process(run: ProcessRun) -> None:
    first = "none" if run.first_progress is None else f"{run.first_progress:.1f} s"
    rss_ok = run.peak_rss_mb < RSS_BAR_MB
    first_ok = run.first_progress is not None and run.first_progress <= FIRST_PROGRESS_BAR_SECONDS
    _line("atlas fetch, its own process (fresh home)", run.seconds, f"exit {run.returncode}")
    print(f"  peak RSS: {run.peak_rss_mb:,.0f} MB (bar < {RSS_BAR_MB} MB{'' if rss_ok else ': MISSED'}); "
          f"first progress line after {first} (bar <= {FIRST_PROGRESS_BAR_SECONDS:g} s{'' if first_ok else ': MISSED'})")


def print_refetch(backfill: Backfill, home: Path, emulator) -> bool:
    """(f): ``atlas fetch`` of the range (d) just stored up to its last complete day (today is still
    open, so it is always fetched again), timed; True when it sent no request."""
    before = emulator.stats["total"]
    run = run_cli_process(dataclasses.replace(backfill, end=backfill.end - dt.timedelta(days=1)), home)
    requests = emulator.stats["total"] - before
    ok = run.returncode == 0 and requests == 0 and run.seconds <= REFETCH_BAR_SECONDS
    _line("atlas fetch again, range up to date", run.seconds,
          f"exit {run.returncode}, {requests} requests (bar <= {REFETCH_BAR_SECONDS:g} s, 0 requests{'' if ok else ': MISSED'})")
    return run.returncode == 0 and requests == 0


def _line(label: str, seconds: float, tail: str = "") -> None:
    print(f"  {label + ':':<45}{seconds:6.1f} s" + (f"   -> {tail}" if tail else ""))


def print_backfill(label: str, pipeline: PipelineRun, noop: float, bare_seconds: float, bare_requests: int) -> None:
    ratio = pipeline.seconds / noop
    above_floor = pipeline.seconds - noop
    _line(f"pipeline (Dagster asset, {label} instance)", pipeline.seconds)
    _line("no-op asset, same range, same instance kind", noop,
          f"pipeline / no-op = {ratio:.2f} (bar <= {BAR}{'' if ratio <= BAR else ': MISSED'})")
    _line("bare ccxt paging, same emulator", bare_seconds,
          f"pipeline / bare ccxt = {pipeline.seconds / bare_seconds:.1f} ({bare_requests} requests)")
    _line("pipeline minus no-op floor", above_floor, f"vs bare ccxt = {above_floor / bare_seconds:.1f}")
    if pipeline.stages:
        stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in pipeline.stages.items())
        print(f"  pipeline's own stages (ingest_days): {stages}")
        bookkeeping = pipeline.seconds - sum(pipeline.stages.values())
        bar = f" (bar <= {BOOKKEEPING_BAR_SECONDS:g} s{'' if bookkeeping <= BOOKKEEPING_BAR_SECONDS else ': MISSED'})" if label == "PostgreSQL" else ""
        batch = os.environ.get("DAGSTER_EVENT_BATCH_SIZE", "0")
        print(f"  Dagster bookkeeping (pipeline minus Atlas's own stages): {bookkeeping:.1f} s{bar}; "
              f"DAGSTER_EVENT_BATCH_SIZE={batch}")


def warm_up(backfill: Backfill, work: Path) -> None:
    """Both jobs once over the last days, untimed, so imports and first-call costs hit neither."""
    start = backfill.end - dt.timedelta(days=WARM_UP_DAYS)
    with sqlite_instance(work / "warm-up-pipeline") as instance:
        run_pipeline(backfill, instance, work / "warm-up-store", start)
    with sqlite_instance(work / "warm-up-noop") as instance:
        run_noop(backfill, instance, start)


def bench(args: argparse.Namespace, work: Path) -> int:
    today = dt.datetime.now(dt.UTC).date()
    failed = False
    with build_emulator(synthetic_seed=DEMO_SEED, port=0) as emulator:
        config_dir = bench_config(work / "config", emulator.base_url, args.symbol, args.timeframe, args.start)
        settings = load_exchanges_config(config_dir).get(EXCHANGE)
        backfill = Backfill(args.symbol, args.timeframe, args.start, today + dt.timedelta(days=1), settings, config_dir)
        print(f"backfill {args.start}..{today} {args.symbol} {args.timeframe} ({backfill.partitions:,} partitions; "
              f"emulator seed {DEMO_SEED}, rate limit off)", flush=True)
        process = run_cli_process(backfill, work / "cli-home")  # first: nothing else has run yet
        print_process(process)
        failed |= process.returncode != 0
        failed |= not print_refetch(backfill, work / "cli-home", emulator)
        if args.only_cli:
            return 1 if failed else 0
        warm_up(backfill, work)

        with sqlite_instance(work / "dagster-pipeline") as instance:
            pipeline = run_pipeline(backfill, instance, work / "store")
        with sqlite_instance(work / "dagster-noop") as instance:
            noop = run_noop(backfill, instance)
        bare_seconds, bare, bare_requests = fetch_bare(emulator.base_url, args.symbol, args.timeframe, args.start)
        same, note = compare(backfill, pipeline, bare)
        candles = len(CandleStore(pipeline.store_root).read(EXCHANGE, args.symbol, args.timeframe))

        print(f"  in-process runs ({candles:,} candles stored):")
        print_backfill("SQLite", pipeline, noop, bare_seconds, bare_requests)
        print(f"  stored == bare ccxt: {'yes' if same else 'NO'} ({note})")
        failed |= not same

        if args.postgres_url:
            try:
                import dagster_postgres  # noqa: F401
            except ImportError:
                print("  PostgreSQL instance: skipped (dagster_postgres is not installed)")
            else:
                with postgres_instance(work / "dagster-pg-pipeline", args.postgres_url) as instance:
                    pg_pipeline = run_pipeline(backfill, instance, work / "store-pg")
                with postgres_instance(work / "dagster-pg-noop", args.postgres_url) as instance:
                    pg_noop = run_noop(backfill, instance)
                print_backfill("PostgreSQL", pg_pipeline, pg_noop, bare_seconds, bare_requests)
                pg_same, pg_note = compare(backfill, pg_pipeline, bare)
                print(f"  stored == bare ccxt: {'yes' if pg_same else 'NO'} ({pg_note})")
                failed |= not pg_same

    print_numbers(measure_store_reads(str(work / "store-read")))
    return 1 if failed else 0


ARCHIVE_SPEEDUP_BAR = 5.0
ARCHIVE_RATE_BAR = 1_000_000  # candles/s downloaded, verified and parsed


def publish_archive(emulator: Any, symbol: str, timeframe: str, start: dt.date, today: dt.date) -> int:
    """Build every archive file of the range in the emulator (untimed: the real archive is static
    files); returns how many exist."""
    from atlas_pipeline.market_data.emulator.binance_api import market_id
    from atlas_pipeline.market_data.sources.binance_archive import SPOT, file_path

    emulator.archive.cache_files = 1_000_000
    now = time.time_ns() // 1_000_000
    periods = sorted({f"{d:%Y-%m}" for d in pd.date_range(start, today, freq="D")} | {
        d.date().isoformat() for d in pd.date_range(today.replace(day=1), today, freq="D")
    })
    published = 0
    for period in periods:
        path = f"/data/{file_path(SPOT, market_id(symbol), timeframe, period)}"
        published += emulator.archive.answer(path, (), now).status == 200
    return published


def bench_sources(args: argparse.Namespace, work: Path) -> int:
    """``--source archive``: archive vs REST through the asset, one run each (module docstring)."""
    today = dt.datetime.now(dt.UTC).date()
    timeframe = args.timeframe or "1m"
    with build_emulator(synthetic_seed=DEMO_SEED, port=0) as emulator:
        began = time.perf_counter()
        files = publish_archive(emulator, args.symbol, timeframe, args.start, today)
        print(f"emulator archive: {files} files built in {time.perf_counter() - began:.1f} s (untimed)", flush=True)
        backfills = {}
        for source in ("archive", "rest"):
            folder = bench_config(
                work / f"config-{source}", emulator.base_url, args.symbol, timeframe, args.start,
                history_source=source, **({"archive_url": emulator.base_url} if source == "archive" else {}),
            )
            settings = load_exchanges_config(folder).get(EXCHANGE)
            backfills[source] = Backfill(args.symbol, timeframe, args.start, today + dt.timedelta(days=1), settings, folder)
        print(f"backfill {args.start}..{today} {args.symbol} {timeframe} ({backfills['rest'].partitions:,} partitions; "
              f"emulator seed {DEMO_SEED}, rate limit off)", flush=True)
        runs = {}
        storage = "PostgreSQL" if args.postgres_url else "SQLite"

        def instance_at(folder: Path) -> dg.DagsterInstance:  # each on a fresh instance of the chosen storage
            return postgres_instance(folder, args.postgres_url) if args.postgres_url else sqlite_instance(folder)

        for source, backfill in backfills.items():
            with instance_at(work / f"warm-up-{source}") as instance:
                run_pipeline(backfill, instance, work / f"warm-up-store-{source}", backfill.end - dt.timedelta(days=WARM_UP_DAYS))
            with instance_at(work / f"dagster-{source}") as instance:
                runs[source] = run_pipeline(backfill, instance, work / f"store-{source}")
            print(f"  {source}: {runs[source].seconds:.1f} s", flush=True)
    archive, rest = runs["archive"], runs["rest"]
    stored = {s: CandleStore(r.store_root).read(EXCHANGE, args.symbol, timeframe) for s, r in runs.items()}
    last = min(int(frame["timestamp"].iloc[-1]) for frame in stored.values())
    a, r = (stored[s][stored[s]["timestamp"] <= last].reset_index(drop=True) for s in ("archive", "rest"))
    same = a.equals(r)
    speedup = rest.seconds / archive.seconds
    candles = int(archive.metadata.get("archive_candles", 0))
    archive_seconds = archive.stages.get("archive", 0.0)
    rate = candles / archive_seconds if archive_seconds else 0.0
    print(f"  {len(a):,} candles stored by each (up to the last candle both have)")
    _line(f"archive backfill (Dagster asset, {storage})", archive.seconds,
          f"{int(archive.metadata.get('archive_files', 0))} files, {candles:,} candles from the archive")
    _line(f"REST backfill (Dagster asset, {storage})", rest.seconds, f"{int(rest.metadata.get('requests', 0)):,} requests")
    print(f"  REST / archive = {speedup:.1f}x (bar >= {ARCHIVE_SPEEDUP_BAR:g}x{'' if speedup >= ARCHIVE_SPEEDUP_BAR else ': MISSED'})")
    print(f"  archive download+verify+parse: {archive_seconds:.2f} s, {rate:,.0f} candles/s "
          f"(bar >= {ARCHIVE_RATE_BAR:,}{'' if rate >= ARCHIVE_RATE_BAR else ': MISSED'})")
    own = {label: sum(run.stages.values()) for label, run in (("archive", archive), ("REST", rest))}
    print(f"  Atlas's own stages (wall time minus Dagster bookkeeping): archive {own['archive']:.1f} s, "
          f"REST {own['REST']:.1f} s, REST / archive = {own['REST'] / own['archive']:.1f}x")
    for label, run in (("archive", archive), ("REST", rest)):
        stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in run.stages.items())
        print(f"  {label} stages (ingest_days): {stages}; Dagster bookkeeping {run.seconds - sum(run.stages.values()):.1f} s")
    print(f"  stored candles identical: {'yes' if same else 'NO'}")
    return 0 if same else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", choices=("rest", "archive"), default="rest",
                        help="archive: archive vs REST backfill through the asset (default timeframe 1m)")
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--timeframe", default=None, help="default 1h (1m with --source archive)")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2017, 1, 1))
    parser.add_argument("--postgres-url", help="also run (a) and (b) on a dagster-postgres instance; with --source "
                        "archive, run both backfills on it instead of SQLite (set DAGSTER_EVENT_BATCH_SIZE as production does)")
    parser.add_argument("--only-cli", action="store_true", help="only (d): atlas fetch's peak RSS and first progress line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atlas-ingest-bench-") as work:
        try:
            if args.source == "archive":
                code = bench_sources(args, Path(work))
            else:
                args.timeframe = args.timeframe or "1h"
                code = bench(args, Path(work))
        except BenchFailed as error:
            print(f"bench failed: {error}", file=sys.stderr)
            code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
