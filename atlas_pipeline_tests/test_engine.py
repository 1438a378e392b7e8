"""The engine against an independent numpy implementation of the same trading rules.

The reference below shares no code with the engine: it computes the SMA crossover from the
candles, fills each order at the next bar's open (with slippage), charges the commission on each
fill's value and sizes entries by the rules in ``atlas_pipeline.research.engine``'s docstring.
Final equity, the whole equity curve, every fill and every trade must agree to 1e-9 (relative).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.candles import split_by_day
from atlas_pipeline.research.engine import (
    BacktestSpec,
    StrategyError,
    bt_timeframe,
    run_backtest,
    run_backtest_from_store,
    run_backtest_with_signals,
)
from atlas_pipeline.research.results import EQUITY_COLUMNS, ORDER_COLUMNS, TRADE_COLUMNS
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles

pytestmark = needs_shared_candles

REL = 1e-9
ETH_BTC = "binance_ETH-BTC_5m"


# ---- the reference ---------------------------------------------------------------------------


def sma(values: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average with an exactly rounded window sum (NaN before ``period`` bars).

    Exact sums keep ties between the two averages ties, so the crossover decisions cannot differ
    from the engine's by a rounding accident."""
    out = np.full(len(values), np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(values, period)
    out[period - 1 :] = [math.fsum(w) / period for w in windows]
    return out


def crossings(fast: np.ndarray, slow: np.ndarray, first: int) -> np.ndarray:
    """+1 / -1 on bars where ``fast`` crosses ``slow`` up / down, else 0, from bar ``first``.

    A cross: the last non-zero difference before this bar had the other sign, and now the fast
    average is strictly on the new side (so touching and leaving on the same side is no cross)."""
    diff = fast - slow
    last_nonzero = np.full(len(diff), np.nan)
    carried = np.nan
    for i in range(first - 1, len(diff)):
        carried = diff[i] if diff[i] != 0 or np.isnan(carried) else carried
        last_nonzero[i] = carried
    signal = np.zeros(len(diff), dtype=np.int64)
    before = last_nonzero[first - 1 : -1]
    now = diff[first:]
    signal[first:] = np.where((before < 0) & (now > 0), 1, np.where((before > 0) & (now < 0), -1, 0))
    return signal


@dataclass
class Reference:
    equity: np.ndarray
    fills: list[dict] = field(default_factory=list)
    trades: list[dict] = field(default_factory=list)


def reference_sma_crossover(
    candles: pd.DataFrame, fast: int, slow: int, allow_short: bool, spec: BacktestSpec, trade_from: int = 0
) -> Reference:
    """``trade_from`` (a bar index): decisions before it are ignored, equity starts at it (or at
    the first decision bar, whichever is later)."""
    open_, close = candles["open"].to_numpy(), candles["close"].to_numpy()
    n, c, s = len(close), spec.commission, spec.slippage
    signal = crossings(sma(close, fast), sma(close, slow), slow)
    cash, pos = spec.cash, 0.0
    orders: list[float] = []  # signed sizes waiting for the next open
    start = max(slow, trade_from)
    ref = Reference(equity=np.empty(n - start))
    entry: dict | None = None
    for t in range(slow, n):
        for size in orders:  # fills at this bar's open
            price = open_[t] * (1 + s if size > 0 else 1 - s)
            fee = abs(size) * price * c
            cash -= size * price + fee
            assert cash >= 0, "the reference never runs out of cash"
            closing = pos != 0 and np.sign(size) != np.sign(pos)
            pos += size
            ref.fills.append({"bar": t, "size": size, "price": price, "fee": fee})
            if closing:
                sign = 1 if entry["size"] > 0 else -1
                gross = sign * abs(entry["size"]) * (price - entry["price"])
                fees = entry["fee"] + fee
                ref.trades.append(
                    {
                        "side": "long" if sign > 0 else "short",
                        "entry_bar": entry["bar"], "exit_bar": t, "size": abs(entry["size"]),
                        "entry_price": entry["price"], "exit_price": price,
                        "gross_pnl": gross, "fees": fees, "net_pnl": gross - fees,
                    }
                )
                entry = None
            else:
                entry = ref.fills[-1]
        orders = []
        if t >= start:
            ref.equity[t - start] = cash + pos * close[t]
        want = {1: 1, -1: -1 if allow_short else 0}.get(int(signal[t]))
        held = int(np.sign(pos))
        if want is None or want == held or t == n - 1 or t < trade_from:
            continue
        if held:
            orders.append(-pos)
        if want:
            size = spec.fraction * (cash + pos * close[t]) / close[t]
            if want > 0:
                # a short's buy-back is priced at the gapped open too (docs/trading-model.md, Sizing)
                available = cash + min(pos, 0.0) * close[t] * (1 + s) * (1 + c) * (1 + spec.cushion)
                size = min(size, available / (close[t] * (1 + s) * (1 + c) * (1 + spec.cushion)))
            orders.append(want * size)
    return ref


# ---- comparing ---------------------------------------------------------------------------------


def assert_matches_reference(
    candles: pd.DataFrame, fast: int, slow: int, allow_short: bool, spec: BacktestSpec, trade_from: int | None = None
):
    """``trade_from`` (a bar index) runs the engine with that bar's open time as ``trade_from_ms``."""
    trade_from_ms = None if trade_from is None else int(candles["timestamp"].iloc[trade_from])
    result = run_backtest(candles, spec, "5m", trade_from_ms=trade_from_ms)
    ref = reference_sma_crossover(candles, fast, slow, allow_short, spec, trade_from or 0)
    times = pd.to_datetime(candles["timestamp"], unit="ms", utc=True)

    assert result.warmup_bars == max(slow, trade_from or 0)
    assert result.equity.index[0] == times[result.warmup_bars]
    np.testing.assert_allclose(result.equity["equity"].to_numpy(), ref.equity, rtol=REL, atol=0)
    assert result.equity["equity"].iloc[-1] == pytest.approx(ref.equity[-1], rel=REL)

    orders = result.orders
    assert (orders["status"] == "completed").all(), orders["status"].value_counts()
    assert len(orders) == len(ref.fills)
    np.testing.assert_allclose(orders["price"], [f["price"] for f in ref.fills], rtol=REL)
    np.testing.assert_allclose(orders["size"], [abs(f["size"]) for f in ref.fills], rtol=REL)
    np.testing.assert_allclose(orders["fee"], [f["fee"] for f in ref.fills], rtol=REL)
    assert list(orders["side"]) == ["buy" if f["size"] > 0 else "sell" for f in ref.fills]
    assert list(orders["executed_time"]) == [times[f["bar"]] for f in ref.fills]
    assert list(orders["created_time"]) == [times[f["bar"] - 1] for f in ref.fills]

    trades = result.trades
    assert len(trades) == len(ref.trades) > 0
    expected = pd.DataFrame(ref.trades)
    assert list(trades["side"]) == list(expected["side"])
    assert list(trades["entry_time"]) == list(times[expected["entry_bar"]])
    assert list(trades["exit_time"]) == list(times[expected["exit_bar"]])
    assert list(trades["bars_held"]) == list(expected["exit_bar"] - expected["entry_bar"])
    for column in ("size", "entry_price", "exit_price", "gross_pnl", "fees", "net_pnl"):
        np.testing.assert_allclose(trades[column], expected[column], rtol=REL, err_msg=column)
    np.testing.assert_allclose(
        trades["return_pct"], expected["net_pnl"] / (expected["size"] * expected["entry_price"]), rtol=REL
    )
    return result, ref


def synthetic_candles(n: int = 4000, seed: int = 7) -> pd.DataFrame:
    """A random walk whose opens gap away from the previous close (up to ~0.3 %), so a fill at
    the next open and one at the signal bar's close give different numbers."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 2e-3, n)))
    open_ = np.concatenate(([100.0], close[:-1])) * (1 + rng.normal(0, 1e-3, n))
    spread = 1 + rng.random(n) * 2e-3
    return pd.DataFrame(
        {
            "timestamp": 1_700_000_000_000 + 300_000 * np.arange(n, dtype=np.int64),
            "open": open_,
            "high": np.maximum(open_, close) * spread,
            "low": np.minimum(open_, close) / spread,
            "close": close,
            "volume": rng.random(n),
        }
    )


@pytest.fixture(scope="module")
def eth_btc() -> pd.DataFrame:
    return shared_candles(ETH_BTC)


@pytest.mark.parametrize("allow_short", [False, True], ids=["long-only", "long-short"])
def test_sma_crossover_equals_numpy_on_real_candles(eth_btc, allow_short):
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30, "allow_short": allow_short}, fraction=0.9,
                        commission=0.001, slippage=0.0005)
    result, _ = assert_matches_reference(eth_btc, 10, 30, allow_short, spec)
    assert set(result.trades["side"]) == ({"long", "short"} if allow_short else {"long"})


@pytest.mark.parametrize("allow_short", [False, True], ids=["long-only", "long-short"])
def test_sma_crossover_equals_numpy_on_synthetic_candles_all_in(allow_short):
    """fraction 1: every buy is sized by the cash cap (fees, slippage and cushion must fit)."""
    spec = BacktestSpec("sma_crossover", {"fast": 5, "slow": 20, "allow_short": allow_short}, fraction=1.0,
                        commission=0.001, slippage=0.001)
    candles = synthetic_candles()
    result, _ = assert_matches_reference(candles, 5, 20, allow_short, spec)
    assert result.orders["status"].eq("completed").all()
    longs = result.trades[result.trades["side"] == "long"]
    assert (longs["size"] * longs["entry_price"] * 1.001 < result.equity["equity"].max()).all()


def test_defaults_equal_numpy(eth_btc):
    """The shipped defaults (fast 20, slow 50, fraction 1, 0.1 % fees, no slippage)."""
    assert_matches_reference(eth_btc, 20, 50, False, BacktestSpec("sma_crossover"))


# ---- trade from ----------------------------------------------------------------------------------


def bar_ms(candles: pd.DataFrame, bar: int) -> int:
    return int(candles["timestamp"].iloc[bar])


@pytest.mark.parametrize("allow_short", [False, True], ids=["long-only", "long-short"])
@pytest.mark.parametrize("trade_from", [10, 30, 500, 2777])
def test_trade_from_equals_numpy(eth_btc, allow_short, trade_from):
    """The reference ignores every decision before the trade-from bar; 10 is inside the warm-up
    (equity starts at the first decision bar, 30), 30 is the first decision bar."""
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30, "allow_short": allow_short}, fraction=0.9,
                        slippage=0.0005)
    result, _ = assert_matches_reference(eth_btc, 10, 30, allow_short, spec, trade_from)
    start = pd.Timestamp(bar_ms(eth_btc, max(30, trade_from)), unit="ms", tz="UTC")
    assert (result.orders["created_time"] >= start).all()
    assert (result.trades["entry_time"] > start).all()
    first = result.equity.iloc[0]
    assert (first["equity"], first["cash"], first["position"]) == (spec.cash, spec.cash, 0.0)
    assert result.bars + result.warmup_bars == len(eth_btc)
    np.testing.assert_array_equal(result.close.to_numpy(), eth_btc["close"].to_numpy()[result.warmup_bars :])


def held_bars(result, candles: pd.DataFrame) -> np.ndarray:
    """Bar indices (in ``candles``) where ``result`` holds a position after the bar's fills."""
    return result.warmup_bars + np.flatnonzero(result.equity["position"].to_numpy() != 0)


def test_trade_from_against_the_full_history_run(eth_btc):
    """Long-only SMA crossover: the trade-from run takes exactly the full run's trades that start
    after the trade-from bar. Where the full run is flat there, every later number is the full
    run's scaled by cash / its equity at that bar (sizes are a fraction of equity); where it is
    long, the trade-from run stays flat through that trade (the rule: flat at trade-from, then the
    next target() call, here the next upward cross) and enters with the full run's next entry."""
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30}, fraction=0.9, slippage=0.0005)
    full = run_backtest(eth_btc, spec, "5m")
    held = set(held_bars(full, eth_btc))
    flat_at = next(b for b in range(1000, 2000) if b not in held and b - 1 not in held)
    long_at = next(b for b in range(1000, 2000) if b in held and b - 1 in held)
    times = pd.to_datetime(eth_btc["timestamp"], unit="ms", utc=True)
    for bar in (flat_at, long_at):
        part = run_backtest(eth_btc, spec, "5m", trade_from_ms=bar_ms(eth_btc, bar))
        assert part.warmup_bars == bar and part.equity.index[0] == times[bar]
        later = full.trades[full.trades["entry_time"] > times[bar]].reset_index(drop=True)
        assert len(part.trades) == len(later) > 10
        for column in ("entry_time", "exit_time", "side", "bars_held"):
            assert list(part.trades[column]) == list(later[column]), column
        for column in ("entry_price", "exit_price", "return_pct"):  # backtrader averages prices: ulps
            np.testing.assert_allclose(part.trades[column], later[column], rtol=1e-9, err_msg=column)
        sent = full.orders[full.orders["created_time"] >= times[bar]].reset_index(drop=True)
        if bar == flat_at:
            pd.testing.assert_frame_equal(part.orders[["created_time", "executed_time", "side", "price", "status"]],
                                          sent[["created_time", "executed_time", "side", "price", "status"]])
            scale = spec.cash / full.equity["equity"].loc[times[bar]]
            np.testing.assert_allclose(part.equity["equity"], full.equity["equity"].loc[times[bar]:] * scale, rtol=1e-9)
            np.testing.assert_allclose(part.orders["size"], sent["size"] * scale, rtol=1e-9)
        else:
            exit_time = full.trades[full.trades["entry_time"] <= times[bar]]["exit_time"].iloc[-1]
            assert exit_time > times[bar]  # the full run's trade straddling the trade-from bar
            assert (part.equity["position"].loc[:exit_time] == 0).all()
            assert part.orders["created_time"].iloc[0] > exit_time
            assert list(part.orders["created_time"]) == list(sent["created_time"].iloc[1:])  # all but its exit


def test_trade_from_at_or_before_the_warm_up_changes_nothing(eth_btc):
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30, "allow_short": True}, fraction=0.9)
    plain = run_backtest(eth_btc, spec, "5m")
    for trade_from_ms in (0, bar_ms(eth_btc, 0), bar_ms(eth_btc, 29) + 1, bar_ms(eth_btc, 30)):
        same = run_backtest(eth_btc, spec, "5m", trade_from_ms=trade_from_ms)
        assert same.warmup_bars == plain.warmup_bars == 30
        pd.testing.assert_frame_equal(same.equity, plain.equity, check_exact=True)
        pd.testing.assert_frame_equal(same.orders, plain.orders, check_exact=True)
        pd.testing.assert_frame_equal(same.trades, plain.trades, check_exact=True)


def test_trade_from_between_candles_starts_at_the_next_one(eth_btc):
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30})
    between = run_backtest(eth_btc, spec, "5m", trade_from_ms=bar_ms(eth_btc, 699) + 1)
    on = run_backtest(eth_btc, spec, "5m", trade_from_ms=bar_ms(eth_btc, 700))
    assert between.warmup_bars == on.warmup_bars == 700
    pd.testing.assert_frame_equal(between.equity, on.equity, check_exact=True)
    pd.testing.assert_frame_equal(between.orders, on.orders, check_exact=True)


def test_trade_from_after_the_last_candle_is_refused(eth_btc):
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30})
    last = bar_ms(eth_btc, -1)
    with pytest.raises(ValueError, match=r"trade_from 2018-.* is after the last candle \(2018-.*\): no bar is left"):
        run_backtest(eth_btc, spec, "5m", trade_from_ms=last + 1)
    only_last = run_backtest(eth_btc, spec, "5m", trade_from_ms=last)  # one bar: marked, nothing sent
    assert only_last.bars == 1 and only_last.orders.empty and only_last.equity["equity"].iloc[0] == spec.cash


def test_trade_from_holds_back_plain_strategies_and_order_target(tmp_path, eth_btc):
    """buy, sell, close and order_target_* all create nothing before the trade-from bar."""
    write_strategy(
        tmp_path,
        "targeter",
        """
        import backtrader as bt


        class Targeter(bt.Strategy):
            def next(self):
                bar = len(self) - 1
                if bar in (5, 12):
                    self.order_target_percent(target=0.5)
                elif bar in (8, 20):
                    self.close()
                elif bar == 9:
                    self.sell()
        """,
    )
    spec = BacktestSpec("targeter")
    everything = run_backtest(eth_btc, spec, "5m", strategies_dir=tmp_path)
    times = pd.to_datetime(eth_btc["timestamp"], unit="ms", utc=True)
    assert list(everything.orders["created_time"]) == [times[b] for b in (5, 8, 9, 12, 20)]
    late = run_backtest(eth_btc, spec, "5m", strategies_dir=tmp_path, trade_from_ms=bar_ms(eth_btc, 10))
    assert late.warmup_bars == 10
    assert list(late.orders["created_time"]) == [times[12], times[20]]
    assert list(late.orders["side"]) == ["buy", "sell"] and late.orders["status"].eq("completed").all()
    # order_target_percent sizes itself (whole units of 50 % of the value at bar 12's close)
    assert late.orders["size"].iloc[0] == math.floor(0.5 * 10_000 / eth_btc["close"].iloc[12])


def test_trade_from_signals_start_with_the_equity(eth_btc):
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30})
    result, signals = run_backtest_with_signals(eth_btc, spec, "5m", trade_from_ms=bar_ms(eth_btc, 400))
    _, full_signals = run_backtest_with_signals(eth_btc, spec, "5m")
    assert signals.index.equals(result.equity.index) and result.warmup_bars == 400
    assert signals.equals(full_signals.loc[signals.index[0]:])  # the strategy's decisions do not change


# ---- fees -------------------------------------------------------------------------------------


def test_fee_of_a_tenth_percent_per_side_costs_exactly_that(eth_btc):
    params = {"fast": 10, "slow": 30}
    paid = run_backtest(eth_btc, BacktestSpec("sma_crossover", params, fraction=0.5, commission=0.001), "5m")
    free = run_backtest(eth_btc, BacktestSpec("sma_crossover", params, fraction=0.5, commission=0.0), "5m")
    a, b = paid.orders, free.orders
    # same trades: same fills at the same times and prices; only sizes follow the equity
    assert len(a) > 10 and list(a["executed_time"]) == list(b["executed_time"])
    assert list(a["price"]) == list(b["price"]) and list(a["side"]) == list(b["side"])
    np.testing.assert_allclose(a["fee"], 0.001 * a["value"], rtol=1e-12)
    np.testing.assert_allclose(a["value"], a["size"] * a["price"], rtol=1e-12)
    assert (b["fee"] == 0).all()
    trades = paid.trades
    np.testing.assert_allclose(
        trades["fees"], 0.001 * trades["size"] * (trades["entry_price"] + trades["exit_price"]), rtol=1e-12
    )
    np.testing.assert_allclose(trades["net_pnl"], trades["gross_pnl"] - trades["fees"], rtol=1e-9, atol=1e-9)
    # the first trade is sized from the same starting cash in both runs: fees are the whole gap
    first_paid, first_free = paid.trades.iloc[0], free.trades.iloc[0]
    assert first_paid["size"] == first_free["size"]
    assert first_free["net_pnl"] - first_paid["net_pnl"] == pytest.approx(first_paid["fees"], rel=1e-12)
    # and the fees leave the account once: cash = start - signed fill values - fees
    signed = np.where(a["side"] == "buy", 1.0, -1.0) * a["value"]
    last = paid.equity.iloc[-1]
    assert last["cash"] == pytest.approx(10_000 - signed.sum() - a["fee"].sum(), rel=1e-12)


# ---- warm-up, end of data, rejections -----------------------------------------------------------


def test_warmup_bars_are_excluded(eth_btc):
    result = run_backtest(eth_btc, BacktestSpec("sma_crossover", {"fast": 10, "slow": 30}), "5m")
    fast_ready = sma(eth_btc["close"].to_numpy(), 30)
    # the crossover needs both averages on this bar and the one before: first at bar `slow`
    first = int(np.flatnonzero(~np.isnan(fast_ready))[0]) + 1
    assert result.warmup_bars == first == 30
    times = pd.to_datetime(eth_btc["timestamp"], unit="ms", utc=True)
    assert result.equity.index[0] == times[first]
    assert result.bars == len(eth_btc) - first
    assert result.close.index.equals(result.equity.index)
    np.testing.assert_array_equal(result.close.to_numpy(), eth_btc["close"].to_numpy()[first:])
    assert list(result.equity.columns) == list(EQUITY_COLUMNS)
    assert result.equity.index.name == "time" and str(result.equity.index.tz) == "UTC"


def test_open_position_at_the_end_is_marked_to_market_not_closed(eth_btc):
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30}, fraction=0.5)
    whole = run_backtest(eth_btc, spec, "5m")
    # cut the candles two bars into the third trade (indicators only look back: same decisions)
    entry = whole.trades["entry_time"].iloc[2].value // 10**6
    cut = int(np.searchsorted(eth_btc["timestamp"], entry)) + 3
    candles = eth_btc.iloc[:cut].reset_index(drop=True)
    result = run_backtest(candles, spec, "5m")
    last = result.equity.iloc[-1]
    assert last["position"] == whole.trades["size"].iloc[2]
    assert last["equity"] == pytest.approx(last["cash"] + last["position"] * candles["close"].iloc[-1], rel=1e-15)
    completed = result.orders[result.orders["status"] == "completed"]
    assert len(result.trades) == len(completed) // 2  # the open entry is an order, not a trade
    assert list(result.orders.columns) == list(ORDER_COLUMNS)
    assert list(result.trades.columns) == list(TRADE_COLUMNS)


def test_a_gap_past_the_cushion_is_a_margin_order_then_a_retry():
    """All-in, the next open jumps 5 %: the buy no longer fits the cash; it is reported as
    'margin' and sent again at once, sized on the refusal bar, and fills one bar later."""
    close = np.array([10, 9, 8, 7, 6, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], dtype=float)
    open_ = np.concatenate(([10.0], close[:-1]))
    cross_bar = 7  # sma(2) crosses above sma(4) on the close of bar 7
    open_[cross_bar + 1] = close[cross_bar] * 1.05
    candles = pd.DataFrame(
        {
            "timestamp": 1_700_000_000_000 + 60_000 * np.arange(len(close), dtype=np.int64),
            "open": open_, "high": np.maximum(open_, close), "low": np.minimum(open_, close),
            "close": close, "volume": 1.0,
        }
    )
    result = run_backtest(candles, BacktestSpec("sma_crossover", {"fast": 2, "slow": 4}, fraction=1.0), "1m")
    orders = result.orders
    assert list(orders["status"]) == ["margin", "completed"]
    times = pd.to_datetime(candles["timestamp"], unit="ms", utc=True)
    assert orders["created_time"].tolist() == [times[cross_bar], times[cross_bar + 1]]
    assert orders["executed_time"].iloc[1] == times[cross_bar + 2]
    assert orders["size"].iloc[1] == pytest.approx(10_000 / (close[cross_bar + 1] * 1.001 * 1.01), rel=1e-12)
    assert math.isnan(orders["price"].iloc[0]) and orders["fee"].iloc[0] == 0


def test_no_order_is_refused_in_normal_runs(eth_btc):
    for fraction in (1.0, 0.95):
        for allow_short in (False, True):
            spec = BacktestSpec("sma_crossover", {"allow_short": allow_short}, fraction=fraction, slippage=0.001)
            statuses = run_backtest(eth_btc, spec, "5m").orders["status"]
            assert statuses.eq("completed").all(), statuses.value_counts()


def test_from_store_equals_in_memory(tmp_path, eth_btc):
    store = CandleStore(tmp_path / "atlas")
    store.write_days("binance", "ETH/BTC", "5m", split_by_day(eth_btc), complete=True)
    spec = BacktestSpec("sma_crossover", {"fast": 10, "slow": 30})
    start, end = pd.Timestamp("2018-01-12", tz="UTC"), pd.Timestamp("2018-01-20", tz="UTC")
    stored = run_backtest_from_store(store, "binance", "ETH/BTC", "5m", start, end, spec)
    window = eth_btc[(eth_btc["timestamp"] >= start.value // 10**6) & (eth_btc["timestamp"] < end.value // 10**6)]
    direct = run_backtest(window, spec, "5m")
    pd.testing.assert_frame_equal(stored.equity, direct.equity)
    pd.testing.assert_frame_equal(stored.trades, direct.trades)
    with pytest.raises(ValueError, match="no stored"):
        run_backtest_from_store(store, "binance", "ETH/BTC", "5m", "2030-01-01", "2030-02-01", spec)


def test_bad_spec_values_are_refused():
    with pytest.raises(ValueError, match="fraction=1.5"):
        BacktestSpec("sma_crossover", fraction=1.5)


# ---- bad strategy code -------------------------------------------------------------------------


def write_strategy(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_strategy_that_raises_in_next_gives_its_own_traceback(tmp_path, eth_btc):
    path = write_strategy(
        tmp_path,
        "explodes",
        """
        import backtrader as bt


        def divide(a, b):
            return a / b


        class Explodes(bt.Strategy):
            def next(self):
                if len(self) == 100:
                    divide(1, 0)  # the author's bug
        """,
    )
    with pytest.raises(StrategyError) as caught:
        run_backtest(eth_btc, BacktestSpec("explodes"), "5m", strategies_dir=tmp_path)
    message = str(caught.value)
    assert "'explodes'" in message and "ZeroDivisionError" in message
    assert f'File "{path}", line 12, in next' in message and "divide(1, 0)  # the author's bug" in message
    assert f'File "{path}", line 6, in divide' in message and "return a / b" in message
    assert "backtrader" not in message.split("traceback", 1)[1]  # only the strategy's own frames
    assert caught.value.strategy == "explodes"


def test_a_strategy_with_a_syntax_error(tmp_path, eth_btc):
    path = write_strategy(tmp_path, "broken", "import backtrader as bt\n\nclass Broken(bt.Strategy)\n    pass\n")
    with pytest.raises(StrategyError) as caught:
        run_backtest(eth_btc, BacktestSpec("broken"), "5m", strategies_dir=tmp_path)
    message = str(caught.value)
    assert "'broken'" in message and "SyntaxError" in message
    assert f'File "{path}", line 3' in message and "class Broken(bt.Strategy)" in message


def test_a_strategy_whose_import_fails(tmp_path, eth_btc):
    write_strategy(tmp_path, "needs_pkg", "import not_installed_anywhere\n")
    with pytest.raises(StrategyError, match=r"(?s)'needs_pkg'.*ModuleNotFoundError.*line 1, in <module>"):
        run_backtest(eth_btc, BacktestSpec("needs_pkg"), "5m", strategies_dir=tmp_path)


def test_a_strategy_rejecting_its_params_in_init(eth_btc):
    with pytest.raises(StrategyError, match=r"(?s)'sma_crossover'.*need 1 <= fast < slow.*sma_crossover.py"):
        run_backtest(eth_btc, BacktestSpec("sma_crossover", {"fast": 50, "slow": 20}), "5m")


def test_an_unknown_strategy_lists_the_available_ones(tmp_path, eth_btc):
    write_strategy(tmp_path, "alpha", "import backtrader as bt\nclass A(bt.Strategy):\n    pass\n")
    with pytest.raises(StrategyError) as caught:
        run_backtest(eth_btc, BacktestSpec("nope"), "5m", strategies_dir=tmp_path)
    message = str(caught.value)
    assert "'nope'" in message and str(tmp_path / "nope.py") in message and "available: alpha" in message


def test_unknown_and_mistyped_params(eth_btc):
    with pytest.raises(StrategyError) as caught:
        run_backtest(eth_btc, BacktestSpec("sma_crossover", {"fats": 10}), "5m")
    message = str(caught.value)
    assert "'sma_crossover'" in message and "unknown param(s) fats" in message
    assert "known params: allow_short=False, fast=20, slow=50" in message
    with pytest.raises(StrategyError, match="param fast='10' must be int"):
        run_backtest(eth_btc, BacktestSpec("sma_crossover", {"fast": "10"}), "5m")
    with pytest.raises(StrategyError, match="param allow_short=1 must be bool"):
        run_backtest(eth_btc, BacktestSpec("sma_crossover", {"allow_short": 1}), "5m")


def test_a_file_must_define_exactly_one_strategy(tmp_path, eth_btc):
    write_strategy(
        tmp_path, "two", "import backtrader as bt\nclass A(bt.Strategy):\n    pass\nclass B(bt.Strategy):\n    pass\n"
    )
    with pytest.raises(StrategyError, match=r"exactly one backtrader Strategy subclass \(found: A, B\)"):
        run_backtest(eth_btc, BacktestSpec("two"), "5m", strategies_dir=tmp_path)


def test_plain_backtrader_strategies_use_the_engine_sizer(tmp_path, eth_btc):
    """A strategy not built on AtlasStrategy still gets fraction sizing, fees and a 'canceled'
    row for an order left unfilled at the end."""
    write_strategy(
        tmp_path,
        "plain",
        """
        import backtrader as bt


        class Plain(bt.Strategy):
            def next(self):
                if len(self) == 10:
                    self.buy()
                elif len(self) == 20:
                    self.close()
                elif len(self) == len(self.data.close.array):
                    self.buy()  # never fills
        """,
    )
    result = run_backtest(eth_btc, BacktestSpec("plain", fraction=0.5), "5m", strategies_dir=tmp_path)
    assert list(result.orders["status"]) == ["completed", "completed", "canceled"]
    first = result.orders.iloc[0]
    assert first["size"] == pytest.approx(0.5 * 10_000 / eth_btc["close"].iloc[9], rel=1e-12)
    assert first["price"] == eth_btc["open"].iloc[10]
    assert len(result.trades) == 1 and result.trades["bars_held"].iloc[0] == 10
    assert result.warmup_bars == 0


def test_too_few_candles_for_the_warm_up(eth_btc):
    with pytest.raises(ValueError, match="30 candles are too few for strategy 'sma_crossover'.*50 bars of warm-up"):
        run_backtest(eth_btc.iloc[:30], BacktestSpec("sma_crossover"), "5m")


def test_parameters_record_what_ran(eth_btc):
    result = run_backtest(eth_btc.iloc[:500], BacktestSpec("sma_crossover", {"fast": 5}, slippage=0.001), "5m")
    assert result.parameters == {
        "strategy": "sma_crossover",
        "params": {"allow_short": False, "fast": 5, "slow": 50},
        "timeframe": "5m", "cash": 10_000.0, "fraction": 1.0, "commission": 0.001, "slippage": 0.001,
        "cushion": 0.01, "exits": {},
    }


def test_candles_must_follow_the_convention(eth_btc):
    spec = BacktestSpec("sma_crossover")
    as_datetimes = eth_btc.assign(timestamp=pd.to_datetime(eth_btc["timestamp"], unit="ms", utc=True))
    with pytest.raises(ValueError, match="integer ms"):
        run_backtest(as_datetimes, spec, "5m")
    with pytest.raises(ValueError, match="strictly increasing"):
        run_backtest(eth_btc.iloc[::-1], spec, "5m")
    with pytest.raises(ValueError, match="lack column"):
        run_backtest(eth_btc.drop(columns="volume"), spec, "5m")


@pytest.mark.parametrize(
    "timeframe, expected",
    [("30s", (bt.TimeFrame.Seconds, 30)), ("5m", (bt.TimeFrame.Minutes, 5)), ("4h", (bt.TimeFrame.Minutes, 240)),
     ("1d", (bt.TimeFrame.Days, 1))],
)
def test_the_feed_gets_the_real_timeframe(timeframe, expected):
    assert bt_timeframe(timeframe) == expected


SCRIPTED = """
    from atlas_pipeline.research.strategy_base import AtlasStrategy

    class Scripted(AtlasStrategy):
        '''Targets by bar index: ``plan`` is "bar:L|F|S,...".'''

        params = (("plan", ""),)

        def __init__(self):
            super().__init__()
            steps = (item.split(":") for item in self.p.plan.split(",") if item)
            self.plan = {int(bar): {"L": 1, "F": 0, "S": -1}[side] for bar, side in steps}

        def next(self):
            if len(self) - 1 in self.plan:
                self.target(self.plan[len(self) - 1])
"""


def test_a_reversal_after_a_gap_inside_the_cushion_fills_on_the_first_bar(tmp_path):
    """Short -> long, all in, the next open 0.9 % above the signal close: the buy-back and the buy
    both fit (the cap prices the buy-back at the gapped open too), so the buy fills on the bar
    after the signal, not one later after a 'margin' refusal."""
    write_strategy(tmp_path, "scripted", SCRIPTED)
    close = np.array([100, 100, 99, 98, 97, 96, 95, 95, 96, 97], dtype=float)
    open_ = np.concatenate(([100.0], close[:-1]))
    signal_bar = 6
    open_[signal_bar + 1] = close[signal_bar] * 1.009
    candles = pd.DataFrame(
        {
            "timestamp": 1_700_000_000_000 + 60_000 * np.arange(len(close), dtype=np.int64),
            "open": open_, "high": np.maximum(open_, close), "low": np.minimum(open_, close),
            "close": close, "volume": 1.0,
        }
    )
    spec = BacktestSpec("scripted", {"plan": f"1:S,{signal_bar}:L", "allow_short": True}, fraction=1.0)
    orders = run_backtest(candles, spec, "1m", strategies_dir=tmp_path).orders
    times = pd.to_datetime(candles["timestamp"], unit="ms", utc=True)
    assert list(orders["status"]) == ["completed"] * 3, orders
    assert list(orders["side"]) == ["sell", "buy", "buy"]
    assert list(orders["executed_time"]) == [times[2], times[signal_bar + 1], times[signal_bar + 1]]
    # sized by the documented cap, from the cash and position at the signal bar
    short = orders["size"].iloc[0]
    cash = 10_000 + short * open_[2] * (1 - 0.001)
    k = 1.001 * 1.01
    cap = (cash - short * close[signal_bar] * k) / (close[signal_bar] * k)
    expected = min((cash - short * close[signal_bar]) / close[signal_bar], cap)
    assert orders["size"].iloc[2] == pytest.approx(expected, rel=1e-12)
