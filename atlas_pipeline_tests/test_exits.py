"""Protective exits against an independent numpy loop and on hand-built edge cases.

The reference below shares no code with the engine or backtrader: it walks the bars with the
conventions of docs/trading-model.md ("Exits") and the engine's base rules (next-open market
fills with slippage, a fee on every fill, the sizing cap), on real candles. Every fill, fee,
trade and the final equity must agree to 1e-9 (relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from atlas_pipeline.config.errors import ConfigError
from atlas_pipeline.research.engine import BacktestSpec, Exits, run_backtest
from atlas_pipeline.research.sweep import BacktestJob, BacktestPool
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles
from atlas_pipeline_tests.test_engine import SCRIPTED, crossings, sma, write_strategy

REL = 1e-9


# ---- the reference ---------------------------------------------------------------------------


@dataclass
class Ref:
    equity: np.ndarray
    fills: list[dict] = field(default_factory=list)
    trades: list[dict] = field(default_factory=list)


def reference(candles: pd.DataFrame, signal: np.ndarray, first: int, allow_short: bool, spec: BacktestSpec) -> Ref:
    """``signal[t]``: +1 / -1 / 0 = the strategy calls target(LONG) / target(SHORT) / nothing on
    bar t (from bar ``first``). Equity starts at ``first``."""
    o, h, lo, cl = (candles[k].to_numpy(np.float64) for k in ("open", "high", "low", "close"))
    n, c, s, cushion = len(cl), spec.commission, spec.slippage, spec.cushion
    ex = spec.exits or Exits()
    cash, pos, target = spec.cash, 0.0, 0
    orders: list[float] = []
    live: dict | None = None  # the position's exits: stop level, take-profit level, ...
    entry: dict | None = None
    ref = Ref(equity=np.empty(n - first))

    def fill(t: int, size: float, price: float, kind: str) -> None:
        nonlocal cash, pos, entry
        fee = abs(size) * price * c
        cash -= size * price + fee
        assert cash >= 0
        closing = pos != 0 and np.sign(size) != np.sign(pos)
        pos += size
        ref.fills.append({"bar": t, "size": size, "price": price, "fee": fee, "kind": kind})
        if closing:
            sign = 1 if entry["size"] > 0 else -1
            gross = sign * abs(entry["size"]) * (price - entry["price"])
            fees = entry["fee"] + fee
            ref.trades.append({
                "side": "long" if sign > 0 else "short", "entry_bar": entry["bar"], "exit_bar": t,
                "size": abs(entry["size"]), "entry_price": entry["price"], "exit_price": price,
                "gross_pnl": gross, "fees": fees, "net_pnl": gross - fees,
                "exit_reason": "signal" if kind == "market" else kind,
            })
            entry = None
        else:
            entry = ref.fills[-1]

    for t in range(first, n):
        # 1. the strategy's market orders of bar t-1, at this open
        for size in orders:
            fill(t, size, o[t] * (1 + s if size > 0 else 1 - s), "market")
        placed_now = bool(orders)
        orders = []
        # 2. exits placed before this bar: gap at the open first (the target's, then the stop's),
        #    then a stop inside the range, then a target inside the range
        if live is not None and not placed_now:
            long = pos > 0
            stop, tp = live["stop"], live["tp"]
            price = kind = None
            if tp is not None and (o[t] >= tp if long else o[t] <= tp):
                price, kind = o[t] * (1 - s if long else 1 + s), "take_profit"
            elif stop is not None and (o[t] <= stop if long else o[t] >= stop):
                price, kind = o[t] * (1 - s if long else 1 + s), live["stop_kind"]()
            elif stop is not None and (lo[t] <= stop if long else h[t] >= stop):
                price, kind = stop * (1 - s if long else 1 + s), live["stop_kind"]()
            elif tp is not None and (h[t] >= tp if long else lo[t] <= tp):
                price, kind = tp, "take_profit"
            if price is not None:
                fill(t, -pos, price, kind)
                live, target = None, 0
            elif ex.trailing_stop is not None:
                live["ratchet"](cl[t])
        # 3. a position without exits gets them after this bar's fills
        if pos != 0 and live is None and ex:
            live = place(pos > 0, entry["price"], cl[t], ex)
        if t >= first:
            ref.equity[t - first] = cash + pos * cl[t]
        # 4. the strategy: a new target cancels the exits and sends close-then-open at the next open
        want = {1: 1, -1: -1 if allow_short else 0}.get(int(signal[t]))
        if want is None:
            continue
        target = want
        held = int(np.sign(pos))
        if held == target or t == n - 1:
            continue
        live = None
        if held:
            orders.append(-pos)
        if target:
            size = spec.fraction * (cash + pos * cl[t]) / cl[t]
            if target > 0:
                k = (1 + s) * (1 + c)
                available = cash + min(pos, 0.0) * cl[t] * k * (1 + cushion)
                size = min(size, available / (cl[t] * k * (1 + cushion)))
            orders.append(target * size)
    return ref


def place(long: bool, entry: float, entry_close: float, ex: Exits) -> dict:
    """The exit levels of a position entered at ``entry`` (docs/trading-model.md, Levels)."""
    sign = 1 if long else -1
    sl = None if ex.stop_loss is None else entry * (1 - sign * ex.stop_loss)
    live = {"tp": None if ex.take_profit is None else entry * (1 + sign * ex.take_profit), "stop": sl}
    if ex.trailing_stop is not None:
        r = ex.trailing_stop

        def trail(price: float) -> float:
            return price - price * r if long else price + price * r

        level = trail(entry)
        if sl is not None and sign * (sl - level) >= 0:
            level = sl
        live["stop"] = level

        def ratchet(close: float) -> None:
            if sign * (trail(close) - live["stop"]) > 0:
                live["stop"] = trail(close)

        live["ratchet"] = ratchet
        ratchet(entry_close)
    live["stop_kind"] = lambda: "stop_loss" if live["stop"] == sl else "trailing_stop"
    return live


def assert_matches(result, ref: Ref, candles: pd.DataFrame) -> None:
    times = pd.to_datetime(candles["timestamp"], unit="ms", utc=True)
    np.testing.assert_allclose(result.equity["equity"].to_numpy(), ref.equity, rtol=REL, atol=0)
    assert result.equity["equity"].iloc[-1] == pytest.approx(ref.equity[-1], rel=REL)
    done = result.orders[result.orders["status"] == "completed"]
    done = done.sort_values("executed_time", kind="stable")
    assert set(result.orders["status"]) <= {"completed", "canceled"}
    assert len(done) == len(ref.fills)
    assert list(done["executed_time"]) == [times[f["bar"]] for f in ref.fills]
    assert list(done["kind"]) == [f["kind"] for f in ref.fills]
    assert list(done["side"]) == ["buy" if f["size"] > 0 else "sell" for f in ref.fills]
    np.testing.assert_allclose(done["price"], [f["price"] for f in ref.fills], rtol=REL)
    np.testing.assert_allclose(done["size"], [abs(f["size"]) for f in ref.fills], rtol=REL)
    np.testing.assert_allclose(done["fee"], [f["fee"] for f in ref.fills], rtol=REL)
    trades, expected = result.trades, pd.DataFrame(ref.trades)
    assert len(trades) == len(expected) > 0
    assert list(trades["exit_reason"]) == list(expected["exit_reason"])
    assert list(trades["side"]) == list(expected["side"])
    assert list(trades["entry_time"]) == list(times[expected["entry_bar"]])
    assert list(trades["exit_time"]) == list(times[expected["exit_bar"]])
    for column in ("size", "entry_price", "exit_price", "gross_pnl", "fees", "net_pnl"):
        np.testing.assert_allclose(trades[column], expected[column], rtol=REL, err_msg=column)


# ---- real candles ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eth_btc() -> pd.DataFrame:
    return shared_candles("binance_ETH-BTC_5m").iloc[:3000].reset_index(drop=True)


EXIT_CASES = {
    "all-three": Exits(stop_loss=0.012, take_profit=0.02, trailing_stop=0.01),
    "stop-loss": Exits(stop_loss=0.01),
    "target-and-trail": Exits(take_profit=0.015, trailing_stop=0.006),
    "tight-stop-wide-trail": Exits(stop_loss=0.006, trailing_stop=0.012),
}


@needs_shared_candles
@pytest.mark.parametrize("allow_short", [False, True], ids=["long-only", "long-short"])
@pytest.mark.parametrize("case", list(EXIT_CASES))
def test_exits_equal_the_reference_on_real_candles(eth_btc, case, allow_short):
    fast, slow = 10, 30
    spec = BacktestSpec("sma_crossover", {"fast": fast, "slow": slow, "allow_short": allow_short},
                        fraction=1.0, slippage=0.0005, exits=EXIT_CASES[case])
    result = run_backtest(eth_btc, spec, "5m")
    close = eth_btc["close"].to_numpy()
    signal = crossings(sma(close, fast), sma(close, slow), slow)
    ref = reference(eth_btc, signal, slow, allow_short, spec)
    assert_matches(result, ref, eth_btc)
    reasons = set(result.trades["exit_reason"])
    assert len(reasons) >= 2, reasons  # the case exercises exits and signals, not one path only
