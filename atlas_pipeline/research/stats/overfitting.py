"""The overfitting statistics of one sweep (or walk-forward) and the limits the check applies.

Inputs: every candidate's daily returns (``JobOutcome.daily``), the chosen candidate's, and the
trials registry's count and Sharpe spread for the dataset (``result_store.ResultStore.trials``):

- ``trials``: distinct (strategy, params) ever evaluated on this market and timeframe over an
  overlapping data range (this run's included), so rerunning a sweep does not deflate more,
  but widening the grid in a later run does;
- ``dsr``: ``dsr.deflated_sharpe`` of the chosen daily returns against those trials (the
  variance of their per-day Sharpe ratios);
- ``pbo``: ``pbo.pbo_cscv`` on this run's candidates' returns over their common days;
- ``bootstrap_*``: ``bootstrap.bootstrap_bands`` of the chosen daily returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atlas_pipeline.research.metrics import PERIODS_PER_YEAR
from atlas_pipeline.research.stats.bootstrap import bootstrap_bands
from atlas_pipeline.research.stats.dsr import deflated_sharpe, expected_max_sharpe, moments
from atlas_pipeline.research.stats.pbo import DEFAULT_BLOCKS, pbo_cscv

Daily = tuple[int, np.ndarray]
"""(UTC day number of the first equity bar, daily returns): return j is of day first + 1 + j."""


@dataclass(frozen=True)
class OverfittingLimits:
    max_pbo: float = 0.5
    min_dsr: float = 0.95
    block: bool = False
    """True: a result over a limit fails the blocking check and leaves the leaderboard."""


def returns_matrix(dailies: Sequence[Daily | None]) -> np.ndarray:
    """Days x candidates over the days every candidate with returns covers (others left out)."""
    present = [d for d in dailies if d is not None and len(d[1])]
    if not present:
        return np.empty((0, 0))
    lo = max(first + 1 for first, _ in present)
    hi = min(first + len(r) for first, r in present)  # last day, inclusive
    if hi < lo:
        return np.empty((0, len(present)))
    return np.column_stack([r[lo - first - 1 : hi - first] for first, r in present])


def overfitting_stats(
    chosen: np.ndarray,
    candidates: Sequence[Daily | None],
    trials: int,
    trial_sharpes: np.ndarray,
    blocks: int = DEFAULT_BLOCKS,
) -> dict[str, float]:
    """DSR, PBO and the bootstrap bands (module doc). ``trial_sharpes``: annualized Sharpe of every
    registered trial of the dataset. Statistics that the data cannot support are NaN, with
    ``pbo_note`` saying why (fewer than 2 candidates, too few common days for the blocks)."""
    sharpe, skew, kurtosis, count = moments(chosen)
    finite = np.asarray(trial_sharpes, dtype=float)
    finite = finite[np.isfinite(finite)] / math.sqrt(PERIODS_PER_YEAR)
    variance = float(finite.var(ddof=1)) if len(finite) >= 2 else 0.0
    stats: dict[str, float] = {
        "trials": float(trials),
        "trials_sharpe_std": math.sqrt(variance) * math.sqrt(PERIODS_PER_YEAR),
        "expected_max_sharpe": expected_max_sharpe(trials, variance) * math.sqrt(PERIODS_PER_YEAR),
        "dsr": deflated_sharpe(sharpe, trials, variance, count, skew, kurtosis),
        "returns_skew": skew,
        "returns_kurtosis": kurtosis,
    }
    matrix = returns_matrix(candidates)
    stats["pbo"], stats["pbo_blocks"], stats["pbo_days"] = math.nan, float(blocks), float(matrix.shape[0])
    if matrix.shape[1] >= 2 and matrix.shape[0] >= 2 * blocks:
        stats["pbo"] = pbo_cscv(matrix, blocks).pbo
    stats.update(bootstrap_bands(chosen))
    return stats


def over_limits(stats: dict[str, float], limits: OverfittingLimits) -> list[str]:
    """Why a result is suspect: ``pbo 0.62 > max_pbo 0.5``, ``dsr 0.41 < min_dsr 0.95`` (NaN: not judged)."""
    reasons = []
    pbo, dsr = stats.get("pbo", math.nan), stats.get("dsr", math.nan)
    if not math.isnan(pbo) and pbo > limits.max_pbo:
        reasons.append(f"pbo {pbo:.3g} > max_pbo {limits.max_pbo:g}")
    if not math.isnan(dsr) and dsr < limits.min_dsr:
        reasons.append(f"dsr {dsr:.3g} < min_dsr {limits.min_dsr:g}")
    return reasons
