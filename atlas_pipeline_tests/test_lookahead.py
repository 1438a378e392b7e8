"""The lookahead check flags strategies that peek at future candles and passes the shipped ones.

Peeking strategies are written into a temporary strategies folder, never into ``strategies/``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.research.engine import BacktestSpec, StrategyError, run_backtest, run_backtest_with_signals
from atlas_pipeline.research.lookahead import DIFFERENCE_COLUMNS, LookaheadReport, _cut_bars, check_lookahead
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles

pytestmark = needs_shared_candles

SHIPPED = ["bollinger_breakout", "donchian_trend", "rsi_mean_reversion", "sma_crossover"]
WINDOW = 1_500  # bars the peeking strategies are checked on: the bias shows at once, keep it quick

PEEKS = {
    # (1) the plain mistake: reads the next close (guarded so the last bar does not IndexError)
    "peek_next_close": """
        from atlas_pipeline.research.strategy_base import FLAT, LONG, AtlasStrategy


        class PeekNextClose(AtlasStrategy):
            def next(self):
                if len(self.data) < self.data.buflen():
                    self.target(LONG if self.data.close[1] > self.data.close[0] else FLAT)
        """,
    # (2) subtler: an indicator on a forward-shifted line; no index into the future in `next`
    "forward_line": """
        import backtrader as bt

        from atlas_pipeline.research.strategy_base import FLAT, LONG, AtlasStrategy


        class ForwardLine(AtlasStrategy):
            def __init__(self):
                super().__init__()
                self.ahead = bt.ind.SMA(self.data.close(1), period=3)

            def next(self):
                self.target(LONG if self.ahead[0] > self.data.close[0] else FLAT)
        """,
    # (2b) the pandas habit: a centered rolling mean over the whole (preloaded) close column
    "centered_mean": """
        import pandas as pd

        from atlas_pipeline.research.strategy_base import FLAT, LONG, AtlasStrategy


        class CenteredMean(AtlasStrategy):
            def __init__(self):
                super().__init__()
                close = pd.Series(list(self.data.close.array))
                self.smooth = close.rolling(9, center=True, min_periods=1).mean().to_numpy()

            def next(self):
                bar = len(self.data) - 1
                self.target(LONG if self.data.close[0] < self.smooth[bar] else FLAT)
        """,
    # (3) a plain backtrader strategy (orders, no targets) that peeks
    "plain_peek": """
        import backtrader as bt


        class PlainPeek(bt.Strategy):
            def next(self):
                if len(self.data) == self.data.buflen():
                    return
                rises = self.data.close[1] > self.data.close[0]
                if rises and not self.position:
                    self.buy()
                elif not rises and self.position:
                    self.close()
        """,
}


def write_strategy(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture(scope="module")
def eth_btc() -> pd.DataFrame:
    return shared_candles("binance_ETH-BTC_5m")


@pytest.fixture(scope="module")
def peeks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("peeking_strategies")
    for name, body in PEEKS.items():
        write_strategy(folder, name, body)
    return folder


@pytest.fixture(scope="module")
def peek_reports(eth_btc, peeks) -> dict[str, LookaheadReport]:
    """One check per peeking strategy, shared by the tests below (each costs a second or two)."""
    return {
        name: check_lookahead(eth_btc, BacktestSpec(name), "5m", strategies_dir=peeks, max_bars=WINDOW)
        for name in PEEKS
    }


# ---- the shipped strategies look only back --------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_strategies_have_no_lookahead(name, eth_btc):
    report = check_lookahead(eth_btc, BacktestSpec(name), "5m")
    assert not report.biased, report.differences
    assert report.cuts == 12 and report.bars_checked > 12 * 100
    assert report.differences.empty and list(report.differences.columns) == list(DIFFERENCE_COLUMNS)
    assert report.message == "no lookahead: 12 truncated reruns, 0 signals changed"


@pytest.mark.parametrize("name", ["sma_crossover", "bollinger_breakout"])
def test_shipped_strategies_have_no_lookahead_long_short(name, eth_btc):
    report = check_lookahead(eth_btc, BacktestSpec(name, {"allow_short": True}), "5m", cuts=8)
    assert not report.biased and report.cuts == 8, report.differences


# ---- peeking strategies are flagged ----------------------------------------------------------


@pytest.mark.parametrize("name", list(PEEKS))
def test_peeking_strategies_are_flagged(name, peek_reports):
    report = peek_reports[name]
    assert report.biased and report.cuts == 12 and len(report.differences) > 0
    assert report.message.startswith("lookahead bias: signal at 2018-")
    assert (report.differences["time"] <= report.differences["cut"]).all()  # only bars the rerun saw
    assert (report.differences["full_signal"] != report.differences["truncated_signal"]).all()


def test_differences_point_at_the_bar_whose_decision_used_the_next_close(eth_btc, peek_reports):
    """peek_next_close decides on bar t from close[t+1] > close[t]; cut at t, it cannot look and
    keeps bar t-1's target. So the truncated run differs exactly on the cut bar, and only when
    the decisions on t and t-1 differ, which are the bars the check cuts at."""
    report = peek_reports["peek_next_close"]
    window = eth_btc.iloc[-WINDOW:].reset_index(drop=True)
    close = window["close"].to_numpy()
    decision = np.where(close[1:] > close[:-1], "LONG", "FLAT")  # decision[t] uses close[t + 1]
    times = pd.to_datetime(window["timestamp"], unit="ms", utc=True)
    bar = {t: i for i, t in enumerate(times)}

    diffs = report.differences
    assert (diffs["time"] == diffs["cut"]).all()  # the cut bar itself, nothing before it
    rows = [bar[t] for t in diffs["time"]]
    assert all(decision[i] != decision[i - 1] for i in rows)
    assert list(diffs["full_signal"]) == [decision[i] for i in rows]
    assert list(diffs["truncated_signal"]) == [decision[i - 1] for i in rows]
    assert len(diffs) == report.cuts == 12  # every cut lands on a change of decision, so every one
    first = diffs.iloc[0]
    stamp = first["time"].strftime("%Y-%m-%d %H:%M")
    assert report.message == (
        f"lookahead bias: signal at {stamp} changed from {first['full_signal']} to {first['truncated_signal']} "
        "when candles after it were removed (12 of 12 reruns, 12 signals changed)"
    )


def test_forward_looking_indicators_are_caught_on_most_cuts(peek_reports):
    for name in ("forward_line", "centered_mean"):
        assert peek_reports[name].differences["cut"].nunique() >= 6, name


def test_a_plain_strategy_is_compared_by_its_orders(peek_reports):
    report = peek_reports["plain_peek"]
    diffs = report.differences
    assert set(diffs["full_signal"]) <= {"buy", "sell"} and set(diffs["truncated_signal"]) == {""}
    assert (diffs["time"] == diffs["cut"]).all()
    assert "changed from buy to no order" in report.message or "changed from sell to no order" in report.message


# ---- signals, cuts, errors ----------------------------------------------------------------------


def test_recording_signals_does_not_change_the_backtest(eth_btc, peeks):
    for spec, folder in [
        (BacktestSpec("bollinger_breakout", {"allow_short": True}, fraction=0.9, slippage=0.001), None),
        (BacktestSpec("plain_peek", fraction=0.5), peeks),
    ]:
        plain = run_backtest(eth_btc, spec, "5m", strategies_dir=folder)
        recorded, signals = run_backtest_with_signals(eth_btc, spec, "5m", strategies_dir=folder)
        pd.testing.assert_frame_equal(recorded.equity, plain.equity, check_exact=True)
        pd.testing.assert_frame_equal(recorded.trades, plain.trades, check_exact=True)
        pd.testing.assert_frame_equal(recorded.orders, plain.orders, check_exact=True)
        assert recorded.parameters == plain.parameters and recorded.warmup_bars == plain.warmup_bars
        assert signals.index.equals(plain.equity.index)


def test_a_target_signal_is_the_position_held_from_the_next_bar(eth_btc):
    result, signals = run_backtest_with_signals(eth_btc, BacktestSpec("rsi_mean_reversion", fraction=0.95), "5m")
    assert set(signals) == {"LONG", "FLAT"}
    held = np.where(result.equity["position"].to_numpy() > 0, "LONG", "FLAT")
    assert (signals.to_numpy()[:-1] == held[1:]).all()


def test_an_order_signal_lists_the_sides_sent_on_the_bar(eth_btc, peeks):
    result, signals = run_backtest_with_signals(eth_btc, BacktestSpec("plain_peek"), "5m", strategies_dir=peeks)
    sent = signals[signals != ""]
    assert list(sent.index) == list(result.orders["created_time"])
    assert list(sent) == list(result.orders["side"])


def test_cuts_prefer_signal_changes_spread_evenly_then_fill_up():
    signals = np.array(["FLAT"] * 10 + ["LONG"] * 10 + ["FLAT"] * 10 + ["LONG"] * 70)
    assert list(_cut_bars(signals, 2)) == [10, 30]  # the first and last of the three changes
    assert list(_cut_bars(signals, 3)) == [10, 20, 30]
    topped = _cut_bars(signals, 6)
    assert {10, 20, 30} <= set(topped) and len(topped) == 6 and 99 not in topped  # never the last bar
    assert list(_cut_bars(np.array(["FLAT"] * 5), 10)) == [0, 1, 2, 3]


def test_strategy_errors_propagate(tmp_path, eth_btc):
    write_strategy(
        tmp_path,
        "fails_when_cut",
        """
        import backtrader as bt


        class FailsWhenCut(bt.Strategy):
            def next(self):
                if self.data.buflen() < 300 and len(self.data) == self.data.buflen():
                    raise RuntimeError("only short histories break me")
        """,
    )
    with pytest.raises(StrategyError, match=r"(?s)'fails_when_cut'.*RuntimeError: only short histories"):
        check_lookahead(eth_btc, BacktestSpec("fails_when_cut"), "5m", strategies_dir=tmp_path, max_bars=300)


def test_too_few_candles_for_the_full_run_is_an_error(eth_btc):
    with pytest.raises(ValueError, match="too few"):
        check_lookahead(eth_btc, BacktestSpec("sma_crossover"), "5m", max_bars=40)


def test_nothing_to_cut_is_said_not_checked(eth_btc):
    report = check_lookahead(eth_btc, BacktestSpec("sma_crossover"), "5m", max_bars=51)  # one bar after warm-up
    assert not report.biased and report.cuts == 0 and report.message.startswith("lookahead not checked")
