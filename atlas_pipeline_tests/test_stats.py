"""Overfitting statistics (research/stats) against independent implementations written here and
on cases with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from atlas_pipeline.research.stats import bootstrap_bands, deflated_sharpe, expected_max_sharpe, pbo_cscv, stationary_indices
from atlas_pipeline.research.stats.bootstrap import resample_stats
from atlas_pipeline.research.stats.dsr import moments
from atlas_pipeline.research.stats.overfitting import OverfittingLimits, over_limits, overfitting_stats, returns_matrix


# --- an independent normal distribution: erf for the cdf, bisection for its inverse ---------
def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def phi_inv(p: float) -> float:
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if phi(mid) < p else (lo, mid)
    return (lo + hi) / 2


def reference_dsr(sr: float, n: int, var: float, t: int, g3: float, g4: float) -> float:
    """Bailey & López de Prado (2014), eqs. 6 and 9, written out."""
    gamma = 0.5772156649015329
    sr0 = math.sqrt(var) * ((1 - gamma) * phi_inv(1 - 1 / n) + gamma * phi_inv(1 - 1 / (n * math.e)))
    return phi((sr - sr0) * math.sqrt(t - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr * sr))


def test_dsr_equals_the_papers_formula():
    for sr, n, var, t, g3, g4 in [(0.1, 10, 0.001, 500, 0.0, 3.0), (0.05, 1000, 0.0005, 2000, -1.2, 8.0),
                                  (0.2, 3, 0.01, 100, 0.5, 4.0)]:
        assert deflated_sharpe(sr, n, var, t, g3, g4) == pytest.approx(reference_dsr(sr, n, var, t, g3, g4), abs=1e-9)


def test_dsr_reproduces_the_papers_example():
    """The paper's numerical example: 100 trials, annualized SR 2.5 with annualized trial
    variance 1/2, 1,250 daily returns (250 a year), skew -3, kurtosis 10 -> SR0 0.1132, DSR 0.9004."""
    per_year = 250
    sr, var = 2.5 / math.sqrt(per_year), 0.5 / per_year
    assert expected_max_sharpe(100, var) == pytest.approx(0.1132, abs=1e-4)
    assert deflated_sharpe(sr, 100, var, 1250, -3.0, 10.0) == pytest.approx(0.9004, abs=1e-4)


def test_dsr_falls_as_trials_grow_with_the_same_best_sharpe():
    values = [deflated_sharpe(0.08, n, 0.002, 730, 0.0, 3.0) for n in (1, 2, 10, 100, 1000, 10_000)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[0] == pytest.approx(phi(0.08 * math.sqrt(729) / math.sqrt(1 + 2 / 4 * 0.08 ** 2)))


def test_moments_are_the_sample_ones():
    r = np.random.default_rng(2).standard_t(5, 400) * 0.01
    sharpe, skew, kurt, n = moments(r)
    m = r.mean()
    m2 = ((r - m) ** 2).mean()
    assert n == 400 and sharpe == pytest.approx(m / r.std(ddof=1))
    assert skew == pytest.approx(((r - m) ** 3).mean() / m2 ** 1.5)
    assert kurt == pytest.approx(((r - m) ** 4).mean() / m2 ** 2)


# --- PBO ---------------------------------------------------------------------------------
def reference_pbo(matrix: np.ndarray, blocks: int) -> float:
    """CSCV by brute force: every split, Sharpe with np.std, rank with a sort."""
    size = matrix.shape[0] // blocks
    parts = [matrix[i * size : (i + 1) * size] for i in range(blocks)]
    n = matrix.shape[1]
    below = 0
    splits = list(itertools.combinations(range(blocks), blocks // 2))
    for split in splits:
        train = np.vstack([parts[i] for i in split])
        test = np.vstack([parts[i] for i in range(blocks) if i not in split])
        is_sr = train.mean(axis=0) / train.std(axis=0, ddof=1)
        oos_sr = test.mean(axis=0) / test.std(axis=0, ddof=1)
        best = int(np.argmax(is_sr))
        order = sorted(oos_sr)
        rank = order.index(oos_sr[best]) + 1  # no ties in continuous noise
        omega = rank / (n + 1)
        below += math.log(omega / (1 - omega)) <= 0
    return below / len(splits)


def test_pbo_equals_brute_force():
    rng = np.random.default_rng(5)
    matrix = rng.normal(0.0005, 0.01, (170, 12)) + rng.normal(0, 0.001, 12)
    result = pbo_cscv(matrix, blocks=8)
    assert result.splits == 70
    assert result.pbo == reference_pbo(matrix, 8)


def test_pbo_of_pure_noise_is_near_a_half():
    values = [pbo_cscv(np.random.default_rng(seed).normal(0, 0.01, (256, 20)), blocks=8).pbo for seed in range(40)]
    assert 0.4 < float(np.mean(values)) < 0.6, np.mean(values)


def test_a_candidate_dominating_every_block_gives_pbo_zero():
    rng = np.random.default_rng(9)
    matrix = rng.normal(0, 0.01, (320, 30))
    matrix[:, 7] = np.abs(rng.normal(0.02, 0.001, 320))  # high mean, tiny spread: best everywhere
    assert pbo_cscv(matrix).pbo == 0.0


def test_pbo_refuses_bad_shapes():
    with pytest.raises(ValueError, match="even number of blocks"):
        pbo_cscv(np.zeros((100, 3)), blocks=5)
    with pytest.raises(ValueError, match="needs >= 32 periods"):
        pbo_cscv(np.zeros((20, 3)))


# --- bootstrap ------------------------------------------------------------------------------
def test_stationary_blocks_have_the_mean_length():
    index = stationary_indices(2000, 50, 10.0, np.random.default_rng(1))
    continued = (index[:, 1:] == (index[:, :-1] + 1) % 2000).mean()
    assert continued == pytest.approx(1 - 1 / 10, abs=0.01)  # a jump every ~10 days
    assert index.min() >= 0 and index.max() < 2000


def test_bootstrap_stats_equal_a_plain_loop():
    r = np.random.default_rng(3).normal(0.001, 0.02, 200)
    index = stationary_indices(len(r), 30, 5.0, np.random.default_rng(4))
    stats = resample_stats(r[index])
    for k, row in enumerate(index):
        sample = [r[i] for i in row]
        mean = sum(sample) / len(sample)
        std = math.sqrt(sum((x - mean) ** 2 for x in sample) / (len(sample) - 1))
        equity, peak, deepest = 1.0, 1.0, 0.0
        for x in sample:
            equity *= 1 + x
            peak = max(peak, equity)
            deepest = max(deepest, 1 - equity / peak)
        assert stats["sharpe"][k] == pytest.approx(mean / std * math.sqrt(365), rel=1e-9)
        assert stats["cagr"][k] == pytest.approx(equity ** (365 / len(sample)) - 1, rel=1e-9)
        assert stats["max_drawdown"][k] == pytest.approx(deepest, rel=1e-9, abs=1e-15)


def test_bootstrap_is_seeded_and_exact_on_constant_returns():
    r = np.random.default_rng(3).normal(0.001, 0.02, 300)
    assert bootstrap_bands(r, seed=1) == bootstrap_bands(r, seed=1)
    assert bootstrap_bands(r, seed=1) != bootstrap_bands(r, seed=2)
    bands = bootstrap_bands(np.full(100, 0.001))
    for p in (5, 50, 95):
        assert bands[f"bootstrap_cagr_p{p}"] == pytest.approx(1.001 ** 365 - 1)
        assert bands[f"bootstrap_max_drawdown_p{p}"] == 0.0
    low, mid, high = (bootstrap_bands(r)[f"bootstrap_sharpe_p{p}"] for p in (5, 50, 95))
    assert low < mid < high
    assert low < r.mean() / r.std(ddof=1) * math.sqrt(365) < high


# --- the combination ---------------------------------------------------------------------------
def test_returns_matrix_aligns_on_common_days():
    a = (100, np.arange(10.0))  # days 101..110
    b = (103, np.arange(10.0) + 100)  # days 104..113
    matrix = returns_matrix([a, None, b])
    assert matrix.shape == (7, 2)  # days 104..110
    assert matrix[0].tolist() == [3.0, 100.0] and matrix[-1].tolist() == [9.0, 106.0]


def test_overfitting_stats_and_limits():
    rng = np.random.default_rng(11)
    dailies = [(19_000, rng.normal(0, 0.01, 400)) for _ in range(12)]
    chosen = dailies[3][1]
    sharpes = np.array([d.mean() / d.std(ddof=1) * math.sqrt(365) for _, d in dailies])
    stats = overfitting_stats(chosen, dailies, trials=12, trial_sharpes=sharpes)
    sr, g3, g4, n = moments(chosen)
    assert stats["dsr"] == pytest.approx(reference_dsr(sr, 12, float((sharpes / math.sqrt(365)).var(ddof=1)), n, g3, g4), abs=1e-9)
    assert stats["pbo"] == pbo_cscv(np.column_stack([d for _, d in dailies])).pbo
    assert over_limits({"pbo": 0.7, "dsr": 0.5}, OverfittingLimits()) == ["pbo 0.7 > max_pbo 0.5", "dsr 0.5 < min_dsr 0.95"]
    assert over_limits({"pbo": math.nan, "dsr": 0.99}, OverfittingLimits()) == []
