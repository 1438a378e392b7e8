"""Perpetual-futures backtests against an independent loop over bars (docs/trading-model.md).

The reference below shares no code with the engine: a plain loop that settles funding before the
bar's fills, fills market orders at the open, sizes by the documented leverage cap and liquidates
on the bar's adverse mark extreme. Every fill, fee, funding payment, liquidation and the equity
curve must agree to 1e-9 (relative) on real candles from ``../shared/data/candles``; then the edge
cases, each on candles built so that the case happens on a known bar.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.research.engine import BacktestSpec, run_backtest
from atlas_pipeline.research.engine.perps import MissingFundingError, PerpSpec
from atlas_pipeline.research.metrics import compute_metrics
from atlas_pipeline.research.engine.perps import perp_metrics
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles
from atlas_pipeline_tests.test_engine import crossings, sma

REL = 1e-9
H8 = 8 * 3_600_000


# ---- data: real trade candles, a mark price near them, seeded funding ---------------------------


def mark_candles(candles: pd.DataFrame, seed: int = 3) -> pd.DataFrame:
    """Mark prices a small, slowly varying basis (+-0.1 %) away from the trade candles."""
    rng = np.random.default_rng(seed)
    basis = np.clip(np.cumsum(rng.normal(0, 1e-4, len(candles))), -1e-3, 1e-3)
    mark = candles.copy()
    for column in ("open", "high", "low", "close"):
        mark[column] = candles[column] * (1 + basis)
    mark["volume"] = 0.0
    return mark


def funding_events(candles: pd.DataFrame, seed: int = 5, mean: float = 1e-4) -> pd.DataFrame:
    """One event per 8 h grid time over the candles, rates of both signs."""
    stamps = candles["timestamp"].to_numpy()
    first = -(-int(stamps[0]) // H8) * H8
    times = np.arange(first, int(stamps[-1]) + H8, H8, dtype=np.int64)
    rates = np.random.default_rng(seed).normal(mean, 4e-4, len(times))
    return pd.DataFrame({"timestamp": times, "rate": rates})


def perp_spec(candles, strategy, params, *, leverage, mm=0.004, liq_fee=0.0125, fraction=0.9, funding=None,
              commission=0.0005, slippage=0.0002, mark=None) -> BacktestSpec:
    perp = PerpSpec(
        mark=mark_candles(candles) if mark is None else mark,
        funding=funding_events(candles) if funding is None else funding,
        leverage=leverage, maintenance_margin=mm, liquidation_fee=liq_fee,
    )
    return BacktestSpec(strategy, params, fraction=fraction, commission=commission, slippage=slippage, perp=perp)


# ---- the reference ---------------------------------------------------------------------------------


@dataclass
class Reference:
    equity: np.ndarray
    fills: list[dict] = field(default_factory=list)
    funding: list[dict] = field(default_factory=list)
    liquidations: list[dict] = field(default_factory=list)
    trades: list[dict] = field(default_factory=list)


def reference(candles: pd.DataFrame, signal: np.ndarray, first: int, allow_short: bool, spec: BacktestSpec) -> Reference:
    """The documented perp rules over bars; ``signal`` +1/-1 on bars that want long/short (else 0)."""
    perp = spec.perp
    ts = candles["timestamp"].to_numpy()
    open_, close = candles["open"].to_numpy(), candles["close"].to_numpy()
    mark = perp.mark.set_index("timestamp").loc[ts]
    m_open, m_high, m_low = (mark[c].to_numpy() for c in ("open", "high", "low"))
    lev, mm, k, s, u = perp.leverage, perp.maintenance_margin, spec.commission, spec.slippage, spec.cushion
    due: dict[int, list] = {}
    for t, rate in zip(perp.funding["timestamp"], perp.funding["rate"]):
        bar = int(np.argmax(ts >= t)) if (ts >= t).any() else None
        if bar is not None and t >= ts[0]:
            due.setdefault(bar, []).append((int(t), float(rate)))
    n = len(ts)
    wallet, q, e = spec.cash, 0.0, 0.0
    ref = Reference(equity=np.empty(n - first))
    orders: list[float] = []
    entry: dict | None = None

    def close_trade(bar: int, price: float, fee: float) -> None:
        gross = entry["size"] * (price - entry["price"])
        ref.trades.append({"side": "long" if entry["size"] > 0 else "short", "entry_bar": entry["bar"], "exit_bar": bar,
                           "size": abs(entry["size"]), "entry_price": entry["price"], "exit_price": price,
                           "gross_pnl": gross, "fees": entry["fee"] + fee, "net_pnl": gross - entry["fee"] - fee})

    for t in range(first, n):
        if q:  # 1. funding due on this bar, on the position held before its fills
            for time, rate in due.get(t, []):
                amount = -q * m_open[t] * rate
                wallet += amount
                ref.funding.append({"time": time, "bar": t, "position": q, "mark": m_open[t], "rate": rate, "amount": amount})
        for size in orders:  # 2. fills at the open
            price = open_[t] * (1 + s if size > 0 else 1 - s)
            fee = abs(size) * price * k
            ref.fills.append({"bar": t, "size": size, "price": price, "fee": fee})
            if q:  # closing (the strategy closes whole positions)
                assert size == -q
                wallet += q * (price - e) - fee
                close_trade(t, price, fee)
                q, e, entry = 0.0, 0.0, None
            else:
                assert wallet - abs(size) * price / lev - fee >= 0, "the reference never runs out of margin"
                wallet -= fee
                q, e = size, price
                entry = {"bar": t, "size": size, "price": price, "fee": fee}
        orders = []
        if q:  # 3. liquidation on the adverse mark extreme
            liq = e * (1 - 1 / lev) / (1 - mm) if q > 0 else e * (1 + 1 / lev) / (1 + mm)
            if (q > 0 and m_low[t] <= liq) or (q < 0 and m_high[t] >= liq):
                fee = min(perp.liquidation_fee, mm) * abs(q) * liq
                wallet += q * (liq - e) - fee
                ref.liquidations.append({"bar": t, "size": q, "entry": e, "price": liq, "fee": fee, "pnl": q * (liq - e)})
                ref.fills.append({"bar": t, "size": -q, "price": liq, "fee": fee})
                close_trade(t, liq, fee)
                q, e, entry = 0.0, 0.0, None
        ref.equity[t - first] = wallet + q * (close[t] - e)
        want = {1: 1, -1: -1 if allow_short else 0}.get(int(signal[t]))  # 4. the strategy
        held = int(np.sign(q))
        if want is None or want == held or t == n - 1:
            continue
        if held:
            orders.append(-q)
        if want:
            equity = wallet + q * (close[t] - e)
            size = spec.fraction * lev * equity / close[t]
            worst = (1 + s) * (1 + u)
            available = equity - abs(q) * close[t] * (worst * (1 + k) - 1) if held else wallet
            orders.append(want * min(size, available / (close[t] * worst * (1 / lev + k))))
    return ref


def assert_matches(result, ref: Reference, candles: pd.DataFrame) -> None:
    times = pd.to_datetime(candles["timestamp"], unit="ms", utc=True)
    np.testing.assert_allclose(result.equity["equity"].to_numpy(), ref.equity, rtol=REL, atol=0)
    orders = result.orders
    assert (orders["status"] == "completed").all(), orders["status"].value_counts()
    assert len(orders) == len(ref.fills)
    assert list(orders["executed_time"]) == [times[f["bar"]] for f in ref.fills]
    assert list(orders["side"]) == ["buy" if f["size"] > 0 else "sell" for f in ref.fills]
    for column, key in (("price", "price"), ("fee", "fee")):
        np.testing.assert_allclose(orders[column], [f[key] for f in ref.fills], rtol=REL, err_msg=column)
    np.testing.assert_allclose(orders["size"], [abs(f["size"]) for f in ref.fills], rtol=REL)

    funding = result.funding
    assert len(funding) == len(ref.funding)
    assert list(funding["time"]) == list(pd.to_datetime([f["time"] for f in ref.funding], unit="ms", utc=True))
    assert list(funding["settled_time"]) == [times[f["bar"]] for f in ref.funding]
    for column, key in (("position", "position"), ("mark_price", "mark"), ("rate", "rate"), ("amount", "amount")):
        np.testing.assert_allclose(funding[column], [f[key] for f in ref.funding], rtol=REL, err_msg=column)

    liquidations = result.liquidations
    assert len(liquidations) == len(ref.liquidations)
    assert list(liquidations["time"]) == [times[x["bar"]] for x in ref.liquidations]
    assert list(liquidations["side"]) == ["long" if x["size"] > 0 else "short" for x in ref.liquidations]
    for column, key in (("entry_price", "entry"), ("liquidation_price", "price"), ("fee", "fee"), ("pnl", "pnl")):
        np.testing.assert_allclose(liquidations[column], [x[key] for x in ref.liquidations], rtol=REL, err_msg=column)

    trades, expected = result.trades, pd.DataFrame(ref.trades)
    assert len(trades) == len(expected)
    assert list(trades["side"]) == list(expected["side"])
    assert list(trades["exit_time"]) == list(times[expected["exit_bar"]])
    for column in ("size", "entry_price", "exit_price", "gross_pnl", "fees", "net_pnl"):
        np.testing.assert_allclose(trades[column], expected[column], rtol=REL, err_msg=column)


@pytest.fixture(scope="module")
def eth_btc() -> pd.DataFrame:
    return shared_candles("binance_ETH-BTC_5m")


@needs_shared_candles
@pytest.mark.parametrize(
    "leverage, mm, liq_fee, fraction",
    [(3, 0.004, 0.0125, 0.9), (20, 0.01, 0.0125, 0.3), (10, 0.05, 0.02, 0.5)],
    ids=["3x", "20x-fee-capped-at-margin", "10x-fee-below-margin"],
)
def test_perp_backtest_equals_the_reference_on_real_candles(eth_btc, leverage, mm, liq_fee, fraction):
    fast, slow = 10, 30
    spec = perp_spec(eth_btc, "sma_crossover", {"fast": fast, "slow": slow, "allow_short": True},
                     leverage=leverage, mm=mm, liq_fee=liq_fee, fraction=fraction)
    result = run_backtest(eth_btc, spec, "5m")
    close = eth_btc["close"].to_numpy()
    ref = reference(eth_btc, crossings(sma(close, fast), sma(close, slow), slow), slow, True, spec)
    assert result.warmup_bars == slow
    assert_matches(result, ref, eth_btc)
    assert result.equity["equity"].iloc[-1] == pytest.approx(ref.equity[-1], rel=REL)
    # the run exercised what it claims to: both sides, funding of both signs, liquidations at high leverage
    assert set(result.trades["side"]) == {"long", "short"}
    assert (result.funding["amount"] > 0).any() and (result.funding["amount"] < 0).any()
    assert (len(result.liquidations) > 0) == (leverage > 3)
    extra = perp_metrics(result.equity, result.close, result.funding, result.liquidations)
    amounts = np.array([f["amount"] for f in ref.funding])
    assert extra["funding_paid"] == pytest.approx(-amounts[amounts < 0].sum(), rel=REL)
    assert extra["funding_received"] == pytest.approx(amounts[amounts > 0].sum(), rel=REL)
    assert extra["liquidations"] == len(ref.liquidations)
    assert 0.8 * fraction * leverage < extra["max_leverage_used"] < 1.5 * fraction * leverage


# ---- edge cases on built candles ------------------------------------------------------------------

SCRIPTED = '''
from atlas_pipeline.research.strategy_base import AtlasStrategy, LONG, SHORT, FLAT


class Scripted(AtlasStrategy):
    """Targets from a plan ``"bar:L|S|F,..."``: the side wanted from that bar's next open on."""

    params = (("plan", ""), ("allow_short", True))

    def next(self):
        for item in filter(None, self.p.plan.split(",")):
            bar, side = item.split(":")
            if len(self) - 1 == int(bar):
                self.target({"L": LONG, "S": SHORT, "F": FLAT}[side])
'''


@pytest.fixture(scope="module")
def strategies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("strategies")
    (folder / "scripted.py").write_text(textwrap.dedent(SCRIPTED))
    return folder


T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
HOUR = 3_600_000


def flat_candles(n: int = 24, price: float = 100.0, lows: dict[int, float] | None = None) -> pd.DataFrame:
    """1h candles at a constant price, except the given bars' lows."""
    low = np.full(n, price)
    for bar, value in (lows or {}).items():
        low[bar] = value
    return pd.DataFrame({"timestamp": T0 + HOUR * np.arange(n, dtype=np.int64), "open": price, "high": price,
                         "low": low, "close": price, "volume": 1.0})


def run_scripted(strategies, candles, plan, *, rates, leverage=2.0, mark=None, **kw):
    funding = pd.DataFrame({"timestamp": np.arange(T0, T0 + len(candles) * HOUR, H8, dtype=np.int64)})
    funding["rate"] = rates if np.ndim(rates) else float(rates)
    spec = BacktestSpec("scripted", {"plan": plan}, fraction=0.5, commission=0.0, slippage=0.0,
                        perp=PerpSpec(mark=candles if mark is None else mark, funding=funding, leverage=leverage, **kw))
    return run_backtest(candles, spec, "1h", strategies_dir=strategies)


@pytest.mark.parametrize(
    "side, rate, paid",
    [("L", 0.001, True), ("L", -0.001, False), ("S", 0.001, False), ("S", -0.001, True)],
    ids=["long-positive-pays", "long-negative-receives", "short-positive-receives", "short-negative-pays"],
)
def test_funding_sign(strategies, side, rate, paid):
    """Entered at 01:00, held over the 08:00 and 16:00 fundings: cash flow -q x mark x rate each."""
    result = run_scripted(strategies, flat_candles(), f"0:{side}", rates=rate)
    size = 0.5 * 2.0 * 10_000 / 100.0  # fraction x leverage x equity / price
    q = size if side == "L" else -size
    funding = result.funding
    assert list(funding["time"]) == [pd.Timestamp(T0 + 8 * HOUR, unit="ms", tz="UTC"), pd.Timestamp(T0 + 16 * HOUR, unit="ms", tz="UTC")]
    np.testing.assert_allclose(funding["amount"], [-q * 100.0 * rate] * 2, rtol=REL)
    assert (funding["amount"] < 0).all() == paid and (funding["amount"] > 0).all() == (not paid)
    assert result.equity["cash"].iloc[-1] == pytest.approx(10_000 - 2 * q * 100.0 * rate, rel=REL)
    metrics = perp_metrics(result.equity, result.close, funding, result.liquidations)
    assert metrics["funding_paid" if paid else "funding_received"] == pytest.approx(2 * abs(q * 100 * rate), rel=REL)
    assert metrics["funding_received" if paid else "funding_paid"] == 0


def test_funding_exactly_at_a_bar_edge(strategies):
    """The 08:00 funding settles at the 08:00 bar's open before its fills: the position closed by an
    order filling at 08:00 pays it, the one opened at 08:00 does not (it pays 16:00's)."""
    # signal on bar 7 (07:00): reverse long -> short, filling at the 08:00 open
    result = run_scripted(strategies, flat_candles(), "0:L,7:S", rates=0.001)
    funding = result.funding
    assert len(funding) == 2
    assert funding["position"].iloc[0] > 0 and funding["settled_time"].iloc[0] == pd.Timestamp(T0 + 8 * HOUR, unit="ms", tz="UTC")
    assert funding["position"].iloc[1] < 0 and funding["time"].iloc[1] == pd.Timestamp(T0 + 16 * HOUR, unit="ms", tz="UTC")
    # the mark price of a funding is the settling bar's mark open, not the trade price
    mark = flat_candles(price=100.0)
    mark.loc[8, "open"] = 101.0
    result = run_scripted(strategies, flat_candles(), "0:L,7:S", rates=0.001, mark=mark)
    assert result.funding["mark_price"].iloc[0] == 101.0
    assert result.funding["amount"].iloc[0] == pytest.approx(-100.0 * 101.0 * 0.001, rel=REL)


def test_a_liquidation(strategies):
    """A long at 100 with 2x and maintenance 0.5 %: P_liq = 100 x 0.5 / 0.995; the mark low of bar 5
    touches it; the position closes there, pays the fee (capped at the margin left) and loses
    exactly its margin; the strategy does not re-enter."""
    liq = 100.0 * (1 - 1 / 2) / (1 - 0.005)
    mark = flat_candles(lows={5: liq - 0.01})
    result = run_scripted(strategies, flat_candles(), "0:L", rates=0.0, mark=mark, maintenance_margin=0.005)
    (row,) = result.liquidations.itertuples()
    size = 0.5 * 2.0 * 10_000 / 100.0
    assert row.time == pd.Timestamp(T0 + 5 * HOUR, unit="ms", tz="UTC")
    assert (row.side, row.size, row.entry_price) == ("long", size, 100.0)
    assert row.liquidation_price == pytest.approx(liq, rel=REL)
    assert row.fee == pytest.approx(0.005 * size * liq, rel=REL)  # min(1.25 %, 0.5 %)
    margin = size * 100.0 / 2.0
    assert result.equity["equity"].iloc[-1] == pytest.approx(10_000 - margin, rel=REL)
    assert (result.equity["position"].iloc[5:] == 0).all()
    assert list(result.orders["side"]) == ["buy", "sell"] and result.trades["exit_price"].iloc[0] == pytest.approx(liq)
    # the trade price (close 100) never moved: liquidation is on the mark price only
    assert (result.close == 100.0).all()
    # a low one tick above the liquidation price liquidates nothing
    mark = flat_candles(lows={5: liq + 0.01})
    assert run_scripted(strategies, flat_candles(), "0:L", rates=0.0, mark=mark, maintenance_margin=0.005).liquidations.empty


def test_missing_funding_history_fails_naming_the_range(strategies):
    candles = flat_candles(48)  # 2024-01-01 00:00 .. 2024-01-02 23:00: six grid times
    funding = pd.DataFrame({"timestamp": np.array([T0, T0 + 8 * HOUR, T0 + 40 * HOUR], dtype=np.int64), "rate": 1e-4})
    spec = BacktestSpec("scripted", {"plan": "0:L"}, perp=PerpSpec(mark=candles, funding=funding, leverage=2))
    with pytest.raises(MissingFundingError, match=r"missing 3 funding event\(s\): 2024-01-01 16:00 \.\. 2024-01-02 08:00 \(3 events\)") as error:
        run_backtest(candles, spec, "1h", strategies_dir=strategies)
    assert error.value.ranges == [(T0 + 16 * HOUR, T0 + 32 * HOUR, 3)]
    empty = pd.DataFrame({"timestamp": np.array([], dtype=np.int64), "rate": np.array([])})
    spec = BacktestSpec("scripted", {"plan": "0:L"}, perp=PerpSpec(mark=candles, funding=empty, leverage=2))
    with pytest.raises(MissingFundingError, match=r"2024-01-01 00:00 \.\. 2024-01-02 16:00 \(6 events\)"):
        run_backtest(candles, spec, "1h", strategies_dir=strategies)


def test_missing_mark_candles_are_an_error(strategies):
    candles = flat_candles()
    with pytest.raises(ValueError, match=r"mark-price candles are missing for 1 of 24 bars \(first at 2024-01-01 03:00\)"):
        run_scripted(strategies, candles, "0:L", rates=0.0, mark=candles.drop(index=3))


def test_bad_perp_settings_are_refused():
    frame = flat_candles()
    with pytest.raises(ValueError, match="leverage"):
        PerpSpec(mark=frame, funding=frame, leverage=200)
    with pytest.raises(ValueError, match="below 1/leverage"):
        PerpSpec(mark=frame, funding=frame, leverage=50, maintenance_margin=0.02)


def test_spot_metrics_still_hold_on_a_perp_result(strategies):
    result = run_scripted(strategies, flat_candles(), "0:L", rates=0.001)
    metrics = compute_metrics(result.equity, result.trades, result.close)
    assert metrics["final_equity"] == pytest.approx(result.equity["equity"].iloc[-1])
