"""Which research partitions to rerun: read from the materializations stored since a storage-id cursor.

One tick of the ``research_reruns`` sensor (``automation.py``) is ``evaluate_tick``. Its cost follows
the new events, never the partition count:

1. **Read** the materializations of every *parent* (``<exchange>/ohlcv_<timeframe>``, and for
   perpetual swaps ``<exchange>/markprice_<timeframe>`` and ``<exchange>/funding``,
   ``<name>/backtest``, ``<name>/metrics``) with a storage id above the cursor, in pages, and fold
   each into (run, parent, market) -> newest storage id and time. A partition ``date|market`` of
   the candles, mark prices or funding counts as its market. The cursor moves past every event read here; nothing read is dropped, it
   waits in the cursor until step 2 settles it.
2. **Settle** by run: changes wait until the run that wrote them has finished (and while another
   unfinished run wrote the same parent and market). A finished run that recorded a failed
   *blocking* check on a parent does not count for the markets it failed on (all of them, unless
   the evaluation names its partition or ``failed_markets``): data that failed must not feed
   research. In the events: an OHLCV run whose checks fail records a failed ``ASSET_CHECK_EVALUATION``
   (one per check for the run's range, the failing markets in its metadata) and a ``STEP_FAILURE``,
   and no materialization for the failing markets (what it recorded passed); a backtest whose
   ``lookahead_bias`` check fails *is* materialized, in a failed run, and must not rerun its metrics.
3. **Decide** per child partition (``backtest``/``walkforward`` of a candle change, or for a perp
   backtest of a mark-price or funding change too, ``metrics`` of a backtest change, the
   ``leaderboard`` of a metrics change, a ``portfolio`` of a change of the candles, or for a swap
   portfolio the mark prices or funding, of one of its markets):

   - a partition nobody ever materialized is left alone: every market of an exchange is a
     partition, and only the markets a backtest was run on (UI, CLI, demo) are kept current;
   - it is already handled when a run that read the parent after it changed materialized it (the
     same run as the parent, or a run that started after the change), or such a run is queued or in
     progress: a backtest run by hand after its candles changed is not run again;
   - a portfolio (unpartitioned, fed by the candles of several markets) counts only changes of its
     own markets; like the leaderboard it runs once no run of its inputs is pending;
   - otherwise it is requested. One run per (exchange, market) takes every child of that market that
     needs it, with ``<name>/metrics`` following its ``<name>/backtest`` in the same run;
     research assets run one market per run (their code reads one market, and a failing strategy
     must fail only its market). At most ``MAX_RUNS_PER_TICK`` runs a tick, oldest changes first;
     the rest waits in the cursor and is checked again next tick. The leaderboard waits until no
     run of its parents is queued, in progress or still to be requested, then runs once.

Storage ids are allocated when an event is inserted, not when it commits. SQLite has one writer at
a time, so ids commit in order. PostgreSQL commits concurrent inserts in any order: a tick that read
up to id 101 could skip id 100 committing a moment later. With ``settle_seconds`` > 0 a tick reads
only up to the largest id that existed ``settle_seconds`` ago (recorded by earlier ticks), so every
insert below it has long finished; it costs reruns one tick of delay and no sleep.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.config.exchanges import ExchangeSettings
from atlas_pipeline.config.portfolios import PortfolioSettings
from atlas_pipeline.defs.market_data.partitions import DATE, SYMBOL, market_keys
from atlas_pipeline.defs.research.assets import (
    LEADERBOARD_KEY,
    backtest_asset_key,
    metrics_asset_key,
    walkforward_asset_key,
)
from atlas_pipeline.defs.research.assets import market_parents
from atlas_pipeline.defs.research.portfolios import portfolio_asset_key
from atlas_pipeline.market_data.candles import symbol_key

PARTITION_TAG = "dagster/partition"
RUNLESS = ""  # the run id of a materialization reported outside any run
PAGE = 5_000
"""Materializations fetched per query."""
MAX_EVENTS_PER_TICK = 100_000
"""A backfill's events (one per day and market) are read over as many ticks as they need."""
MAX_RUNS_PER_TICK = 20
"""Runs one tick requests; more wait in the cursor for the next ticks. The daemon spends ~0.3 s
creating and queueing each run inside the tick (measured: 164 s for 500 on SQLite), while the run
queue starts only ``max_concurrent_runs`` at a time, each taking 10 s or more: 20 runs every 30 s
outpace it, so a larger batch would only make the tick longer, not the reruns sooner."""
RUN_QUERY_CHUNK = 500
FAILED_MARKETS = "failed_markets"
"""Metadata of a range run's check evaluation: the market partition keys it failed on."""
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.SUSPENDED,
]
"""Queued or in progress (Dagster's ``NOT_FINISHED_STATUSES``)."""
CURSOR_VERSION = 2
"""2: asset keys ``<exchange>/ohlcv_<tf>``, ``<name>/backtest``, ...; a cursor naming the old keys
(``ohlcv/<exchange>/<tf>``, ``backtest/<name>``) starts afresh."""
# MultiPartitionKey's string form orders the dimensions by name: "2024-01-01|BTC-USDT".
_MARKET_INDEX = sorted([DATE, SYMBOL]).index(SYMBOL)

Entry = tuple[dg.AssetKey, str]  # (asset, market partition)


@dataclass(frozen=True)
class RerunGraph:
    """The research assets as the sensor sees them: which parent feeds which children, per market."""

    children: Mapping[dg.AssetKey, tuple[dg.AssetKey, ...]]
    """Parent -> children; the parents are what the sensor reads."""
    followers: Mapping[dg.AssetKey, tuple[dg.AssetKey, ...]]
    """A partitioned child -> its partitioned children, rerun in the same run when materialized before."""
    exchange_of: Mapping[dg.AssetKey, str]
    """Partitioned research asset -> its exchange entry (the market keys it is partitioned by)."""
    markets: Mapping[str, frozenset[str] | None]
    """Exchange entry -> its listed market keys; None for a universe entry, whose markets are dynamic
    partitions (only ever added): a market with candle events is one of them."""
    dated: frozenset[dg.AssetKey]
    """Parents partitioned date x market (the candles)."""
    watches: Mapping[dg.AssetKey, frozenset[str]] = field(default_factory=dict)
    """Unpartitioned child of candles (a portfolio) -> the market keys it reads: a change of
    another market of the same candle asset does not concern it."""

    @property
    def parents(self) -> tuple[dg.AssetKey, ...]:
        return tuple(self.children)

    def market(self, parent: dg.AssetKey, partition: str | None) -> str | None:
        if partition is None:
            return None
        return partition.split("|")[_MARKET_INDEX] if parent in self.dated else partition

    def partitioned(self, key: dg.AssetKey) -> bool:
        return key in self.exchange_of


UNPARTITIONED_RESEARCH_JOB = "research_reruns_unpartitioned"


def research_job_name(exchange: str) -> str:
    """The job the sensor's reruns of ``exchange``'s research partitions run in. One per exchange
    entry: a Dagster job's assets share one partitions definition, and each entry has its own
    market dimension (a universe entry's is dynamic)."""
    return f"research_reruns_{exchange}"


def research_jobs(graph: "RerunGraph") -> list[dg.UnresolvedAssetJobDefinition]:
    """The sensor's jobs: the partitioned research assets of each exchange entry, and the
    unpartitioned ones (the leaderboard)."""
    by_exchange: dict[str, list[dg.AssetKey]] = defaultdict(list)
    for key, exchange in graph.exchange_of.items():
        by_exchange[exchange].append(key)
    unpartitioned = {child for children in graph.children.values() for child in children} - set(graph.exchange_of)
    jobs = [
        dg.define_asset_job(research_job_name(exchange), selection=dg.AssetSelection.assets(*sorted(keys, key=str)))
        for exchange, keys in sorted(by_exchange.items())
    ]
    jobs.append(dg.define_asset_job(UNPARTITIONED_RESEARCH_JOB, selection=dg.AssetSelection.assets(*sorted(unpartitioned, key=str))))
    return jobs


def rerun_graph(
    backtests: Iterable[BacktestSettings],
    exchanges: Mapping[str, ExchangeSettings],
    portfolios: Iterable[PortfolioSettings] = (),
) -> RerunGraph:
    """Candles (and a swap's mark prices and funding) -> backtest and walk-forward, backtest ->
    metrics, metrics -> leaderboard (as declared in ``assets.py``); the same inputs of its markets
    -> portfolio (``portfolios.py``)."""
    children: dict[dg.AssetKey, list[dg.AssetKey]] = defaultdict(list)
    followers: dict[dg.AssetKey, tuple[dg.AssetKey, ...]] = {}
    exchange_of: dict[dg.AssetKey, str] = {}
    dated: set[dg.AssetKey] = set()
    for settings in backtests:
        backtest, metrics = backtest_asset_key(settings.name), metrics_asset_key(settings.name)
        fed = [backtest] + ([walkforward_asset_key(settings.name)] if settings.walk_forward is not None else [])
        for parent in market_parents(settings):
            dated.add(parent)
            children[parent].extend(fed)
        children[backtest].append(metrics)
        children[metrics].append(LEADERBOARD_KEY)
        followers[backtest] = (metrics,)
        exchange_of.update({key: settings.exchange for key in (*fed, metrics)})
    watches: dict[dg.AssetKey, frozenset[str]] = {}
    for portfolio in portfolios:
        key = portfolio_asset_key(portfolio.name)
        for parent in market_parents(portfolio):
            dated.add(parent)
            children[parent].append(key)
        watches[key] = frozenset(symbol_key(symbol) for symbol in portfolio.symbols)
    return RerunGraph(
        children={parent: tuple(keys) for parent, keys in children.items()},
        followers=followers,
        exchange_of=exchange_of,
        markets={
            name: None if settings.universe is not None else frozenset(market_keys(settings))
            for name, settings in exchanges.items()
        },
        dated=frozenset(dated),
        watches=watches,
    )


@dataclass
class RerunCursor:
    """What the sensor remembers between ticks (its cursor, as JSON)."""

    origin: int
    """Storage id before the first tick: older events count as handled (as Dagster's initial evaluation)."""
    after: dict[str, int] = field(default_factory=dict)
    """Parent asset -> the last storage id read."""
    waiting: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Run id -> "asset|market" -> [storage id, timestamp] of changes read but not settled yet."""
    due: dict[str, list[float]] = field(default_factory=dict)
    """Unpartitioned child (the leaderboard) -> [storage id, timestamp] of the newest parent change."""
    backlog: dict[str, list[float]] = field(default_factory=dict)
    """Reruns decided but beyond a tick's ``max_runs``: "asset|market" -> [storage id, timestamp]."""
    bound: int | None = None
    """With a settle delay: the highest storage id a tick may read."""
    marks: list[list[float]] = field(default_factory=list)
    """With a settle delay: [time, largest storage id then] of recent ticks."""

    @classmethod
    def start(cls, instance: dg.DagsterInstance) -> RerunCursor:
        origin = instance.event_log_storage.get_maximum_record_id() or 0
        return cls(origin=origin, bound=None)

    @classmethod
    def parse(cls, text: str | None, instance: dg.DagsterInstance) -> RerunCursor:
        if not text:
            return cls.start(instance)
        data = json.loads(text)
        if data.get("v") != CURSOR_VERSION:  # e.g. the declarative automation's cursor: start afresh
            return cls.start(instance)
        return cls(
            origin=data["origin"],
            after=data["after"],
            waiting=data["waiting"],
            due=data["due"],
            backlog=data.get("backlog", {}),
            bound=data["bound"],
            marks=data["marks"],
        )

    def to_json(self) -> str:
        return json.dumps(
            {"v": CURSOR_VERSION, "origin": self.origin, "after": self.after, "waiting": self.waiting,
             "due": self.due, "backlog": self.backlog, "bound": self.bound, "marks": self.marks},
            separators=(",", ":"),
        )

    def settle(self, instance: dg.DagsterInstance, now: float, settle_seconds: float) -> int | None:
        """The highest storage id this tick may read (None: any)."""
        if settle_seconds <= 0:
            self.bound, self.marks = None, []
            return None
        newest = instance.event_log_storage.get_maximum_record_id() or 0
        marks = [*self.marks, [now, newest]]
        ripe = [int(mark[1]) for mark in marks if mark[0] <= now - settle_seconds]
        self.bound = max([self.bound if self.bound is not None else self.origin, *ripe])
        self.marks = [mark for mark in marks if mark[0] > now - settle_seconds]
        return self.bound

    def note(self, run_id: str, entry: Entry, storage_id: int, timestamp: float) -> None:
        changes = self.waiting.setdefault(run_id, {})
        name = _entry_name(entry)
        old = changes.get(name)
        changes[name] = list(_newer(None if old is None else (int(old[0]), old[1]), (storage_id, timestamp)))


@dataclass(frozen=True)
class Change:
    """A parent partition that changed in a finished run (or outside any run)."""

    entry: Entry
    storage_id: int
    timestamp: float
    run_id: str
    run_selection: frozenset[dg.AssetKey] | None
    """The assets the run selected; None when unknown or all (``dg.materialize`` records none)."""


@dataclass
class TickOutcome:
    run_requests: list[dg.RunRequest]
    cursor: RerunCursor
    events_read: int = 0
    changes: int = 0
    rejected: int = 0
    never_run: int = 0
    handled: int = 0
    partitions: int = 0

    def message(self) -> str:
        waiting = len(self.cursor.waiting)
        parts = [f"read {self.events_read:,} materializations"]
        if self.changes or self.rejected:
            rejected = f", {self.rejected:,} from runs with failed blocking checks" if self.rejected else ""
            parts.append(f"{self.changes:,} changed input partition(s) (asset x market){rejected}")
        if self.never_run or self.handled:
            parts.append(f"left alone: {self.never_run:,} partition(s) never run, {self.handled:,} already rerun")
        if waiting:
            parts.append(f"waiting on {waiting:,} unfinished run(s)")
        if self.cursor.due:
            parts.append(f"held until its inputs' runs finish: {', '.join(sorted(self.cursor.due))}")
        parts.append(f"requested {len(self.run_requests):,} run(s) over {self.partitions:,} partition(s)")
        if self.cursor.backlog:
            markets = len({name.rsplit("|", 1)[1] for name in self.cursor.backlog})
            parts.append(f"{markets:,} market(s) left for the next ticks (at most {MAX_RUNS_PER_TICK} runs a tick)")
        return "; ".join(parts)


def evaluate_tick(
    instance: dg.DagsterInstance,
    graph: RerunGraph,
    cursor: RerunCursor,
    now: float,
    settle_seconds: float = 0.0,
    max_runs: int = MAX_RUNS_PER_TICK,
) -> TickOutcome:
    """One tick: read new materializations, settle them by run, request the children that need it
    (at most ``max_runs`` runs; the rest waits in the cursor's backlog for the next ticks)."""
    outcome = TickOutcome(run_requests=[], cursor=cursor)
    bound = cursor.settle(instance, now, settle_seconds)
    outcome.events_read = _read(instance, graph, cursor, bound)
    changes = _settled_changes(instance, graph, cursor, outcome)
    outcome.changes = len({change.entry for change in changes})
    partitioned, due = _fan_out(instance, graph, changes)
    for name, (storage_id, timestamp) in due.items():
        old = cursor.due.get(name)
        cursor.due[name] = list(_newer(None if old is None else (int(old[0]), old[1]), (storage_id, timestamp)))
    for name, (storage_id, timestamp) in cursor.backlog.items():  # decided before, re-checked now
        entry = _parse_entry(name)
        partitioned[entry] = _newer(partitioned.get(entry), (int(storage_id), timestamp))
    wanted = _needing_rerun(instance, graph, partitioned, outcome)
    requests, backlog = _partition_runs(instance, graph, wanted, outcome, max_runs)
    cursor.backlog = {_entry_name(entry): [storage_id, timestamp] for entry, (storage_id, timestamp) in backlog.items()}
    outcome.run_requests.extend(requests)
    outcome.run_requests.extend(_unpartitioned_runs(instance, graph, cursor, outcome))
    return outcome


def _read(instance: dg.DagsterInstance, graph: RerunGraph, cursor: RerunCursor, bound: int | None) -> int:
    budget = MAX_EVENTS_PER_TICK
    read = 0
    for parent in graph.parents:
        name = parent.to_user_string()
        after = cursor.after.get(name, cursor.origin)
        while budget > 0 and (bound is None or after < bound):
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=parent,
                    after_storage_id=after,
                    before_storage_id=None if bound is None else bound + 1,
                ),
                limit=min(PAGE, budget),
                ascending=True,
            )
            for record in result.records:
                market = graph.market(parent, record.partition_key)
                if market is not None:
                    cursor.note(record.run_id, (parent, market), record.storage_id, record.timestamp)
                after = record.storage_id
            budget -= len(result.records)
            read += len(result.records)
            if not result.has_more:
                break
        cursor.after[name] = after
    return read


def _settled_changes(
    instance: dg.DagsterInstance, graph: RerunGraph, cursor: RerunCursor, outcome: TickOutcome
) -> list[Change]:
    runs = _runs(instance, [run_id for run_id in cursor.waiting if run_id != RUNLESS])
    unfinished = {run_id for run_id, run in runs.items() if not run.is_finished}
    busy = {name for run_id in unfinished for name in cursor.waiting[run_id]}
    changes: list[Change] = []
    for run_id in list(cursor.waiting):
        if run_id in unfinished:
            continue
        run = runs.get(run_id)  # None: runless, or a deleted run
        succeeded = run is None or run.status == dg.DagsterRunStatus.SUCCESS
        failed = {} if succeeded else _failed_blocking_checks(instance, graph, run_id)
        kept: dict[str, list[float]] = {}
        for name, (storage_id, timestamp) in cursor.waiting[run_id].items():
            entry = _parse_entry(name)
            if entry[0] in failed and (failed[entry[0]] is None or entry[1] in failed[entry[0]]):
                outcome.rejected += 1
            elif name in busy:
                kept[name] = [storage_id, timestamp]
            else:
                selection = frozenset(run.asset_selection) if run is not None and run.asset_selection else None
                changes.append(Change(entry, int(storage_id), timestamp, run_id, selection))
        if kept:
            cursor.waiting[run_id] = kept
        else:
            del cursor.waiting[run_id]
    return changes


def _failed_blocking_checks(
    instance: dg.DagsterInstance, graph: RerunGraph, run_id: str
) -> dict[dg.AssetKey, set[str] | None]:
    """Asset -> the markets a blocking check failed on in the run; None: all of them.

    A range run records one evaluation per check for its whole range (no partition); the OHLCV
    checks name the failing markets in ``failed_markets`` metadata, and the other markets of such a
    run were validated and are recorded, so they count. An evaluation that names neither a
    partition nor ``failed_markets`` rejects every market of that asset in the run.
    """
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    failed: dict[dg.AssetKey, set[str] | None] = {}
    for record in records:
        evaluation = record.event_log_entry.dagster_event.asset_check_evaluation_data
        if evaluation.passed or not evaluation.blocking:
            continue
        key = evaluation.asset_key
        named = evaluation.metadata.get(FAILED_MARKETS)
        if evaluation.partition is not None:
            markets = {graph.market(key, evaluation.partition)}
        elif named is not None and isinstance(named.value, list):
            markets = {str(market) for market in named.value}
        else:
            failed[key] = None
            continue
        if key not in failed or failed[key] is not None:
            failed[key] = (failed.get(key) or set()) | markets
    return failed


def _fan_out(
    instance: dg.DagsterInstance, graph: RerunGraph, changes: list[Change]
) -> tuple[dict[Entry, tuple[int, float]], dict[str, tuple[int, float]]]:
    """Children of the changes: partitioned (child, market) and unpartitioned child -> (newest
    parent storage id, time). A child the same run materialized after its parent is handled."""
    partitioned: dict[Entry, tuple[int, float]] = {}
    due: dict[str, tuple[int, float]] = {}
    same_run = _SameRunMaterializations(instance)
    for change in changes:
        parent, market = change.entry
        for child in graph.children.get(parent, ()):
            if parent not in graph.dated and same_run.materialized(change, child):
                continue
            if child in graph.watches and market not in graph.watches[child]:
                continue  # a portfolio reads only its own markets' candles
            if graph.partitioned(child):
                listed = graph.markets.get(graph.exchange_of[child], frozenset())
                if listed is not None and market not in listed:
                    continue  # a market no longer configured
                target, name = partitioned, (child, market)
            else:
                target, name = due, child.to_user_string()
            target[name] = _newer(target.get(name), (change.storage_id, change.timestamp))
    return partitioned, due


class _SameRunMaterializations:
    """Which assets a research run materialized (cached per run; only asked for research parents,
    whose runs hold a handful of materializations)."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._instance = instance
        self._runs: dict[str, set[tuple[dg.AssetKey, str | None]]] = {}

    def materialized(self, change: Change, child: dg.AssetKey) -> bool:
        if change.run_id == RUNLESS or (change.run_selection is not None and child not in change.run_selection):
            return False
        if change.run_id not in self._runs:
            records = self._instance.get_records_for_run(
                change.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            ).records
            self._runs[change.run_id] = {(r.asset_key, r.partition_key) for r in records}
        done = self._runs[change.run_id]
        return (child, change.entry[1]) in done or (child, None) in done


def _needing_rerun(
    instance: dg.DagsterInstance, graph: RerunGraph, partitioned: dict[Entry, tuple[int, float]], outcome: TickOutcome
) -> dict[Entry, tuple[int, float]]:
    """The (child, market) partitions to request -> the newest parent change (storage id, time) behind each."""
    by_child: dict[dg.AssetKey, dict[str, tuple[int, float]]] = defaultdict(dict)
    for (child, market), change in partitioned.items():
        by_child[child][market] = change
    wanted: dict[Entry, tuple[int, float]] = {}
    in_flight = _in_flight(instance, {market for markets in by_child.values() for market in markets})
    for child, changes in by_child.items():
        run_before = instance.get_latest_storage_id_by_partition(
            child, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(changes)
        )
        outcome.never_run += len(changes) - len(run_before)
        changes = {market: change for market, change in changes.items() if market in run_before}
        read_after = _materialized_by_runs_started_after(instance, child, changes)
        for market, (storage_id, timestamp) in changes.items():
            if market in read_after or _will_read(in_flight.get(market, ()), child, timestamp):
                outcome.handled += 1
            else:
                wanted[(child, market)] = (storage_id, timestamp)
    return wanted


def _materialized_by_runs_started_after(
    instance: dg.DagsterInstance, child: dg.AssetKey, changes: Mapping[str, tuple[int, float]]
) -> set[str]:
    """Markets of ``child`` materialized, after their parent changed, by a run that started after
    the change (so it read the new data): nothing to rerun."""
    if not changes:
        return set()
    records = _all_records(
        instance,
        dg.AssetRecordsFilter(
            asset_key=child,
            asset_partitions=sorted(changes),
            after_storage_id=min(storage_id for storage_id, _ in changes.values()),
        ),
    )
    later = [r for r in records if r.storage_id > changes[r.partition_key][0]]
    runs = _run_records(instance, {r.run_id for r in later if r.run_id != RUNLESS})
    done = set()
    for record in later:
        run = runs.get(record.run_id)
        if run is not None and run.start_time is not None and run.start_time > changes[record.partition_key][1]:
            done.add(record.partition_key)
    return done


def _in_flight(instance: dg.DagsterInstance, markets: set[str]) -> dict[str, list[dg.RunRecord]]:
    """Unfinished runs of these market partitions, by market."""
    found: dict[str, list[dg.RunRecord]] = defaultdict(list)
    for chunk in _chunks(sorted(markets), RUN_QUERY_CHUNK):
        for record in instance.get_run_records(dg.RunsFilter(tags={PARTITION_TAG: chunk}, statuses=UNFINISHED)):
            found[record.dagster_run.tags[PARTITION_TAG]].append(record)
    return found


def _will_read(runs: Sequence[dg.RunRecord], child: dg.AssetKey, changed_at: float) -> bool:
    """A queued or running run of this partition that selects ``child`` and starts (started) after the change."""
    for record in runs:
        selection = record.dagster_run.asset_selection
        if selection and child not in selection:
            continue
        if record.start_time is None or record.start_time > changed_at:
            return True
    return False


def _partition_runs(
    instance: dg.DagsterInstance,
    graph: RerunGraph,
    wanted: dict[Entry, tuple[int, float]],
    outcome: TickOutcome,
    max_runs: int,
) -> tuple[list[dg.RunRequest], dict[Entry, tuple[int, float]]]:
    """One run per (exchange, market): every wanted child there, and the followers run before.

    At most ``max_runs`` (the oldest changes first); the rest is returned as the backlog."""
    groups: dict[tuple[str, str], dict[dg.AssetKey, tuple[int, float]]] = defaultdict(dict)
    for (child, market), change in wanted.items():
        groups[(graph.exchange_of[child], market)][child] = change
    order = sorted(groups, key=lambda group: (min(change[0] for change in groups[group].values()), group))
    backlog = {(child, group[1]): change for group in order[max_runs:] for child, change in groups[group].items()}
    by_run = {group: {child: change[0] for child, change in groups[group].items()} for group in order[:max_runs]}
    following: dict[dg.AssetKey, set[str]] = defaultdict(set)
    for (_, market), keys in by_run.items():
        for child in keys:
            for follower in graph.followers.get(child, ()):
                following[follower].add(market)
    for follower, markets in following.items():
        run_before = instance.get_latest_storage_id_by_partition(
            follower, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=markets
        )
        for market in run_before:
            keys = by_run[(graph.exchange_of[follower], market)]
            keys.setdefault(follower, max(keys.values()))
    requests = []
    for (exchange, market), keys in by_run.items():
        outcome.partitions += len(keys)
        requests.append(
            dg.RunRequest(
                run_key=f"{exchange}:{market}:{max(keys.values())}",
                job_name=research_job_name(exchange),
                partition_key=market,
                asset_selection=sorted(keys, key=lambda key: key.to_user_string()),
                tags={"atlas/rerun": "inputs changed"},
            )
        )
    return requests, backlog


def _unpartitioned_runs(
    instance: dg.DagsterInstance, graph: RerunGraph, cursor: RerunCursor, outcome: TickOutcome
) -> list[dg.RunRequest]:
    """The leaderboard, once no run of its parents is pending (and none was requested this tick)."""
    requests = []
    if not cursor.due:
        return requests
    requesting = {key for request in outcome.run_requests for key in request.asset_selection or ()}
    requesting |= {_parse_entry(name)[0] for name in cursor.backlog}
    unfinished = None
    for name in sorted(cursor.due):
        storage_id, timestamp = cursor.due[name]
        child = dg.AssetKey.from_user_string(name)
        parents = {parent for parent, children in graph.children.items() if child in children}
        latest = instance.fetch_materializations(child, limit=1).records
        if not latest:
            outcome.never_run += 1
            del cursor.due[name]
            continue
        if requesting & parents:
            continue
        if unfinished is None:
            unfinished = list(instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED)))
        if any(_may_select(record.dagster_run, parents | {child}) for record in unfinished):
            continue  # held: a run of its inputs (or of itself) is still queued or in progress
        del cursor.due[name]
        [record] = latest
        if record.storage_id > storage_id:
            run = _run_records(instance, {record.run_id} - {RUNLESS}).get(record.run_id)
            if run is not None and run.start_time is not None and run.start_time > timestamp:
                outcome.handled += 1
                continue
        outcome.partitions += 1
        requests.append(
            dg.RunRequest(
                run_key=f"{name}:{int(storage_id)}",
                job_name=UNPARTITIONED_RESEARCH_JOB,
                asset_selection=[child],
                tags={"atlas/rerun": "inputs changed"},
            )
        )
    return requests


def _newer(old: tuple[int, float] | None, new: tuple[int, float]) -> tuple[int, float]:
    """The newer of two (storage id, time) changes, field by field."""
    return new if old is None else (max(old[0], new[0]), max(old[1], new[1]))


def _may_select(run: dg.DagsterRun, keys: set[dg.AssetKey]) -> bool:
    """Whether the run may materialize any of ``keys``: its asset selection says so; without one, a
    run of an implicit asset job (``__ASSET_JOB``, ``dg.materialize``'s ephemeral job) may run any
    asset, while Atlas's named jobs (``ohlcv_<exchange>``) hold only candles."""
    if run.asset_selection:
        return bool(run.asset_selection & keys)
    return run.job_name.startswith("__")


def _runs(instance: dg.DagsterInstance, run_ids: Sequence[str]) -> dict[str, dg.DagsterRun]:
    return {run_id: record.dagster_run for run_id, record in _run_records(instance, set(run_ids)).items()}


def _run_records(instance: dg.DagsterInstance, run_ids: set[str]) -> dict[str, dg.RunRecord]:
    found = {}
    for chunk in _chunks(sorted(run_ids), RUN_QUERY_CHUNK):
        for record in instance.get_run_records(dg.RunsFilter(run_ids=chunk)):
            found[record.dagster_run.run_id] = record
    return found


def _all_records(instance: dg.DagsterInstance, records_filter: dg.AssetRecordsFilter) -> list[dg.EventLogRecord]:
    records: list[dg.EventLogRecord] = []
    cursor = None
    while True:
        result = instance.fetch_materializations(records_filter, limit=PAGE, cursor=cursor, ascending=True)
        records.extend(result.records)
        if not result.has_more:
            return records
        cursor = result.cursor


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _entry_name(entry: Entry) -> str:
    return f"{entry[0].to_user_string()}|{entry[1]}"


def _parse_entry(name: str) -> Entry:
    key, market = name.rsplit("|", 1)
    return dg.AssetKey.from_user_string(key), market
