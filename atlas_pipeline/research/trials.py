"""The trials registry's rows and the overfitting statistics of a sweep or walk-forward.

A *trial* is one candidate evaluated on one data range. Each sweep or walk-forward run records
all of its trials (``ResultStore.record_trials``) with the columns ``TRIAL_COLUMNS``; the number
of trials on a dataset is then the count of distinct (strategy, params) recorded on the same
market and timeframe over a data range overlapping this run's, across every run so far. That
count (and the spread of those trials' Sharpe ratios) deflates the chosen Sharpe (DSR).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from atlas_pipeline.research.stats.dsr import moments
from atlas_pipeline.research.stats.overfitting import overfitting_stats
from atlas_pipeline.research.sweep import SweepResult

TRIAL_COLUMNS = (
    "backtest", "kind", "window", "strategy", "exchange", "symbol", "timeframe", "data_start", "data_end",
    "params", "evaluated_by", "error", "sharpe", "trade_count", "days", "daily_sharpe", "skew", "kurtosis",
    "recorded_at",
)


def trial_rows(
    sweep: SweepResult,
    grid: Sequence[dict[str, Any]],
    *,
    backtest: str,
    kind: str,
    strategy: str,
    exchange: str,
    symbol: str,
    timeframe: str,
    data_start: pd.Timestamp,
    data_end: pd.Timestamp,
    window: int = -1,
) -> pd.DataFrame:
    """One row per candidate of ``sweep`` (its ``dailies`` give the return summary)."""
    now = pd.Timestamp.now(tz="UTC")
    rows = []
    for i, params in enumerate(grid):
        row = sweep.table.iloc[i]
        daily = sweep.dailies[i] if sweep.dailies is not None else None
        sharpe, skew, kurtosis, days = moments(daily[1]) if daily is not None else (math.nan, math.nan, math.nan, 0)
        rows.append({
            "backtest": backtest, "kind": kind, "window": window, "strategy": strategy, "exchange": exchange,
            "symbol": symbol, "timeframe": timeframe, "data_start": data_start, "data_end": data_end,
            "params": json.dumps(params, sort_keys=True), "evaluated_by": row["evaluated_by"],
            "error": row["rejected"] if str(row["rejected"]).startswith("error:") else "",
            "sharpe": float(row["sharpe"]), "trade_count": float(row["trade_count"]), "days": days,
            "daily_sharpe": sharpe, "skew": skew, "kurtosis": kurtosis, "recorded_at": now,
        })
    return pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))


def dataset_trials(registry: pd.DataFrame, data_start: pd.Timestamp, data_end: pd.Timestamp) -> pd.DataFrame:
    """Distinct (strategy, params) trials over a range overlapping ``[data_start, data_end)``, the
    latest record of each; errored candidates are not trials (nothing was measured)."""
    if registry.empty:
        return registry
    overlapping = registry[(registry["data_start"] < data_end) & (registry["data_end"] > data_start)
                           & (registry["error"] == "")]
    return overlapping.sort_values("recorded_at", kind="stable").drop_duplicates(["strategy", "params"], keep="last")


def sweep_overfitting(
    chosen_daily: np.ndarray, dailies: Sequence[Any], registry: pd.DataFrame, data_start: pd.Timestamp,
    data_end: pd.Timestamp,
) -> dict[str, float]:
    """``stats.overfitting_stats`` of a chosen candidate with the registry's trials of its dataset."""
    trials = dataset_trials(registry, data_start, data_end)
    return overfitting_stats(chosen_daily, dailies, max(len(trials), 1), trials["sharpe"].to_numpy(float)
                             if len(trials) else np.array([]))


def walkforward_overfitting(
    oos_daily: np.ndarray, sweeps: Sequence[SweepResult], registry: pd.DataFrame, data_start: pd.Timestamp,
    data_end: pd.Timestamp,
) -> dict[str, float]:
    """A walk-forward's statistics: DSR and bootstrap bands of the stitched out-of-sample daily
    returns against the dataset's trials; PBO as the mean of each train window's own PBO (the
    windows' candidates are measured on different days, so one matrix would mix them)."""
    stats = sweep_overfitting(oos_daily, [], registry, data_start, data_end)
    per_window = []
    for sweep in sweeps:
        window = overfitting_stats(np.zeros(0), sweep.dailies or [], 1, np.array([]))
        if not math.isnan(window["pbo"]):
            per_window.append(window["pbo"])
    stats["pbo"] = float(np.mean(per_window)) if per_window else math.nan
    stats["pbo_windows"] = float(len(per_window))
    stats.pop("pbo_days", None)
    return stats
