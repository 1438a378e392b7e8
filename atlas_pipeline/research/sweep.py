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
- **Screen, then confirm.** A strategy with a vectorized twin (``research/vector``) has every
  candidate evaluated by the twin (``BacktestPool.screen``, in the workers); then the ``confirm_top``
  best passed candidates (default 5) and the chosen one are rerun through backtrader, and their
  rows hold backtrader's metrics (``evaluated_by``). A confirmed candidate whose twin differs from
  backtrader beyond 1e-9 relative (equity or trades) fails the sweep with ``TwinMismatch``
  naming the strategy, params and first differing bar: a drifted twin is a bug. Candidates the
  twin cannot run (a strategy without a twin, a refused param, protective exits) go to
  backtrader, as before.
  ``confirm_top=None`` runs every candidate through backtrader.
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
from atlas_pipeline.research.metrics import daily_returns
from atlas_pipeline.research.results import BacktestResult
from atlas_pipeline.research.vector import screen as vector_screen
from atlas_pipeline.research.vector.screen import BarsCache, daily_of

__all__ = [
    "LOWER_IS_BETTER",
    "OBJECTIVE_METRICS",
    "BacktestJob",
    "BacktestPool",
    "JobOutcome",
    "Objective",
    "SingleBacktest",
    "StrategyCrashed",
    "TwinMismatch",
    "SweepFilters",
    "SweepResult",
    "expand_grid",
    "run_sweep",
    "sweep_result",
]

OBJECTIVE_METRICS: tuple[str, ...] = tuple(k for k in METRIC_DESCRIPTIONS if k not in ("start", "end"))
"""Metrics a sweep can rank by: every numeric one."""
LOWER_IS_BETTER = {"max_drawdown", "max_drawdown_duration_days", "annual_volatility"}
PRELOAD = ["atlas_pipeline.research.engine", "atlas_pipeline.research.metrics", "atlas_pipeline.research.lookahead",
           "atlas_pipeline.research.vector.preload"]
"""Imported once in the fork server, so each worker starts with backtrader and pandas loaded."""
PROGRESS_LINES = 10
CONFIRM_TOP = 5
"""Best screened candidates a sweep reruns through backtrader (config ``sweep.confirm_top``)."""


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
    daily: tuple[int, np.ndarray] | None = None
    """Daily returns (``vector.screen.daily_of``: first UTC day number, returns), for the trials
    registry and overfitting statistics."""
    evaluated_by: str = "backtrader"
    """``backtrader`` or ``twin`` (screened only)."""
    mismatch: str | None = None
    """For a confirmation: where the twin departed from backtrader (None: they agree)."""


class TwinMismatch(RuntimeError):
    """A strategy's twin disagreed with backtrader on a confirmed candidate (a bug in the twin)."""


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
    _bars: BarsCache | None = None

    @property
    def bars(self) -> BarsCache:
        if self._bars is None:
            self._bars = BarsCache(self.candles)
        return self._bars

    def rows(self, job: BacktestJob) -> tuple[int, int]:
        lo = 0 if job.start_ms is None else int(np.searchsorted(self.stamps, job.start_ms, side="left"))
        hi = len(self.stamps) if job.end_ms is None else int(np.searchsorted(self.stamps, job.end_ms, side="left"))
        return lo, hi


_WORKER: _Context | None = None
"""The worker process's candles and spec, set once by the pool initializer."""


def _context(candles: pd.DataFrame, spec: BacktestSpec, timeframe: str, strategies_dir: Path) -> _Context:
    candles = candles.reset_index(drop=True)
    return _Context(candles, candles["timestamp"].to_numpy(np.int64), spec, timeframe, strategies_dir)


def _init_worker(candles: pd.DataFrame, spec: BacktestSpec, timeframe: str, strategies_dir: Path) -> None:
    global _WORKER
    _WORKER = _context(candles, spec, timeframe, strategies_dir)


def _run_job(context: _Context, job: BacktestJob, keep: bool, confirm: bool = False) -> JobOutcome:
    lo, hi = context.rows(job)
    spec = with_params(context.spec, job.params)
    try:
        result = run_backtest(context.candles.iloc[lo:hi], spec, context.timeframe, context.strategies_dir,
                              trade_from_ms=job.trade_from_ms)
        metrics = compute_metrics(result.equity, result.trades, result.close)
    except (StrategyError, ValueError) as exc:
        return JobOutcome(metrics=None, error=str(exc))
    equity = result.equity["equity"]
    daily = daily_of(int(equity.index[0].value // 1_000_000), daily_returns(equity).to_numpy(float))
    mismatch = None
    if confirm:
        mismatch = vector_screen.confirm(context.bars, context.spec, context.strategies_dir, job.params, lo, hi,
                                         job.trade_from_ms, result)
    return JobOutcome(metrics=metrics, error=None, result=result if keep else None, daily=daily, mismatch=mismatch)


def _worker_job(job: BacktestJob, keep: bool, confirm: bool = False) -> JobOutcome:
    assert _WORKER is not None, "BacktestPool worker used without its initializer"
    return _run_job(_WORKER, job, keep, confirm)


def _screen_jobs(context: _Context, jobs: Sequence[BacktestJob]) -> list[JobOutcome | None]:
    rows = [(job.params, *context.rows(job), job.trade_from_ms) for job in jobs]
    screened = vector_screen.screen(context.bars, context.spec, context.strategies_dir, rows)
    return [None if s is None else JobOutcome(metrics=s[0], error=None, daily=s[1], evaluated_by="twin")
            for s in screened]


def _worker_screen(jobs: Sequence[BacktestJob]) -> list[JobOutcome | None]:
    assert _WORKER is not None, "BacktestPool worker used without its initializer"
    return _screen_jobs(_WORKER, jobs)


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
        confirm: bool = False,
    ) -> list[JobOutcome]:
        """Every job's outcome, in job order; ``progress(done, total)`` after each job finishes.
        With ``confirm`` each outcome also says where the strategy's twin departs from it.

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
                serial.append(_run_job(self._context, job, keep_results, confirm))
                if progress:
                    progress(done, total)
            return serial
        # one future per job: a backtest costs far more than its IPC, and per-job futures balance
        # uneven jobs (short and long windows) across workers better than chunks
        futures = {self._pool().submit(_worker_job, job, keep_results, confirm): i for i, job in enumerate(jobs)}
        return self._collect(futures, total, progress, chunked=False)

    def screen(
        self, jobs: Sequence[BacktestJob], progress: Callable[[int, int], None] | None = None
    ) -> list[JobOutcome | None]:
        """Every job through the strategy's twin, in job order (None where it has none or the twin
        cannot run the job). In chunks: a twin run costs less than sending it to a worker."""
        total = len(jobs)
        if not self.isolate and self.workers == 1:
            outcomes = _screen_jobs(self._context, jobs)
            if progress and total:
                progress(total, total)
            return outcomes
        size = max(1, math.ceil(total / (self.workers * 4)))
        futures = {self._pool().submit(_worker_screen, jobs[lo : lo + size]): lo for lo in range(0, total, size)}
        return self._collect(futures, total, progress, chunked=True)

    def _collect(self, futures: dict[Future, int], total: int, progress: Callable[[int, int], None] | None,
                 chunked: bool) -> list[Any]:
        """Outcomes in job order from futures keyed by their first job's index; a future's result
        is one outcome, or a list of them when ``chunked``."""
        outcomes: list[Any] = [None] * total
        done = 0
        try:
            for future in as_completed(futures):
                got = future.result()  # re-raises a worker's unexpected error
                chunk = got if chunked else [got]
                start = futures[future]
                outcomes[start : start + len(chunk)] = chunk
                done += len(chunk)
                if progress:
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
    ``objective``, ``passed``, ``rejected`` ("" when passed), ``chosen``, ``evaluated_by``
    (``backtrader`` or ``twin``)."""
    chosen: dict[str, Any] | None
    objective: Objective
    filters: SweepFilters
    dailies: list[tuple[int, np.ndarray] | None] | None = None
    """Each candidate's daily returns (``JobOutcome.daily``), for the overfitting statistics."""

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
        row["evaluated_by"] = outcome.evaluated_by
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["candidate", *(f"param_{n}" for n in names), *METRIC_DESCRIPTIONS,
                                      "objective", "rejected", "evaluated_by"])
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
    order = ["candidate", *(f"param_{n}" for n in names), *METRIC_DESCRIPTIONS, "objective", "passed", "rejected", "chosen",
             "evaluated_by"]
    return SweepResult(table=table.loc[:, order], chosen=chosen, objective=objective, filters=filters,
                       dailies=[o.daily for o in outcomes])


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


def _to_confirm(result: SweepResult, outcomes: Sequence[JobOutcome], top: int) -> list[int]:
    """Screened candidates among the ``top`` best passed ones and the chosen one."""
    table = result.table
    passed = table[table["passed"]]
    ranked = passed.sort_values("objective", ascending=not result.objective.higher_is_better, kind="stable")
    wanted = list(ranked["candidate"].head(top)) + list(table.loc[table["chosen"], "candidate"])
    return sorted({int(i) for i in wanted if outcomes[int(i)].evaluated_by == "twin"})


def evaluate_candidates(
    pool: BacktestPool,
    sections: Sequence[tuple[Sequence[Mapping[str, Any]], Sequence[BacktestJob]]],
    objective: Objective,
    filters: SweepFilters,
    confirm_top: int | None = CONFIRM_TOP,
    progress: Callable[[str], None] | None = None,
    label: str = "sweep",
) -> list[list[JobOutcome]]:
    """Outcomes of several sweeps' jobs (``sections``: (grid, jobs) each, e.g. walk-forward
    windows), screened by the twin and confirmed through backtrader (module doc); all sections'
    jobs go to the pool together so both cores stay busy. Raises ``TwinMismatch``."""
    say = progress or (lambda _message: None)
    jobs = [job for _, section in sections for job in section]
    offsets = np.cumsum([0, *(len(section) for _, section in sections)])
    began = time.perf_counter()
    if confirm_top is None:
        outcomes: list[JobOutcome | None] = [None] * len(jobs)
    else:
        outcomes = pool.screen(jobs, progress=progress_every(len(jobs), lambda d, t: say(f"{label} screen {d}/{t} candidates (twin)")))
    missing = [i for i, o in enumerate(outcomes) if o is None]
    if missing:
        if len(missing) < len(jobs):
            say(f"{label}: {len(missing)} of {len(jobs)} candidates have no twin run; backtrader runs them")
        tick = progress_every(len(missing), lambda d, t: say(f"{label} {d}/{t} candidates (backtrader)"))
        for i, outcome in zip(missing, pool.run([jobs[i] for i in missing], progress=tick)):
            outcomes[i] = outcome
    screened = len(jobs) - len(missing)
    confirmed = 0
    while screened:
        todo: list[int] = []
        for k, (grid, _) in enumerate(sections):
            part = outcomes[offsets[k] : offsets[k + 1]]
            if part and not all(o.error is not None for o in part):
                result = sweep_result(grid, part, objective, filters)
                todo += [int(offsets[k]) + i for i in _to_confirm(result, part, confirm_top or 0)]
        if not todo:
            break
        for i, outcome in zip(todo, pool.run([jobs[i] for i in todo], confirm=True)):
            if outcome.mismatch is not None or outcome.error is not None:
                job = jobs[i]
                where = f"candles [{_iso(job.start_ms)}, {_iso(job.end_ms)})"
                raise TwinMismatch(
                    f"the vectorized twin of strategy {pool.spec.strategy!r} disagrees with backtrader beyond 1e-9 "
                    f"relative for params {dict(job.params)} on {where}: "
                    f"{outcome.mismatch or 'backtrader refused it: ' + str(outcome.error)}"
                )
            outcomes[i] = outcome
        confirmed += len(todo)
    if screened:
        say(f"{label}: {screened} candidates screened by the twin, {confirmed} confirmed by backtrader "
            f"in {time.perf_counter() - began:.1f} s")
    return [list(outcomes[offsets[k] : offsets[k + 1]]) for k in range(len(sections))]  # type: ignore[arg-type]


def _iso(ms: int | None) -> str:
    return "..." if ms is None else pd.Timestamp(int(ms), unit="ms", tz="UTC").isoformat()


def run_sweep(
    pool: BacktestPool,
    grid: list[dict[str, Any]],
    objective: Objective,
    filters: SweepFilters,
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: Callable[[str], None] | None = None,
    confirm_top: int | None = CONFIRM_TOP,
) -> SweepResult:
    """Evaluate every candidate of ``grid`` on ``[start_ms, end_ms)`` (screen and confirm, module
    doc) and choose the best."""
    jobs = [BacktestJob(dict(params), start_ms, end_ms) for params in grid]
    (outcomes,) = evaluate_candidates(pool, [(grid, jobs)], objective, filters, confirm_top, progress)
    result = sweep_result(grid, outcomes, objective, filters)
    if progress:
        progress(f"sweep done: {len(grid)} candidates, {result.passed_count} passed, {describe_choice(result)}")
    return result
