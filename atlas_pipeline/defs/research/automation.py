"""When research assets rerun by themselves: the ``research_reruns`` sensor.

It reads the candle, backtest and metrics materializations stored since its cursor (a storage id)
and requests the research partitions they feed (``reruns.py`` has the rules). It replaces a
declarative automation condition whose tick cost grew with the *upstream partition count*: its
cursor turned every upstream partition key into strings, and ``MultiToSingleDimensionPartitionMapping``
expands each market into ~3,600 day keys (49 s a tick at 25 markets, 230 s / 3.65 GB at 100;
DESIGN.md section 7). Here a tick costs what changed: nothing enumerates partitions.

The rules kept from that condition:

- A partition nobody has materialized is not started automatically: every market of an exchange
  is a partition, and only the markets a backtest was run on (UI, CLI, demo) are kept current.
- Reruns wait until the candles' blocking checks passed and their run finished.
- A partition already run (by hand, or by an earlier rerun) on the changed candles is not run again.

The lineage stays declared on the assets (``MultiToSingleDimensionPartitionMapping``); only the
trigger lives here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import dagster as dg

from atlas_pipeline.config.backtests import BacktestSettings
from atlas_pipeline.config.exchanges import ExchangeSettings
from atlas_pipeline.config.portfolios import PortfolioSettings
from atlas_pipeline.defs.sensor_interval import env_seconds, sensor_interval_seconds
from atlas_pipeline.defs.research.reruns import (
    MAX_RUNS_PER_TICK,
    RerunCursor,
    RerunGraph,
    TickOutcome,
    evaluate_tick,
    rerun_graph,
    research_jobs,
)

RESEARCH_AUTOMATION_SENSOR = "research_reruns"
SETTLE_ENV = "ATLAS_RERUN_SETTLE_SECONDS"
SETTLE_SECONDS = 10.0
"""On storages other than SQLite (PostgreSQL): read only storage ids that existed this long ago, so
no insert allocated below them can still be committing (``reruns.py``). Ten seconds is far beyond
one event insert or batch; ticks are 30 s apart by default, so reruns start one tick later."""


def settle_seconds(instance: dg.DagsterInstance) -> float:
    """``ATLAS_RERUN_SETTLE_SECONDS`` if set; else 0 on SQLite (one writer: ids commit in order),
    ``SETTLE_SECONDS`` on other storages (PostgreSQL commits concurrent inserts in any order)."""
    seconds = env_seconds(SETTLE_ENV, float, 0)
    if seconds is not None:
        return float(seconds)
    return 0.0 if _sqlite_event_log(instance) else SETTLE_SECONDS


def _sqlite_event_log(instance: dg.DagsterInstance) -> bool:
    try:
        from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage, SqliteEventLogStorage
    except ImportError:  # Dagster moved them: assume a concurrent storage, which is always safe
        return False
    return isinstance(instance.event_log_storage, (SqliteEventLogStorage, ConsolidatedSqliteEventLogStorage))


def rerun_tick(
    instance: dg.DagsterInstance,
    graph: RerunGraph,
    cursor: str | None,
    now: float | None = None,
    max_runs: int = MAX_RUNS_PER_TICK,
) -> TickOutcome:
    """One tick on ``instance`` from the serialized ``cursor`` (None: the first tick)."""
    state = RerunCursor.parse(cursor, instance)
    now = _now() if now is None else now
    return evaluate_tick(instance, graph, state, now, settle_seconds(instance), max_runs)


def _now() -> float:
    """Dagster's clock (the daemon's; tests and benches freeze it), else the wall clock."""
    try:
        from dagster._time import get_current_timestamp
    except ImportError:
        return time.time()
    return get_current_timestamp()


def research_automation_sensor(
    backtests: Iterable[BacktestSettings],
    exchanges: Mapping[str, ExchangeSettings],
    minimum_interval_seconds: int | None = None,
    max_runs_per_tick: int = MAX_RUNS_PER_TICK,
    portfolios: Iterable[PortfolioSettings] = (),
) -> dg.SensorDefinition:
    """The ``research_reruns`` sensor over these backtests and portfolios; running by default so
    reruns need no clicks."""
    graph = rerun_graph(backtests, exchanges, portfolios)

    @dg.sensor(
        name=RESEARCH_AUTOMATION_SENSOR,
        jobs=research_jobs(graph),  # one per exchange entry: each has its own market partitions
        minimum_interval_seconds=minimum_interval_seconds or sensor_interval_seconds(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Reruns backtests, walk-forwards, metrics, portfolios and the leaderboard whose inputs changed (new candle, "
            "backtest or metrics materializations since its cursor), once those runs finished with passing "
            "blocking checks. Partitions never materialized are left alone."
        ),
    )
    def research_reruns(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        outcome = rerun_tick(context.instance, graph, context.cursor, max_runs=max_runs_per_tick)
        message = outcome.message()
        context.log.info(message)
        return dg.SensorResult(
            run_requests=outcome.run_requests,
            cursor=outcome.cursor.to_json(),
            skip_reason=None if outcome.run_requests else message,
        )

    return research_reruns
