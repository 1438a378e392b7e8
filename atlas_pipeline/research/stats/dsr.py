"""Deflated Sharpe Ratio (Bailey & López de Prado, "The Deflated Sharpe Ratio", 2014).

All Sharpe ratios here are per period (daily, not annualized), as in the paper:

- expected maximum Sharpe of ``N`` unskilled trials whose Sharpe ratios have variance ``V``
  (eq. 6, with the Euler-Mascheroni constant γ):
  ``SR0 = sqrt(V) x ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e)))``, 0 for a single trial;
- DSR = probabilistic Sharpe ratio of the observed ``SR`` against ``SR0`` over ``T`` returns
  with skewness ``γ3`` and (non-excess) kurtosis ``γ4`` (eq. 9):
  ``Φ((SR - SR0) sqrt(T - 1) / sqrt(1 - γ3 SR + (γ4 - 1) / 4 SR²))``.

A DSR of 0.95 reads: 95 % confidence that the chosen candidate's true Sharpe is above what the
best of ``N`` luck-only trials would show.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


def expected_max_sharpe(trials: int, variance: float) -> float:
    """``SR0``: the Sharpe (per period) the best of ``trials`` skill-less trials is expected to show."""
    if trials <= 1 or not variance > 0:
        return 0.0
    inv = _NORMAL.inv_cdf
    return math.sqrt(variance) * ((1 - EULER_GAMMA) * inv(1 - 1 / trials) + EULER_GAMMA * inv(1 - 1 / (trials * math.e)))


def moments(returns: np.ndarray) -> tuple[float, float, float, int]:
    """(per-period Sharpe with ddof=1 std, skewness, non-excess kurtosis, count) of returns."""
    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)]
    n = len(r)
    if n < 3:
        return math.nan, math.nan, math.nan, n
    mean = r.mean()
    centered = r - mean
    m2 = float(np.mean(centered ** 2))
    std = float(r.std(ddof=1))
    if m2 == 0 or std == 0:
        return math.nan, math.nan, math.nan, n
    return float(mean / std), float(np.mean(centered ** 3) / m2 ** 1.5), float(np.mean(centered ** 4) / m2 ** 2), n


def deflated_sharpe(sharpe: float, trials: int, variance: float, count: int, skew: float, kurtosis: float) -> float:
    """DSR of a per-period ``sharpe`` over ``count`` returns, chosen among ``trials`` whose
    per-period Sharpe ratios have ``variance``. NaN when undefined (too few returns, NaN input)."""
    if count < 2 or any(math.isnan(x) for x in (sharpe, skew, kurtosis)) or math.isnan(variance):
        return math.nan
    benchmark = expected_max_sharpe(trials, variance)
    denominator = 1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe ** 2
    if denominator <= 0:
        return math.nan
    return _NORMAL.cdf((sharpe - benchmark) * math.sqrt(count - 1) / math.sqrt(denominator))
