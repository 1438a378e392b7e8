"""Stationary block bootstrap (Politis & Romano, 1994) of daily returns: bands for Sharpe, CAGR
and max drawdown.

Each resample has the original length ``T``; it starts at a uniform random day and, day by
day, continues with the next day (wrapping around) with probability ``1 - 1/block`` or jumps to
a new uniform random day with probability ``1/block``: blocks of geometric length with mean
``block``, so the autocorrelation within about ``block`` days survives resampling. Each
resample's statistics follow ``docs/metrics.md`` on daily equity ``cumprod(1 + r)``: Sharpe
``mean / std (ddof=1) x sqrt(365)``, CAGR ``growth^(365 / T) - 1``, max drawdown from the daily
equity (with the starting 1.0 as the first peak). Seeded: the same inputs give the same bands.
"""

from __future__ import annotations

import math

import numpy as np

from atlas_pipeline.research.metrics import PERIODS_PER_YEAR

DEFAULT_RESAMPLES = 1000
DEFAULT_BLOCK = 10
"""Mean block length in days: about the span of autocorrelation in daily crypto returns."""
DEFAULT_SEED = 13
PERCENTILES = (5, 50, 95)


def stationary_indices(length: int, resamples: int, block: float, rng: np.random.Generator) -> np.ndarray:
    """``resamples x length`` day indices of stationary-bootstrap resamples (module doc)."""
    if length < 1 or resamples < 1 or block < 1:
        raise ValueError(f"bootstrap needs length, resamples >= 1 and block >= 1; got {length}, {resamples}, {block}")
    index = np.empty((resamples, length), dtype=np.int64)
    index[:, 0] = rng.integers(0, length, resamples)
    jump = rng.random((resamples, length)) < 1.0 / block
    fresh = rng.integers(0, length, (resamples, length))
    for t in range(1, length):
        index[:, t] = np.where(jump[:, t], fresh[:, t], (index[:, t - 1] + 1) % length)
    return index


def resample_stats(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Sharpe (annualized), CAGR and max drawdown of each row of daily returns."""
    days = samples.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        std = samples.std(axis=1, ddof=1)
        mean = samples.mean(axis=1)
        sharpe = np.where(std > 0, mean / std, np.nan) * math.sqrt(PERIODS_PER_YEAR)
        equity = np.cumprod(1 + samples, axis=1)
        growth = equity[:, -1]
        cagr = np.where(growth > 0, np.abs(growth) ** (PERIODS_PER_YEAR / days) - 1, -1.0)
        peaks = np.maximum.accumulate(np.maximum(equity, 1.0), axis=1)
        drawdown = np.max(1 - equity / peaks, axis=1)
    return {"sharpe": sharpe, "cagr": cagr, "max_drawdown": drawdown}


def bootstrap_bands(
    daily: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    block: float = DEFAULT_BLOCK,
    seed: int = DEFAULT_SEED,
) -> dict[str, float]:
    """``bootstrap_<stat>_p<5|50|95>`` for Sharpe, CAGR and max drawdown (NaN under 3 days)."""
    r = np.asarray(daily, dtype=float)
    r = r[np.isfinite(r)]
    keys = [f"bootstrap_{s}_p{p}" for s in ("sharpe", "cagr", "max_drawdown") for p in PERCENTILES]
    if len(r) < 3:
        return dict.fromkeys(keys, math.nan)
    index = stationary_indices(len(r), resamples, block, np.random.default_rng(seed))
    stats = resample_stats(r[index])
    out = {}
    for name, values in stats.items():
        for p, value in zip(PERCENTILES, np.nanpercentile(values, PERCENTILES) if np.isfinite(values).any()
                            else [math.nan] * 3):
            out[f"bootstrap_{name}_p{p}"] = float(value)
    return out
