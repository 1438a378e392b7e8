"""The portfolio engine against an independent numpy loop of ``docs/trading-model.md`` ("Portfolios").

The reference below shares no code with the engine: it computes each market's SMA-crossover
signal from its own candles (``test_engine``'s numpy SMA and crossings), builds the union
timeline, selects, weights, rebalances and sizes by the documented rules, and fills each order at
the next candle's open with slippage and fees, checking cash at each fill. Every fill, fee and the
equity curve must agree to 1e-9 (relative), on real ETH/ADA/LTC/TRX-BTC 5m candles with ADA
listed later (its first candles cut) and its real exchange gaps left in.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.research.engine import BacktestSpec, StrategyError
from atlas_pipeline.research.engine.portfolio import PortfolioSpec, run_portfolio
from atlas_pipeline.research.portfolio_metrics import attribution, portfolio_metrics
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles
from atlas_pipeline_tests.test_engine import crossings, sma

pytestmark = needs_shared_candles

REL = 1e-9
MARKETS = ("ETH", "ADA", "LTC", "TRX")
BARS = 1_500
ADA_LISTED_AT = 400
"""ADA's first candles are cut: it is 'listed' ~33 hours into the period."""
FAST, SLOW = 10, 30


@pytest.fixture(scope="module")
def candles() -> dict[str, pd.DataFrame]:
    frames = {f"{m}/BTC": shared_candles(f"binance_{m}-BTC_5m").iloc[:BARS].reset_index(drop=True) for m in MARKETS}
    frames["ADA/BTC"] = frames["ADA/BTC"].iloc[ADA_LISTED_AT:].reset_index(drop=True)
    return frames


# ---- the reference ---------------------------------------------------------------------------


def long_signal(close: np.ndarray) -> np.ndarray:
    """Per candle: the strategy's target is LONG (last cross up, long-only), from its warm-up on."""
    cross = crossings(sma(close, FAST), sma(close, SLOW), SLOW)
    state = np.zeros(len(close), dtype=np.int64)
    held = 0
    for i in range(SLOW, len(close)):
        held = 1 if cross[i] > 0 else (0 if cross[i] < 0 else held)
        state[i] = held
    return state == 1


def trailing_std(close: np.ndarray, window: int) -> np.ndarray:
    returns = close[1:] / close[:-1] - 1.0
    out = np.full(len(close), np.nan)
    for i in range(window, len(close)):
        out[i] = np.std(returns[i - window : i], ddof=1)
    return out


@dataclass
class Reference:
    equity: np.ndarray
    cash: np.ndarray
    fills: list[dict] = field(default_factory=list)
    refused: int = 0
    decisions: list[dict] = field(default_factory=list)
    first: int = 0


def union_timeline(frames: dict[str, pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(bar times, has-candle, opens, closes, each market's candle rows) on the union of the
    markets' candle times; bars without a candle are flat at the last close (before the first
    candle: at the first open)."""
    ms = np.array(sorted(set().union(*(f["timestamp"].tolist() for f in frames.values()))), dtype=np.int64)
    T, N = len(ms), len(frames)
    has = np.zeros((T, N), bool)
    opens, closes = np.full((T, N), np.nan), np.full((T, N), np.nan)
    rows_of = []
    for m, frame in enumerate(frames.values()):
        rows = np.searchsorted(ms, frame["timestamp"].to_numpy())
        rows_of.append(rows)
        has[rows, m] = True
        opens[rows, m], closes[rows, m] = frame["open"], frame["close"]
        last = frame["open"].iloc[0]
        for t in range(T):
            if has[t, m]:
                last = closes[t, m]
            else:
                opens[t, m] = closes[t, m] = last if t > rows[0] else frame["open"].iloc[0]
    return ms, has, opens, closes, rows_of


def reference(frames: dict[str, pd.DataFrame], spec: PortfolioSpec) -> Reference:
    ms, has, opens, closes, rows_of = union_timeline(frames)
    T, N = has.shape
    long, vol = np.zeros((T, N), bool), np.full((T, N), np.nan)
    for m, (frame, rows) in enumerate(zip(frames.values(), rows_of)):
        long[rows, m] = long_signal(frame["close"].to_numpy())
        vol[rows, m] = trailing_std(frame["close"].to_numpy(), spec.volatility_window)
    first = min(rows[SLOW] for rows in rows_of)
    costs = spec.market
    cash, held = costs.cash, np.zeros(N)
    pending: list[tuple[int, float]] = []
    period, refused = None, False
    out = Reference(np.zeros(T), np.zeros(T), first=first)
    up = (1 + costs.slippage) * (1 + costs.commission) * (1 + costs.cushion)
    down = (1 - costs.slippage) * (1 - costs.commission) * (1 - costs.cushion)
    for t in range(T):
        waiting = []
        for m, size in pending:
            if not has[t, m]:
                waiting.append((m, size))
                continue
            price = opens[t, m] * (1 + costs.slippage if size > 0 else 1 - costs.slippage)
            fee = costs.commission * abs(size) * price
            if size > 0 and cash - size * price - fee < 0:
                out.refused += 1
                refused = True
                continue
            cash -= size * price + fee
            held[m] += size
            out.fills.append({"bar": t, "m": m, "size": size, "price": price, "fee": fee})
        pending = waiting
        out.cash[t] = cash
        out.equity[t] = cash + float(np.sum(held * closes[t]))
        if t < first or t == T - 1 or pending or not all(has[t, m] for m in range(N) if held[m] != 0):
            continue
        eligible = [m for m in range(N) if has[t, m] and long[t, m]]
        if spec.allocation == "inverse_volatility":
            eligible = [m for m in eligible if vol[t, m] > 0]
        if spec.max_positions is not None:
            eligible = ([m for m in eligible if held[m] > 0] + [m for m in eligible if held[m] <= 0])[: spec.max_positions]
        chosen = set(eligible)
        if spec.allocation == "equal":
            target = {m: costs.fraction / len(chosen) for m in chosen}
        else:
            total = sum(1 / vol[t, m] for m in chosen)
            target = {m: costs.fraction * (1 / vol[t, m]) / total for m in chosen}
        p = ms[t] // spec.rebalance_every_ms
        scheduled = p != period
        period = p
        holding = {m for m in range(N) if held[m] > 0}
        if not (scheduled or refused or chosen != holding):
            continue
        refused = False
        equity = out.equity[t]
        sells, buys = [], []
        for m in range(N):
            weight = held[m] * closes[t, m] / equity
            if m in holding and m not in chosen:
                sells.append((m, -held[m]))
            elif m in chosen and (m not in holding or abs(weight - target[m]) > spec.rebalance_threshold):
                delta = target[m] * equity / closes[t, m] - held[m]
                (sells if delta < 0 else buys).append((m, delta))
        available = cash + sum(-d * closes[t, m] * down for m, d in sells)
        cost = sum(d * closes[t, m] * up for m, d in buys)
        scale = min(1.0, available / cost) if cost > 0 else 1.0
        pending = sells + [(m, d * scale) for m, d in buys]
        out.decisions.append({"bar": t, "target": target, "equity": equity, "scale": scale, "traded": {m for m, _ in pending}})
    return out


# ---- the comparison --------------------------------------------------------------------------


def close_to(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


SPECS = {
    "equal_weight_max_2": PortfolioSpec(
        BacktestSpec("sma_crossover", {"fast": FAST, "slow": SLOW}, fraction=0.9, slippage=0.0005), max_positions=2,
        rebalance_every_ms=6 * 3_600_000, rebalance_threshold=0.02,
    ),
    "inverse_volatility_all_in": PortfolioSpec(
        BacktestSpec("sma_crossover", {"fast": FAST, "slow": SLOW}, fraction=1.0), allocation="inverse_volatility",
        volatility_window=48, rebalance_every_ms=3_600_000, rebalance_threshold=0.01,
    ),
}


@pytest.fixture(scope="module", params=sorted(SPECS))
def case(request, candles):
    spec = SPECS[request.param]
    return spec, run_portfolio(candles, spec, "5m"), reference(candles, spec)


def test_every_fill_fee_and_the_equity_equal_the_reference(case, candles) -> None:
    spec, result, ref = case
    symbols = list(candles)
    done = result.orders[result.orders["status"] == "completed"].reset_index(drop=True)
    assert len(done) == len(ref.fills) > 50
    start = result.equity.index[0]
    for row, fill in zip(done.itertuples(), ref.fills):
        assert row.symbol == symbols[fill["m"]]
        assert row.side == ("buy" if fill["size"] > 0 else "sell")
        assert (row.executed_time - start) // pd.Timedelta(minutes=5) == fill["bar"] - ref.first
        assert close_to(row.size, abs(fill["size"])) and close_to(row.price, fill["price"]), (row, fill)
        assert close_to(row.fee, fill["fee"])
    assert (result.orders["status"] == "margin").sum() == ref.refused
    assert result.warmup_bars == ref.first
    np.testing.assert_allclose(result.equity["equity"].to_numpy(), ref.equity[ref.first :], rtol=REL)
    assert close_to(float(result.equity["equity"].iloc[-1]), float(ref.equity[-1]))


def test_cash_is_never_negative(case) -> None:
    _, result, ref = case
    assert result.equity["cash"].min() >= 0 and ref.cash.min() >= 0
    assert (result.orders["status"].isin(["completed", "margin", "canceled"])).all()


def test_weights_are_honoured_within_one_bars_drift(case) -> None:
    """After each rebalance's fills, every selected market sits at its target weight measured at the
    decision prices (traded ones exactly, or between scale x target and target when the buys were scaled to fit the cash; untraded ones within the
    threshold), and at the fill bar's close within what one bar's price moves and costs explain."""
    spec, result, ref = case
    weights, closes = result.weights, result.closes
    checked = 0
    for decision in ref.decisions:
        row = decision["bar"] - ref.first + 1
        if row >= len(result.equity) or not result.has_candle.iloc[row].all():
            continue  # an order waited for a candle: weights are checked once it filled
        before = closes.iloc[row - 1].to_numpy()
        move = float(np.nanmax(np.abs(closes.iloc[row].to_numpy() / before - 1)))
        for m, target in decision["target"].items():
            at_decision = result.positions.iloc[row, m] * before[m] / decision["equity"]
            if m in decision["traded"] and decision["scale"] >= 1:
                assert at_decision == pytest.approx(target, rel=1e-9)
            elif m in decision["traded"]:  # buys scaled down to fit the cash: between scale x target and target
                assert target * decision["scale"] * (1 - 1e-9) <= at_decision <= target * (1 + 1e-9)
            else:
                assert abs(at_decision - target) <= spec.rebalance_threshold + 1e-12
            # one bar's close-to-close move (of its own price and of the equity) and the fill costs
            drift = at_decision * (2 * move + 2 * (spec.market.commission + spec.market.slippage)) + 1e-12
            assert abs(weights.iloc[row, m] - at_decision) <= drift
            checked += 1
    assert checked > 50
    assert (result.weights.sum(axis=1) <= spec.market.fraction + 0.05).all()


def test_a_market_listed_later_trades_only_after_its_first_candles(case, candles) -> None:
    _, result, _ = case
    listed = pd.Timestamp(int(candles["ADA/BTC"]["timestamp"].iloc[0]), unit="ms", tz="UTC")
    ada = result.orders[result.orders["symbol"] == "ADA/BTC"]
    assert len(ada) > 0
    assert ada["created_time"].min() >= listed + pd.Timedelta(minutes=5 * SLOW)  # after its own warm-up
    assert not result.has_candle.loc[: listed - pd.Timedelta(minutes=5), "ADA/BTC"].any()
    assert (result.positions.loc[: listed, "ADA/BTC"] == 0).all()
    assert result.has_candle["ADA/BTC"].sum() < len(result.equity) - 1  # real gaps after listing too


def test_contributions_add_up_to_the_return_and_the_drawdown(case, candles) -> None:
    spec, result, ref = case
    metrics = portfolio_metrics(result)
    table = attribution(result)
    assert table["contribution_return"].sum() == pytest.approx(metrics["total_return"], rel=1e-9, abs=1e-12)
    assert table["contribution_drawdown"].sum() == pytest.approx(metrics["max_drawdown"], rel=1e-9, abs=1e-12)
    # each market's contribution from the reference's own fills and final position
    symbols = list(candles)
    last_close = result.closes.iloc[-1].to_numpy()
    for m, symbol in enumerate(symbols):
        fills = [f for f in ref.fills if f["m"] == m]
        flow = sum(-f["size"] * f["price"] - f["fee"] for f in fills)
        held = sum(f["size"] for f in fills)
        expected = (flow + held * last_close[m]) / spec.market.cash
        assert table.loc[symbol, "contribution_return"] == pytest.approx(expected, rel=1e-7, abs=1e-10)
    traded = sum(abs(f["size"]) * f["price"] for f in ref.fills)
    assert metrics["turnover"] == pytest.approx(traded / ref.equity[ref.first :].mean(), rel=1e-9)


# ---- the sizing cushion ------------------------------------------------------------------------

ALWAYS_LONG = textwrap.dedent(
    """
    from atlas_pipeline.research.strategy_base import LONG, AtlasStrategy

    class AlwaysLong(AtlasStrategy):
        def next(self):
            self.target(LONG)
    """
)


def gapped_candles(gap: float, symbols: tuple[str, str] = ("AAA/BTC", "BBB/BTC")) -> dict[str, pd.DataFrame]:
    """Two markets at a flat price (2.0 and 0.5) whose second bar opens ``gap`` above the first close."""
    frames = {}
    for symbol, price in zip(symbols, (2.0, 0.5)):
        close = np.full(6, price)
        opens = close.copy()
        opens[1] = price * (1 + gap)
        frames[symbol] = pd.DataFrame({
            "timestamp": np.arange(6, dtype=np.int64) * 300_000, "open": opens, "high": np.maximum(opens, close),
            "low": np.minimum(opens, close), "close": close, "volume": np.ones(6),
        })
    return frames


def test_all_in_buys_fit_a_gap_up_to_the_cushion(tmp_path: Path) -> None:
    """fraction 1: both buys fill at the first open after a 0.99 % gap up; after a 1.5 % gap the
    second is refused at that open (never dropped), retried at once and filled at the next open."""
    (tmp_path / "always_long.py").write_text(ALWAYS_LONG)
    spec = PortfolioSpec(BacktestSpec("always_long", fraction=1.0, commission=0.001, cushion=0.01))
    bar = lambda i: pd.Timestamp(300_000 * i, unit="ms", tz="UTC")  # noqa: E731

    fits = run_portfolio(gapped_candles(0.0099), spec, "5m", strategies_dir=tmp_path)
    assert (fits.orders["status"] == "completed").all() and len(fits.orders) == 2
    assert (fits.orders["executed_time"] == bar(1)).all()

    gapped = run_portfolio(gapped_candles(0.015), spec, "5m", strategies_dir=tmp_path)
    orders = gapped.orders
    [refusal] = orders[orders["status"] == "margin"].itertuples()
    assert refusal.symbol == "BBB/BTC" and refusal.created_time == bar(0)
    retry = orders[(orders["symbol"] == "BBB/BTC") & (orders["status"] == "completed")]
    assert list(retry["created_time"]) == [bar(1)] and list(retry["executed_time"]) == [bar(2)]
    for result in (fits, gapped):
        assert result.equity["cash"].min() >= 0
        assert (result.positions.iloc[-1] > 0).all()


PLAIN = textwrap.dedent(
    """
    import backtrader as bt

    class Plain(bt.Strategy):
        def next(self):
            self.buy()
    """
)
FAILING = textwrap.dedent(
    """
    from atlas_pipeline.research.strategy_base import AtlasStrategy

    class Failing(AtlasStrategy):
        def next(self):
            if self.data.close[0] > 1:
                raise RuntimeError("no signal today")
    """
)


def test_strategy_errors_name_the_strategy_and_the_market(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text(PLAIN)
    (tmp_path / "failing.py").write_text(FAILING)
    candles = gapped_candles(0.0)  # AAA/BTC at 2.0, BBB/BTC at 0.5
    with pytest.raises(StrategyError, match=r"strategy 'plain': .*plain.py defines a plain backtrader strategy"):
        run_portfolio(candles, PortfolioSpec(BacktestSpec("plain")), "5m", strategies_dir=tmp_path)
    with pytest.raises(StrategyError, match=r"strategy 'failing': on AAA/BTC: .*no signal today"):
        run_portfolio(candles, PortfolioSpec(BacktestSpec("failing")), "5m", strategies_dir=tmp_path)
