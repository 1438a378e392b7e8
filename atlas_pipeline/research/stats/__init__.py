"""Overfitting statistics of a sweep or walk-forward (DESIGN §1: ``research/stats/``).

- ``dsr``: the Deflated Sharpe Ratio (Bailey & López de Prado, 2014): how likely the chosen
  candidate's Sharpe beats the best Sharpe pure luck would give over that many trials.
- ``pbo``: the Probability of Backtest Overfitting by combinatorially symmetric
  cross-validation (Bailey, Borwein, López de Prado & Zhu, 2016).
- ``bootstrap``: a stationary block bootstrap (Politis & Romano, 1994) of the chosen
  candidate's daily returns: 5/50/95 percentiles of Sharpe, CAGR and max drawdown.
- ``overfitting``: all three for one sweep, as the metadata and the check read them.

``research/metrics.py`` keeps the per-backtest metrics.
"""

from atlas_pipeline.research.stats.bootstrap import bootstrap_bands, stationary_indices
from atlas_pipeline.research.stats.dsr import deflated_sharpe, expected_max_sharpe
from atlas_pipeline.research.stats.pbo import pbo_cscv
from atlas_pipeline.research.stats.overfitting import OverfittingLimits, over_limits, overfitting_stats

__all__ = [
    "OverfittingLimits", "bootstrap_bands", "deflated_sharpe", "expected_max_sharpe", "over_limits", "overfitting_stats",
    "pbo_cscv", "stationary_indices",
]
