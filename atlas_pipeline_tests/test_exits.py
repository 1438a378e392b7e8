"""Protective exits against an independent numpy loop and on hand-built edge cases.

The reference below shares no code with the engine or backtrader: it walks the bars with the
conventions of docs/trading-model.md ("Exits") and the engine's base rules (next-open market
fills with slippage, a fee on every fill, the sizing cap), on real candles. Every fill, fee,
trade and the final equity must agree to 1e-9 (relative).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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


# ---- edge cases on hand-built bars -------------------------------------------------------------

S, C = 0.001, 0.001  # slippage, commission of the edge cases


def bars(*ohlc: tuple[float, float, float, float]) -> pd.DataFrame:
    o, h, lo, c = (np.array(column, dtype=float) for column in zip(*ohlc))
    return pd.DataFrame({
        "timestamp": 1_700_000_000_000 + 60_000 * np.arange(len(o), dtype=np.int64),
        "open": o, "high": h, "low": lo, "close": c, "volume": 1.0,
    })


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("strategies")
    write_strategy(folder, "scripted", SCRIPTED)
    return folder


def run(candles: pd.DataFrame, plan: str, exits: Exits, folder: Path, allow_short: bool = False):
    spec = BacktestSpec("scripted", {"plan": plan, "allow_short": allow_short}, fraction=0.5,
                        commission=C, slippage=S, exits=exits)
    return run_backtest(candles, spec, "1m", strategies_dir=folder)


def only_exit(result) -> pd.Series:
    """The single completed exit order."""
    done = result.orders[(result.orders["status"] == "completed") & (result.orders["kind"] != "market")]
    assert len(done) == 1, result.orders
    return done.iloc[0]


FLAT_BAR = (100, 100.5, 99.5, 100)


def test_a_gap_through_the_stop_fills_at_the_open_and_the_entry_bar_never_triggers(scripted):
    candles = bars(FLAT_BAR, FLAT_BAR, (100, 100, 90, 99), (99, 100, 96, 97), (90, 91, 88, 89), FLAT_BAR)
    result = run(candles, "1:L", Exits(stop_loss=0.05), scripted)
    entry = 100 * (1 + S)
    exit_ = only_exit(result)
    assert exit_["executed_time"] == result.equity.index[4]  # not bar 2 (the entry bar, low 90 < stop)
    assert exit_["price"] == pytest.approx(90 * (1 - S), rel=1e-12)  # the open, not the stop 95.x
    assert exit_["fee"] == pytest.approx(exit_["size"] * exit_["price"] * C, rel=1e-12)
    trade = result.trades.iloc[0]
    assert trade["exit_reason"] == "stop_loss" and trade["entry_price"] == pytest.approx(entry, rel=1e-12)
    assert trade["fees"] == pytest.approx(trade["size"] * (entry + exit_["price"]) * C, rel=1e-12)


def test_stop_and_target_inside_one_bar_the_stop_fills(scripted):
    candles = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (100, 112, 94, 100), FLAT_BAR)
    result = run(candles, "1:L", Exits(stop_loss=0.05, take_profit=0.10), scripted)
    stop = 100 * (1 + S) * 0.95
    assert only_exit(result)["price"] == pytest.approx(stop * (1 - S), rel=1e-12)
    assert result.trades["exit_reason"].tolist() == ["stop_loss"]
    # the OCO sibling was canceled, not filled
    assert result.orders.set_index("kind").loc["take_profit", "status"] == "canceled"


def test_a_bar_opening_through_the_target_fills_it_at_the_open_even_if_it_then_falls_through_the_stop(scripted):
    candles = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (112, 113, 94, 100), FLAT_BAR)
    result = run(candles, "1:L", Exits(stop_loss=0.05, take_profit=0.10), scripted)
    assert only_exit(result)["price"] == pytest.approx(112 * (1 - S), rel=1e-12)
    assert result.trades["exit_reason"].tolist() == ["take_profit"]


def test_a_target_touched_inside_the_bar_fills_at_its_level_without_slippage(scripted):
    candles = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (100, 112, 99, 100), FLAT_BAR)
    result = run(candles, "1:L", Exits(stop_loss=0.05, take_profit=0.10), scripted)
    assert only_exit(result)["price"] == pytest.approx(100 * (1 + S) * 1.10, rel=1e-12)


def test_the_trailing_stop_ratchets_on_a_new_high_close_then_fills_on_the_fall(scripted):
    """Trail 10 %: the close of 120 lifts the stop to 108. The bar's high of 130 does not (a
    level of 117 would have filled on the next bar's low of 110); the fall to 100 fills at 108."""
    candles = bars(
        FLAT_BAR, FLAT_BAR, FLAT_BAR,
        (100, 130, 99, 120),   # new high close; low 99 is above the starting stop (90.09)
        (119, 119, 110, 112),  # above 108: no fill
        (111, 111, 100, 101),  # falls through 108
        FLAT_BAR,
    )
    result = run(candles, "1:L", Exits(trailing_stop=0.10), scripted)
    exit_ = only_exit(result)
    assert exit_["executed_time"] == result.equity.index[5]
    assert exit_["price"] == pytest.approx((120 - 120 * 0.10) * (1 - S), rel=1e-12)
    assert result.trades["exit_reason"].tolist() == ["trailing_stop"]


def test_stop_loss_and_trailing_stop_together_say_which_level_filled(scripted):
    # stop 5 % (95.095), trail 10 %: the stop-loss is the tighter level until a close above 105.66
    falls = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (100, 100, 94, 96), FLAT_BAR)
    assert run(falls, "1:L", Exits(stop_loss=0.05, trailing_stop=0.10), scripted).trades["exit_reason"].tolist() == ["stop_loss"]
    rises = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (100, 121, 100, 120), (119, 119, 100, 101), FLAT_BAR)
    result = run(rises, "1:L", Exits(stop_loss=0.05, trailing_stop=0.10), scripted)
    assert result.trades["exit_reason"].tolist() == ["trailing_stop"]
    assert only_exit(result)["price"] == pytest.approx(108 * (1 - S), rel=1e-12)


SHORT_CASES = {
    # name: (bar 3 after a short entry at 100 x (1 - S), exits, expected price, reason)
    "stop": ((100, 106, 99, 100), Exits(stop_loss=0.05), 100 * (1 - S) * 1.05 * (1 + S), "stop_loss"),
    "gap-through-stop": ((108, 109, 107, 108), Exits(stop_loss=0.05), 108 * (1 + S), "stop_loss"),
    "target": ((100, 100, 89, 95), Exits(take_profit=0.10), 100 * (1 - S) * 0.90, "take_profit"),
    "both-inside": ((100, 106, 89, 95), Exits(stop_loss=0.05, take_profit=0.10), 100 * (1 - S) * 1.05 * (1 + S), "stop_loss"),
}


@pytest.mark.parametrize("case", list(SHORT_CASES))
def test_exits_of_a_short(scripted, case):
    bar, exits, price, reason = SHORT_CASES[case]
    result = run(bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, bar, FLAT_BAR), "1:S", exits, scripted, allow_short=True)
    exit_ = only_exit(result)
    assert exit_["side"] == "buy" and exit_["price"] == pytest.approx(price, rel=1e-12)
    assert result.trades["side"].tolist() == ["short"] and result.trades["exit_reason"].tolist() == [reason]


def test_the_trailing_stop_of_a_short_follows_the_lowest_close(scripted):
    candles = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (100, 100, 80, 90), (89, 95, 88, 94), (94, 100, 93, 99), FLAT_BAR)
    result = run(candles, "1:S", Exits(trailing_stop=0.05), scripted, allow_short=True)
    exit_ = only_exit(result)  # the close of 90 set the stop to 94.5; bar 4 reaches 95
    assert exit_["executed_time"] == result.equity.index[4]
    assert exit_["price"] == pytest.approx((90 + 90 * 0.05) * (1 + S), rel=1e-12)


def test_an_exit_and_a_reversal_signal_on_one_bar(scripted):
    """The stop fills inside bar 3 and the strategy turns short on bar 3's close: the position is
    already flat, so only the opening sell goes out, at bar 4's open."""
    low = (95, 95.5, 94.5, 95)
    candles = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (100, 100, 94, 95), low, low, low)
    result = run(candles, "1:L,3:S", Exits(stop_loss=0.05), scripted, allow_short=True)
    done = result.orders[result.orders["status"] == "completed"]
    assert done["kind"].tolist() == ["market", "stop_loss", "market"]
    assert done["side"].tolist() == ["buy", "sell", "sell"]
    assert done["executed_time"].tolist() == list(result.equity.index[[2, 3, 4]])
    assert result.trades["exit_reason"].tolist() == ["stop_loss"]
    assert result.equity["position"].iloc[4] < 0  # short from bar 4, with its own exits
    assert result.orders["kind"].iloc[-1] == "stop_loss" and result.orders["status"].iloc[-1] == "canceled"


def test_a_reversal_signal_wins_over_an_exit_on_the_bar_it_fills(scripted):
    """The strategy reverses on bar 2's close; bar 3 falls through the old stop, but the live exits
    were canceled with the signal and the close fills at bar 3's open."""
    candles = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (100, 100, 90, 92), FLAT_BAR)
    result = run(candles, "1:L,2:S", Exits(stop_loss=0.05), scripted, allow_short=True)
    done = result.orders[result.orders["status"] == "completed"]
    assert done["kind"].tolist() == ["market", "market", "market"]
    assert done["price"].tolist()[1:] == pytest.approx([100 * (1 - S)] * 2, rel=1e-12)
    assert result.trades["exit_reason"].tolist()[0] == "signal"
    # the new short's stop (105.x) never triggers on a fall
    assert result.equity["position"].iloc[-1] < 0


def test_without_exits_a_plain_run_sends_no_exit_orders(scripted):
    candles = bars(FLAT_BAR, FLAT_BAR, (100, 100, 50, 60), (60, 60, 50, 55), FLAT_BAR)
    result = run(candles, "1:L", None, scripted)
    assert result.orders["kind"].tolist() == ["market"] and result.trades.empty


PROTECTING = """
    from atlas_pipeline.research.engine import Exits
    from atlas_pipeline.research.strategy_base import AtlasStrategy

    class Protecting(AtlasStrategy):
        '''Sets its own exits in code; long on bar 1.'''

        def __init__(self):
            super().__init__()
            self.configured = self.exits
            self.exits = Exits(stop_loss=0.05)

        def next(self):
            if len(self) == 2:
                self.target(1)
"""


def test_strategy_code_reads_and_sets_its_exits(scripted):
    write_strategy(scripted, "protecting", PROTECTING)
    candles = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (100, 100, 90, 92), FLAT_BAR)
    result = run_backtest(candles, BacktestSpec("protecting", commission=C, slippage=S), "1m", strategies_dir=scripted)
    assert result.trades["exit_reason"].tolist() == ["stop_loss"]
    assert only_exit(result)["price"] == pytest.approx(100 * (1 + S) * 0.95 * (1 - S), rel=1e-12)


# ---- sweeps and config -------------------------------------------------------------------------


def test_a_sweep_grids_over_exit_values(scripted):
    """``exits.<key>`` candidates run with those exits (the same result as a direct run), and a
    candidate's value overrides the pool's."""
    candles = bars(FLAT_BAR, FLAT_BAR, FLAT_BAR, (100, 100, 93, 94), (94, 95, 85, 86), FLAT_BAR)
    spec = BacktestSpec("scripted", {"plan": "1:L"}, commission=C, slippage=S, exits=Exits(take_profit=0.5))
    jobs = [BacktestJob({"exits.stop_loss": 0.05}), BacktestJob({"exits.stop_loss": 0.10}), BacktestJob({})]
    with BacktestPool(candles, spec, "1m", scripted, workers=1) as pool:
        outcomes = pool.run(jobs, keep_results=True)
    prices = [only_exit(o.result)["price"] if len(o.result.trades) else None for o in outcomes]
    assert prices[0] == pytest.approx(100 * (1 + S) * 0.95 * (1 - S), rel=1e-12)
    assert prices[1] == pytest.approx(100 * (1 + S) * 0.90 * (1 - S), rel=1e-12)
    assert prices[2] is None  # only the far take-profit: still open
    assert outcomes[0].result.parameters["exits"] == {"stop_loss": 0.05, "take_profit": 0.5}
    direct = run_backtest(candles, BacktestSpec("scripted", {"plan": "1:L"}, commission=C, slippage=S,
                                                 exits=Exits(stop_loss=0.10, take_profit=0.5)), "1m", strategies_dir=scripted)
    pd.testing.assert_frame_equal(outcomes[1].result.orders, direct.orders)


def test_exits_in_backtests_yaml(tmp_path):
    from atlas_pipeline.research_runs import backtest_spec, check_grid
    from atlas_pipeline_tests.test_backtests_config import GOOD, load

    settings = load(tmp_path, {"sma": {**GOOD, "exits": {"stop_loss": 0.05, "trailing_stop": 0.03}}}).get("sma")
    assert backtest_spec(settings).exits == Exits(stop_loss=0.05, trailing_stop=0.03)
    assert backtest_spec(load(tmp_path, {"sma": GOOD}).get("sma")).exits is None
    swept = load(tmp_path, {"sma": {**GOOD, "params": {}, "exits": {"take_profit": 0.1},
                                    "grid": {"fast": [5, 10], "exits.stop_loss": [0.02, 0.05]}}}).get("sma")
    assert {"fast": 5, "exits.stop_loss": 0.05} in swept.candidates() and len(swept.candidates()) == 4
    check_grid(swept, None)  # the strategy is asked only about its own params


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        ({"exits": {"stop_loss": 1.5}}, "backtests.sma.exits.stop_loss = 1.5", "less than 1"),
        ({"exits": {"take_profit": 0}}, "backtests.sma.exits.take_profit = 0", "greater than 0"),
        ({"exits": {"stoploss": 0.05}}, "backtests.sma.exits.stoploss = 0.05", "unknown key"),
        ({"exits": {"trailing_stop": "3%"}}, "backtests.sma.exits.trailing_stop = '3%'", "valid number"),
        ({"grid": {"exits.stop": [0.1]}}, "backtests.sma.grid.exits.stop", "unknown exit; exits are stop_loss"),
        ({"grid": {"exits.stop_loss": [0.1, 2]}}, "backtests.sma.grid.exits.stop_loss[1] = 2", "0 < value < 1"),
        ({"exits": {"stop_loss": 0.05}, "grid": {"exits.stop_loss": [0.1]}}, "backtests.sma.grid.exits.stop_loss",
         "both fixed in exits and swept in grid"),
    ],
)
def test_bad_exits_name_the_file_backtest_and_key(tmp_path, change, key, reason):
    from atlas_pipeline_tests.test_backtests_config import GOOD, load

    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {"sma": {**GOOD, "params": {}, **change}})
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'backtests.yaml'}: {key}"), message
    assert reason in message, message


def test_the_shipped_config_has_a_backtest_with_exits():
    from atlas_pipeline.config import load_exchanges_config
    from atlas_pipeline.config.backtests import load_backtests_config

    backtests = load_backtests_config(load_exchanges_config()).backtests.values()
    assert any(b.exits.exits() for b in backtests)
    assert any(name.startswith("exits.") for b in backtests for name in (b.grid or {}))


@needs_shared_candles
def test_a_walk_forward_grids_over_exit_values(eth_btc):
    """Each window's winner names its exit value, and its out-of-sample segment is that exit's
    backtest (warmed up on the train window, trading from the test start)."""
    import json

    from atlas_pipeline.research.engine.exits import with_params
    from atlas_pipeline.research.sweep import Objective, SweepFilters, expand_grid
    from atlas_pipeline.research.walkforward import WalkForwardPlan, run_walk_forward

    candles = eth_btc.iloc[: 6 * 288]
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30}, exits=Exits(take_profit=0.02))
    grid = expand_grid({"exits.stop_loss": [0.003, 0.02], "exits.trailing_stop": [0.004, 0.05]})
    with BacktestPool(candles, spec, "5m", workers=1) as pool:
        result = run_walk_forward(pool, grid, Objective("total_return"), SweepFilters(), WalkForwardPlan(3, 1))
    winners = result.windows.dropna(subset=["params"])
    assert len(winners) >= 2
    ms = candles["timestamp"]
    for row in winners.itertuples():
        params = json.loads(row.params)
        assert set(params) == {"exits.stop_loss", "exits.trailing_stop"}
        window = candles[(ms >= row.train_start.value // 10**6) & (ms < row.test_end.value // 10**6)]
        rerun = run_backtest(window.reset_index(drop=True), with_params(spec, params), "5m",
                             trade_from_ms=row.test_start.value // 10**6)
        assert rerun.parameters["exits"] == {"take_profit": 0.02, **{k.removeprefix("exits."): v for k, v in params.items()}}
        pd.testing.assert_frame_equal(result.segments[row.index].trades, rerun.trades, check_exact=True)
    assert any((result.segments[r.index].trades["exit_reason"] != "signal").any() for r in winners.itertuples())
