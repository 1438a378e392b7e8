"""Parameter sweeps: one strategy backtested over a grid of params, ranked by one metric.

Rules:

- **Grid.** ``expand_grid`` is the cartesian product in the mapping's key order (first key
  slowest); candidates are numbered 0..n-1 in that order, and every table keeps it.
- **Jobs.** A job is the pool's spec with the candidate's params merged over ``spec.params``
  (and its ``exits.<key>`` values over ``spec.exits``: ``engine.exits.with_params``), run
  by ``engine.run_backtest`` on the candles whose open time is in ``[start_ms, end_ms)`` (with
  the job's ``trade_from_ms``, if any: earlier candles only warm up), then
  ``metrics.compute_metrics``. A candidate the strategy refuses (``StrategyError`` or
  ``ValueError``: ``fast >= slow``, too few candles for its warm-up) is an *errored* candidate,
  not a failed sweep; any other exception is a bug and propagates. If **every** candidate errors
  the sweep raises ``ValueError`` with the first error: that is a systematic problem (wrong
  strategy, window shorter than any warm-up), not a result.
- **Filters** reject candidates with ``trade_count < min_trades`` or ``max_drawdown >
  max_drawdown`` (a positive fraction, as in ``metrics``), and candidates whose objective is NaN
  (a NaN cannot be ranked). ``rejected`` lists every reason, ``"; "``-joined; an error shows
  its first line (``JobOutcome.error`` keeps the strategy traceback).
- **Choice.** The best objective among the passed candidates (max, or min for
  ``LOWER_IS_BETTER`` metrics unless ``Objective.maximize`` says otherwise; +-inf rank as
  numbers); ties go to the earlier candidate. Nothing passed -> no choice, no exception.
- **Processes.** ``BacktestPool`` sends candles/spec/timeframe once per worker (pool
  initializer into a module global) and per job only the params and range; workers return
  metrics (small) unless results are asked for. Workers start with the ``forkserver`` method:
  ``fork`` copies a multi-threaded parent (a Dagster step process) with locks held by other
  threads. As with any non-fork start method, a script that uses a pool needs an
  ``if __name__ == "__main__":`` guard. Results are identical to a serial run: each job is a
  fresh, deterministic backtest.
- **Isolation.** Strategy code is untrusted. With ``isolate=True`` every job (and
  ``BacktestPool.backtest``) runs in a worker, even one job on one worker, so the caller's process
  (the CLI, a Dagster step) survives whatever the strategy does; a worker that ends without
  returning (``os._exit``, a crash in native code, a kill such as the OOM killer's) raises
  ``StrategyCrashed`` with its exit code, and the pool starts new workers on its next use. A
  ``sys.exit()`` in a strategy is an ordinary ``StrategyError`` (the engine catches it). Without
  ``isolate``, one worker or one job runs in-process (a library user's choice; ``research_runs``
  always isolates). Cost per backtest: ``bench/backtest.py --isolated``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atlas_pipeline.config.paths import strategies_dir as default_strategies_dir
from atlas_pipeline.progress import report as report_progress
from atlas_pipeline.research.engine import BacktestSpec, StrategyError, run_backtest
from atlas_pipeline.research.engine.exits import with_params
from atlas_pipeline.research.lookahead import LookaheadReport, check_lookahead
from atlas_pipeline.research.metrics import METRIC_DESCRIPTIONS, compute_metrics
from atlas_pipeline.research.results import BacktestResult

__all__ = [
    "LOWER_IS_BETTER",
    "OBJECTIVE_METRICS",
    "BacktestJob",
    "BacktestPool",
    "JobOutcome",
    "Objective",
    "SingleBacktest",
    "StrategyCrashed",
    "SweepFilters",
    "SweepResult",
    "expand_grid",
    "run_sweep",
    "sweep_result",
]

OBJECTIVE_METRICS: tuple[str, ...] = tuple(k for k in METRIC_DESCRIPTIONS if k not in ("start", "end"))
"""Metrics a sweep can rank by: every numeric one."""
LOWER_IS_BETTER = {"max_drawdown", "max_drawdown_duration_days", "annual_volatility"}
PRELOAD = ["atlas_pipeline.research.engine", "atlas_pipeline.research.metrics", "atlas_pipeline.research.lookahead"]
"""Imported once in the fork server, so each worker starts with backtrader and pandas loaded."""
PROGRESS_LINES = 10


@dataclass(frozen=True)
class Objective:
    """The metric a sweep ranks by; ``maximize`` None means "higher is better" unless the metric
    is in ``LOWER_IS_BETTER``."""

    metric: str = "sharpe"
    maximize: bool | None = None

    def __post_init__(self) -> None:
        if self.metric not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown objective metric {self.metric!r}; valid: {', '.join(OBJECTIVE_METRICS)}")

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER if self.maximize is None else self.maximize


@dataclass(frozen=True)
class SweepFilters:
    """Minimum robustness a candidate needs before its objective counts."""

    min_trades: int = 0
    max_drawdown: float | None = None
    """Positive fraction (0.5 = 50 %); a candidate whose max_drawdown exceeds it is rejected."""


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, first key slowest."""
    for name, values in grid.items():
        if len(values) == 0:
            raise ValueError(f"sweep grid param {name!r} has no values")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(list(grid[n]) for n in names))]


@dataclass(frozen=True)
class BacktestJob:
    """One backtest: params over the pool's spec, on candles with open time in [start_ms, end_ms),
    trading only from ``trade_from_ms`` (earlier candles warm the strategy up; engine doc)."""

    params: dict[str, Any]
    start_ms: int | None = None
    end_ms: int | None = None
    trade_from_ms: int | None = None


@dataclass
class JobOutcome:
    metrics: dict[str, Any] | None
    error: str | None
    result: BacktestResult | None = None
    """Only when the pool was asked to keep results (they are large to send between processes)."""


@dataclass
class SingleBacktest:
    """``BacktestPool.backtest``'s answer: the result, its lookahead check (when asked) and timings."""

    result: BacktestResult
    lookahead: LookaheadReport | None
    seconds: dict[str, float]
    """``backtest`` and, when checked, ``lookahead``."""


class StrategyCrashed(StrategyError):
    """A worker process running strategy code ended without returning a result."""


def exit_description(code: int | None) -> str:
    """``exit code 0``, ``signal SIGKILL`` (a negative multiprocessing exit code), ``an unknown exit code``."""
    if code is None:
        return "an unknown exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class _Context:
    candles: pd.DataFrame
    stamps: np.ndarray
    spec: BacktestSpec
    timeframe: str
    strategies_dir: Path


_WORKER: _Context | None = None
"""The worker process's candles and spec, set once by the pool initializer."""


def _context(candles: pd.DataFrame, spec: BacktestSpec, timeframe: str, strategies_dir: Path) -> _Context:
    candles = candles.reset_index(drop=True)
    return _Context(candles, candles["timestamp"].to_numpy(np.int64), spec, timeframe, strategies_dir)


def _init_worker(candles: pd.DataFrame, spec: BacktestSpec, timeframe: str, strategies_dir: Path) -> None:
    global _WORKER
    _WORKER = _context(candles, spec, timeframe, strategies_dir)


def _run_job(context: _Context, job: BacktestJob, keep: bool) -> JobOutcome:
    lo = 0 if job.start_ms is None else int(np.searchsorted(context.stamps, job.start_ms, side="left"))
    hi = len(context.stamps) if job.end_ms is None else int(np.searchsorted(context.stamps, job.end_ms, side="left"))
    spec = with_params(context.spec, job.params)
    try:
        result = run_backtest(context.candles.iloc[lo:hi], spec, context.timeframe, context.strategies_dir,
                              trade_from_ms=job.trade_from_ms)
        metrics = compute_metrics(result.equity, result.trades, result.close)
    except (StrategyError, ValueError) as exc:
        return JobOutcome(metrics=None, error=str(exc))
    return JobOutcome(metrics=metrics, error=None, result=result if keep else None)


def _worker_job(job: BacktestJob, keep: bool) -> JobOutcome:
    assert _WORKER is not None, "BacktestPool worker used without its initializer"
    return _run_job(_WORKER, job, keep)


def _single(context: _Context, params: dict[str, Any], lookahead: bool) -> SingleBacktest:
    spec = with_params(context.spec, params)
    began = time.perf_counter()
    result = run_backtest(context.candles, spec, context.timeframe, context.strategies_dir)
    ran = time.perf_counter()
    if not lookahead:
        return SingleBacktest(result, None, {"backtest": ran - began})
    report = check_lookahead(context.candles, spec, context.timeframe, context.strategies_dir)
    return SingleBacktest(result, report, {"backtest": ran - began, "lookahead": time.perf_counter() - ran})


def _worker_single(params: dict[str, Any], lookahead: bool) -> SingleBacktest:
    assert _WORKER is not None, "BacktestPool worker used without its initializer"
    return _single(_WORKER, params, lookahead)


class BacktestPool:
    """Runs backtest jobs on one candle frame, in worker processes (or in-process with 1 worker).

    Use as a context manager (or call ``close``); workers start on the first ``run`` and are
    reused by later ones, so a walk-forward pays the startup once."""

    def __init__(
        self,
        candles: pd.DataFrame,
        spec: BacktestSpec,
        timeframe: str,
        strategies_dir: Path | None = None,
        workers: int | None = None,
        isolate: bool = False,
        label: str = "backtests",
    ) -> None:
        self.label = label
        """Names this pool's work in ``atlas_pipeline.progress`` reports (the CLI's progress bars)."""
        self.workers = (os.cpu_count() or 1) if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"BacktestPool needs workers >= 1, got {workers}")
        self.isolate = isolate
        """Run strategy code only in worker processes (module doc, "Isolation")."""
        # resolved here so every worker reads the same folder whatever its environment
        folder = Path(strategies_dir) if strategies_dir is not None else default_strategies_dir()
        # a plain dict: the spec's default params are a mappingproxy, which cannot be pickled
        spec = dataclasses.replace(spec, params=dict(spec.params))
        self._context = _context(candles, spec, timeframe, folder)
        self._executor: ProcessPoolExecutor | None = None

    @property
    def candles(self) -> pd.DataFrame:
        return self._context.candles

    @property
    def spec(self) -> BacktestSpec:
        return self._context.spec

    @property
    def timeframe(self) -> str:
        return self._context.timeframe

    def __enter__(self) -> BacktestPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            mp = multiprocessing.get_context("forkserver")
            mp.set_forkserver_preload(PRELOAD)
            c = self._context
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp,
                initializer=_init_worker,
                initargs=(c.candles, c.spec, c.timeframe, c.strategies_dir),
            )
        return self._executor

    def run(
        self,
        jobs: Sequence[BacktestJob],
        keep_results: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[JobOutcome]:
        """Every job's outcome, in job order; ``progress(done, total)`` after each job finishes.

        Unless the pool isolates, a single job runs in-process too: no worker could start it sooner.
        Raises ``StrategyCrashed`` when a worker dies."""
        total = len(jobs)
        given = progress

        def progress(done: int, total: int) -> None:
            report_progress(self.label, done, total, "backtests")
            if given:
                given(done, total)

        if not self.isolate and (self.workers == 1 or total <= 1):
            serial = []
            for done, job in enumerate(jobs, 1):
                serial.append(_run_job(self._context, job, keep_results))
                progress(done, total)
            return serial
        # one future per job: a backtest costs far more than its IPC, and per-job futures balance
        # uneven jobs (short and long windows) across workers better than chunks
        futures = {self._pool().submit(_worker_job, job, keep_results): i for i, job in enumerate(jobs)}
        outcomes: list[JobOutcome] = [None] * total  # type: ignore[list-item] - every slot is filled below
        try:
            for done, future in enumerate(as_completed(futures), 1):
                outcomes[futures[future]] = future.result()  # re-raises a worker's unexpected error
                progress(done, total)
        except BrokenProcessPool:
            raise self._crashed() from None
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return outcomes

    def backtest(self, params: Mapping[str, Any] | None = None, lookahead: bool = False) -> SingleBacktest:
        """One backtest of the pool's spec, ``params`` over its params, on all the pool's candles,
        and its lookahead check when asked. Raises what the backtest raises (``StrategyError``,
        ``TooFewCandlesError``), or ``StrategyCrashed``. In a worker when the pool isolates."""
        params = dict(params or {})
        if not self.isolate:
            return _single(self._context, params, lookahead)
        return self._result(self._pool().submit(_worker_single, params, lookahead))

    def _result(self, future: Future) -> Any:
        try:
            return future.result()
        except BrokenProcessPool:
            raise self._crashed() from None

    def _crashed(self) -> StrategyCrashed:
        """The error for a broken pool, naming the dead worker's exit code; the pool is reset."""
        executor, self._executor = self._executor, None
        # CPython keeps the workers (pid -> Process) here; nothing public reports their exit codes
        processes = list((getattr(executor, "_processes", None) or {}).values())
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        codes = [p.exitcode for p in processes if p.exitcode is not None]
        # the pool SIGTERMs the other workers once one died: report the one that died by itself
        own = [c for c in codes if c != -signal.SIGTERM] or codes
        return StrategyCrashed(
            self.spec.strategy,
            f"its worker process ended with {exit_description(own[0] if own else None)} before returning a result "
            "(os._exit, a crash in native code, or a kill such as the OOM killer's)",
        )


@dataclass
class SweepResult:
    """One row per candidate in grid order (module doc has the rules)."""

    table: pd.DataFrame
    """``candidate``, ``param_<name>`` per grid param, every metric (NaN when errored),
    ``objective``, ``passed``, ``rejected`` ("" when passed), ``chosen``."""
    chosen: dict[str, Any] | None
    objective: Objective
    filters: SweepFilters

    @property
    def chosen_row(self) -> pd.Series | None:
        rows = self.table[self.table["chosen"]]
        return None if rows.empty else rows.iloc[0]

    @property
    def passed_count(self) -> int:
        return int(self.table["passed"].sum())


def _rejections(outcome: JobOutcome, objective: Objective, filters: SweepFilters) -> str:
    if outcome.error is not None:
        return f"error: {outcome.error.splitlines()[0] if outcome.error else ''}"  # the traceback stays in the outcome
    m = outcome.metrics or {}
    reasons = []
    trades = float(m["trade_count"])
    if trades < filters.min_trades:
        reasons.append(f"trade_count {trades:.0f} < min_trades {filters.min_trades}")
    if filters.max_drawdown is not None and float(m["max_drawdown"]) > filters.max_drawdown:
        reasons.append(f"max_drawdown {float(m['max_drawdown']):.4g} > {filters.max_drawdown:g}")
    if math.isnan(float(m[objective.metric])):
        reasons.append(f"objective {objective.metric} is NaN")
    return "; ".join(reasons)


def sweep_result(
    grid: Sequence[Mapping[str, Any]],
    outcomes: Sequence[JobOutcome],
    objective: Objective,
    filters: SweepFilters,
) -> SweepResult:
    """Rank already-run candidates (``outcomes[i]`` belongs to ``grid[i]``): the table and choice.

    Raises ``ValueError`` with the first error when every candidate errored."""
    if len(grid) != len(outcomes):
        raise ValueError(f"{len(grid)} candidates but {len(outcomes)} outcomes")
    if outcomes and all(o.error is not None for o in outcomes):
        raise ValueError(
            f"all {len(outcomes)} sweep candidates failed; the first, {dict(grid[0])}, with: {outcomes[0].error}"
        )
    names = list(dict.fromkeys(name for params in grid for name in params))
    rows = []
    for i, (params, outcome) in enumerate(zip(grid, outcomes)):
        metrics = outcome.metrics or {}
        row: dict[str, Any] = {"candidate": i}
        row.update({f"param_{n}": params.get(n) for n in names})
        row.update({k: metrics.get(k, None if k in ("start", "end") else math.nan) for k in METRIC_DESCRIPTIONS})
        row["objective"] = float(metrics.get(objective.metric, math.nan))
        row["rejected"] = _rejections(outcome, objective, filters)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["candidate", *(f"param_{n}" for n in names), *METRIC_DESCRIPTIONS,
                                      "objective", "rejected"])
    table["passed"] = table["rejected"] == ""
    table["chosen"] = False
    chosen: dict[str, Any] | None = None
    passed = table.index[table["passed"]]
    if len(passed):
        values = table.loc[passed, "objective"].to_numpy(float)
        best = values.max() if objective.higher_is_better else values.min()
        pick = int(passed[np.flatnonzero(values == best)[0]])  # first in grid order wins ties
        table.loc[pick, "chosen"] = True
        chosen = dict(grid[pick])
    order = ["candidate", *(f"param_{n}" for n in names), *METRIC_DESCRIPTIONS, "objective", "passed", "rejected", "chosen"]
    return SweepResult(table=table.loc[:, order], chosen=chosen, objective=objective, filters=filters)


def progress_every(total: int, emit: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` that forwards about ``PROGRESS_LINES`` times (and at the end)."""
    step = max(1, math.ceil(total / PROGRESS_LINES))

    def report(done: int, total_: int) -> None:
        if done % step == 0 or done == total_:
            emit(done, total_)

    return report


def describe_choice(result: SweepResult) -> str:
    """``chosen {'fast': 10, 'slow': 40} sharpe=1.23`` or ``no candidate passed the filters``."""
    row = result.chosen_row
    if row is None:
        return "no candidate passed the filters"
    return f"chosen {result.chosen} {result.objective.metric}={row['objective']:.4g}"


def run_sweep(
    pool: BacktestPool,
    grid: list[dict[str, Any]],
    objective: Objective,
    filters: SweepFilters,
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Backtest every candidate of ``grid`` on ``[start_ms, end_ms)`` and choose the best."""
    jobs = [BacktestJob(dict(params), start_ms, end_ms) for params in grid]
    tick = progress_every(len(jobs), lambda d, t: progress(f"sweep {d}/{t} candidates")) if progress else None
    outcomes = pool.run(jobs, progress=tick)
    result = sweep_result(grid, outcomes, objective, filters)
    if progress:
        progress(f"sweep done: {len(grid)} candidates, {result.passed_count} passed, {describe_choice(result)}")
    return result
