"""Every metric equals its textbook formula, computed here independently (plain Python loops over
the bars), on a random-walk equity and on a hand-checked 3-day curve; plus the edge cases
``docs/metrics.md`` promises."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.research.metrics import METRIC_DESCRIPTIONS, compute_metrics, metrics_table_markdown
from atlas_pipeline.research.results import TRADE_COLUMNS

SQRT365 = math.sqrt(365)


def frame(times: pd.DatetimeIndex, equity, in_market=None) -> pd.DataFrame:
    equity = np.asarray(equity, dtype=float)
    in_market = np.zeros(len(equity), bool) if in_market is None else np.asarray(in_market, bool)
    return pd.DataFrame(
        {"equity": equity, "cash": equity, "position": in_market.astype(float), "in_market": in_market},
        index=pd.DatetimeIndex(times, name="time"),
    )


def trades_frame(net_pnl, return_pct=None) -> pd.DataFrame:
    count = len(net_pnl)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    return pd.DataFrame({
        "entry_time": [start] * count, "exit_time": [start + pd.Timedelta(hours=1)] * count,
        "side": ["long"] * count, "size": [1.0] * count, "entry_price": [100.0] * count,
        "exit_price": [100.0] * count, "gross_pnl": list(net_pnl), "fees": [0.0] * count,
        "net_pnl": list(net_pnl), "return_pct": list(return_pct if return_pct is not None else net_pnl),
        "bars_held": [1] * count,
    }, columns=list(TRADE_COLUMNS))


def no_trades() -> pd.DataFrame:
    return pd.DataFrame(columns=list(TRADE_COLUMNS))


# --- an independent implementation, as in a textbook: loops, no pandas resampling ---------------

def textbook(equity: pd.DataFrame, trades: pd.DataFrame, close: pd.Series) -> dict[str, float]:
    times = [t.to_pydatetime() for t in equity.index]
    values = [float(v) for v in equity["equity"]]
    # last equity of each UTC calendar day, carrying the previous one over days without bars
    last_of_day: dict = {}
    for time, value in zip(times, values):
        last_of_day[time.date()] = value
    day, closes = times[0].date(), []
    while day <= times[-1].date():
        closes.append(last_of_day.get(day, closes[-1] if closes else None))
        day += timedelta(days=1)
    returns = [closes[i] / closes[i - 1] - 1 for i in range(1, len(closes))]
    n = len(returns)
    mean = sum(returns) / n if n >= 2 else math.nan
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / (n - 1)) if n >= 2 else math.nan
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / n) if n >= 2 else math.nan

    years = (times[-1] - times[0]).total_seconds() / 86400 / 365
    cagr = (values[-1] / values[0]) ** (1 / years) - 1 if years > 0 else math.nan

    peak, peak_time, under, deepest, longest = values[0], times[0], False, 0.0, 0.0
    for time, value in zip(times, values):
        if value >= peak:
            if under:  # recovered: the drawdown lasted from its peak until now
                longest = max(longest, (time - peak_time).total_seconds() / 86400)
            peak, peak_time, under = value, time, False
        else:
            under = True
        deepest = max(deepest, (peak - value) / peak)
    if under:  # still under water at the end
        longest = max(longest, (times[-1] - peak_time).total_seconds() / 86400)

    pnl = [float(p) for p in trades["net_pnl"]]
    rets = [float(r) for r in trades["return_pct"]]
    wins = sum(p for p in pnl if p > 0)
    losses = -sum(p for p in pnl if p < 0)
    return {
        "final_equity": values[-1],
        "total_return": values[-1] / values[0] - 1,
        "cagr": cagr,
        "annual_volatility": std * SQRT365,
        "sharpe": mean / std * SQRT365,
        "sortino": mean / downside * SQRT365,
        "calmar": cagr / deepest,
        "max_drawdown": deepest,
        "max_drawdown_duration_days": longest,
        "exposure": sum(bool(x) for x in equity["in_market"]) / len(values),
        "trade_count": float(len(pnl)),
        "win_rate": sum(p > 0 for p in pnl) / len(pnl),
        "profit_factor": wins / losses,
        "expectancy": sum(pnl) / len(pnl),
        "avg_trade_return": sum(rets) / len(rets),
        "best_trade_return": max(rets),
        "worst_trade_return": min(rets),
        "buy_and_hold_return": float(close.iloc[-1]) / float(close.iloc[0]) - 1,
    }


@pytest.fixture(scope="module")
def random_walk():
    """~400 days of 1h bars: a random walk while in the market, flat while out, and one whole
    UTC day of missing bars (an exchange outage)."""
    rng = np.random.default_rng(7)
    times = pd.date_range("2023-03-01 00:00", periods=400 * 24, freq="1h", tz="UTC")
    times = times[(times < "2023-06-10") | (times >= "2023-06-11")]
    in_market = (np.arange(len(times)) // 100) % 3 != 0  # flat a third of the time
    close = pd.Series(30_000 * np.exp(np.cumsum(rng.normal(0, 0.01, len(times)))), index=times)
    step = close.pct_change().fillna(0).to_numpy() * np.r_[False, in_market[:-1]]
    equity = frame(times, 10_000 * np.cumprod(1 + step), in_market)
    trades = trades_frame(rng.normal(5, 50, 120), rng.normal(0.001, 0.02, 120))
    return equity, trades, close


def test_every_metric_equals_its_textbook_formula(random_walk) -> None:
    equity, trades, close = random_walk
    got = compute_metrics(equity, trades, close)
    want = textbook(equity, trades, close)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert got["start"] == "2023-03-01T00:00:00+00:00" and got["end"] == equity.index[-1].isoformat()
    assert 0 < got["exposure"] < 1 and got["max_drawdown"] > 0 and got["max_drawdown_duration_days"] > 1


def test_hand_checked_three_day_curve() -> None:
    """6-hourly bars; daily closes 100, 120, 108 -> daily returns +0.2, -0.1."""
    times = pd.date_range("2024-01-01", periods=12, freq="6h", tz="UTC")
    values = [100, 104, 95, 100, 110, 125, 100, 120, 115, 110, 105, 108]
    in_market = [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    close = pd.Series(np.linspace(200, 250, 12), index=times)
    trades = trades_frame([10.0, -5.0, 20.0], [0.1, -0.05, 0.2])
    got = compute_metrics(frame(times, values, in_market), trades, close)

    mean, std, downside = 0.05, math.sqrt(0.15**2 + 0.15**2), math.sqrt(0.1**2 / 2)
    cagr = 1.08 ** (365 / 2.75) - 1  # 2.75 days from the first bar to the last
    expected = {
        "final_equity": 108.0, "total_return": 0.08, "cagr": cagr,
        "annual_volatility": std * SQRT365, "sharpe": mean / std * SQRT365,
        "sortino": mean / downside * SQRT365, "calmar": cagr / 0.2,
        "max_drawdown": 0.2,  # 125 -> 100
        "max_drawdown_duration_days": 1.5,  # peak 125 on Jan 2 06:00, not recovered by Jan 3 18:00
        "exposure": 6 / 12, "trade_count": 3.0, "win_rate": 2 / 3, "profit_factor": 30 / 5,
        "expectancy": 25 / 3, "avg_trade_return": 0.25 / 3, "best_trade_return": 0.2,
        "worst_trade_return": -0.05, "buy_and_hold_return": 0.25,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got["sharpe"] == pytest.approx(4.50309, rel=1e-5)
    assert got["sortino"] == pytest.approx(13.50926, rel=1e-5)


def test_recovered_drawdown_duration_ends_at_recovery() -> None:
    times = pd.date_range("2024-01-01", periods=6, freq="1D", tz="UTC")
    got = compute_metrics(frame(times, [100, 90, 95, 100, 101, 101]), no_trades(), pd.Series(1.0, index=times))
    assert got["max_drawdown"] == pytest.approx(0.1)
    assert got["max_drawdown_duration_days"] == 3.0  # Jan 1 peak, back to 100 on Jan 4


def test_duration_does_not_depend_on_index_resolution() -> None:
    times = pd.date_range("2024-01-01", periods=4, freq="1h", tz="UTC")
    values, close = [100, 90, 95, 100], pd.Series(1.0, index=times)
    for unit in ("s", "ms", "us", "ns"):
        got = compute_metrics(frame(times.as_unit(unit), values), no_trades(), close)
        assert got["max_drawdown_duration_days"] == pytest.approx(3 / 24), unit


def test_no_trades_gives_nan_trade_metrics() -> None:
    times = pd.date_range("2024-01-01", periods=48, freq="1h", tz="UTC")
    got = compute_metrics(frame(times, np.linspace(100, 110, 48)), no_trades(), pd.Series(1.0, index=times))
    assert got["trade_count"] == 0.0
    for key in ("win_rate", "profit_factor", "expectancy", "avg_trade_return", "best_trade_return", "worst_trade_return"):
        assert math.isnan(got[key]), key


def test_trade_ratio_edge_cases() -> None:
    times = pd.date_range("2024-01-01", periods=3, freq="1D", tz="UTC")
    equity, close = frame(times, [1, 2, 3]), pd.Series(1.0, index=times)
    winners = compute_metrics(equity, trades_frame([1.0, 2.0]), close)
    assert winners["profit_factor"] == math.inf and winners["win_rate"] == 1.0
    losers = compute_metrics(equity, trades_frame([-1.0, -2.0]), close)
    assert losers["profit_factor"] == 0.0 and losers["win_rate"] == 0.0
    breakeven = compute_metrics(equity, trades_frame([0.0, 0.0]), close)
    assert math.isnan(breakeven["profit_factor"]) and breakeven["win_rate"] == 0.0


def test_flat_equity() -> None:
    times = pd.date_range("2024-01-01", periods=24 * 10, freq="1h", tz="UTC")
    got = compute_metrics(frame(times, np.full(len(times), 1000.0)), no_trades(), pd.Series(5.0, index=times))
    assert got["total_return"] == 0.0 and got["cagr"] == 0.0 and got["annual_volatility"] == 0.0
    assert got["max_drawdown"] == 0.0 and got["max_drawdown_duration_days"] == 0.0
    for key in ("sharpe", "sortino", "calmar"):
        assert math.isnan(got[key]), key
    assert got["exposure"] == 0.0 and got["buy_and_hold_return"] == 0.0


def test_no_losing_day_and_no_drawdown_gives_infinite_sortino_and_calmar() -> None:
    times = pd.date_range("2024-01-01", periods=5, freq="1D", tz="UTC")
    got = compute_metrics(frame(times, [100, 101, 103, 103, 110]), no_trades(), pd.Series(1.0, index=times))
    assert got["sortino"] == math.inf and got["calmar"] == math.inf
    assert math.isfinite(got["sharpe"]) and got["sharpe"] > 0


def test_single_day_and_single_bar() -> None:
    times = pd.date_range("2024-01-01", periods=24, freq="1h", tz="UTC")
    close = pd.Series(1.0, index=times)
    one_day = compute_metrics(frame(times, np.linspace(100, 101, 24)), no_trades(), close)
    for key in ("annual_volatility", "sharpe", "sortino"):
        assert math.isnan(one_day[key]), key
    assert one_day["total_return"] == pytest.approx(0.01)
    assert one_day["cagr"] == pytest.approx(1.01 ** (365 * 24 / 23) - 1)
    one_bar = compute_metrics(frame(times[:1], [100.0]), no_trades(), close.iloc[:1])
    assert math.isnan(one_bar["cagr"]) and math.isnan(one_bar["calmar"]) and one_bar["total_return"] == 0.0


def test_total_loss_has_cagr_minus_one() -> None:
    times = pd.date_range("2024-01-01", periods=3, freq="1D", tz="UTC")
    got = compute_metrics(frame(times, [100.0, 50.0, -10.0]), no_trades(), pd.Series(1.0, index=times))
    assert got["cagr"] == -1.0 and got["max_drawdown"] == pytest.approx(1.1)


def test_empty_equity_is_an_error() -> None:
    with pytest.raises(ValueError, match="no bars after warm-up"):
        compute_metrics(frame(pd.DatetimeIndex([], tz="UTC"), []), no_trades(), pd.Series(dtype=float))


def test_keys_types_descriptions_and_markdown(random_walk) -> None:
    got = compute_metrics(*random_walk)
    assert list(got) == list(METRIC_DESCRIPTIONS)
    assert all(isinstance(v, float) for k, v in got.items() if k not in ("start", "end"))
    table = metrics_table_markdown({**got, "win_rate": math.nan, "profit_factor": math.inf})
    lines = table.splitlines()
    assert lines[0] == "| Metric | Value |" and len(lines) == 2 + len(got)
    assert f"| Total return | {got['total_return'] * 100:.2f} % |" in lines
    assert f"| Max drawdown duration | {got['max_drawdown_duration_days']:.1f} days |" in lines
    assert "| Win rate | n/a |" in lines and "| Profit factor | ∞ |" in lines
    assert f"| Closed trades | {got['trade_count']:.0f} |" in lines
    assert "x |" in metrics_table_markdown({"profit_factor": 1.5})
