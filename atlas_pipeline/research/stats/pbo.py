"""Probability of Backtest Overfitting by combinatorially symmetric cross-validation
(Bailey, Borwein, López de Prado & Zhu, "The Probability of Backtest Overfitting", 2016).

On a ``T x N`` matrix of per-period returns (T days, N candidates):

1. split the rows into ``S`` contiguous blocks of equal size (the last ``T mod S`` rows are
   left out);
2. for every choice of ``S/2`` blocks as the in-sample set (the rest out-of-sample): take the
   candidate with the best in-sample Sharpe (first on ties), rank its out-of-sample Sharpe among
   all candidates (1 = worst, N = best, ties averaged), ``ω = rank / (N + 1)``, ``λ = ln(ω / (1 - ω))``;
3. PBO = the fraction of choices with ``λ <= 0``: how often the in-sample winner is no better
   than the median out of sample.

Block sums make each choice a matrix product, so ``S = 16`` (12,870 choices) over 1,000
candidates takes about a second.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCKS = 16
_CHUNK = 512


@dataclass(frozen=True)
class PboResult:
    pbo: float
    """Fraction of splits whose in-sample winner ranks at or below the out-of-sample median."""
    logits: np.ndarray
    """λ per split."""
    splits: int
    blocks: int
    candidates: int


def _sharpe(total: np.ndarray, squares: np.ndarray, count: int) -> np.ndarray:
    mean = total / count
    variance = np.maximum(squares - total * mean, 0.0) / (count - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = mean / np.sqrt(variance)
    return np.where(variance > 0, sharpe, np.where(mean > 0, np.inf, np.where(mean < 0, -np.inf, 0.0)))


def pbo_cscv(returns: np.ndarray, blocks: int = DEFAULT_BLOCKS) -> PboResult:
    """PBO of the candidates whose per-period returns are the columns of ``returns``."""
    matrix = np.asarray(returns, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise ValueError(f"PBO needs a periods x candidates matrix with >= 2 candidates, got shape {matrix.shape}")
    if blocks < 2 or blocks % 2:
        raise ValueError(f"PBO needs an even number of blocks >= 2, got {blocks}")
    size = matrix.shape[0] // blocks
    if size < 2:
        raise ValueError(f"PBO with {blocks} blocks needs >= {2 * blocks} periods, got {matrix.shape[0]}")
    if not np.isfinite(matrix).all():
        raise ValueError("PBO needs finite returns (align candidates on common days first)")
    n = matrix.shape[1]
    cut = matrix[: size * blocks].reshape(blocks, size, n)
    sums, squares = cut.sum(axis=1), (cut ** 2).sum(axis=1)  # blocks x candidates
    chosen = np.array(list(itertools.combinations(range(blocks), blocks // 2)), dtype=np.int64)
    member = np.zeros((len(chosen), blocks))
    member[np.arange(len(chosen))[:, None], chosen] = 1.0
    count = size * blocks // 2
    logits = np.empty(len(chosen))
    for lo in range(0, len(chosen), _CHUNK):
        inside = member[lo : lo + _CHUNK]
        outside = 1.0 - inside
        is_sharpe = _sharpe(inside @ sums, inside @ squares, count)
        oos_sharpe = _sharpe(outside @ sums, outside @ squares, count)
        best = np.argmax(is_sharpe, axis=1)
        picked = oos_sharpe[np.arange(len(best)), best][:, None]
        rank = (oos_sharpe < picked).sum(axis=1) + ((oos_sharpe == picked).sum(axis=1) + 1) / 2
        omega = rank / (n + 1)
        logits[lo : lo + len(best)] = np.log(omega / (1 - omega))
    return PboResult(float(np.mean(logits <= 0)), logits, len(chosen), blocks, n)


def splits(blocks: int) -> int:
    """Number of in-sample choices CSCV evaluates: C(S, S/2)."""
    return math.comb(blocks, blocks // 2)
