"""The backtest engine: one strategy on one market's candles through backtrader.

Rules (each one is pinned by ``atlas_pipeline_tests/test_engine.py`` against an independent
numpy implementation):

- **Fills.** Orders are market orders. An order created on bar t (in ``next``, after bar t's
  close) fills at bar t+1's **open**, moved against the order by ``slippage`` (buy at
  ``open * (1 + slippage)``, sell at ``open * (1 - slippage)``, even outside the bar's range:
  backtrader's ``slip_open``/``slip_match``/``slip_out``). Orders are never sent on the last bar
  (no next open exists); an order a plain backtrader strategy leaves unfilled at the end is
  reported ``canceled``.
- **Fees.** ``commission`` is a fraction of each fill's value (``|size| * price``), charged on
  every fill, entry and exit (``CommInfoBase`` with ``commtype=COMM_PERC``, ``percabs=True``,
  ``stocklike=True``; backtrader's own default ``percabs=False`` would read 0.001 as 0.001 %).
- **Sizing.** Sizes are fractional. An opening order sent on bar t is for
  ``fraction * equity_t / close_t`` units, where ``equity_t = cash_t + position_t * close_t``.
  A buy is capped so that it still fits the cash if the next open gaps up by ``cushion``:
  ``size <= available / (close_t * (1 + slippage) * (1 + commission) * (1 + cushion))`` with
  ``available = cash_t`` when flat, and ``cash_t`` minus the cost of buying back the short at
  that gapped open too when reversing
  (``cash_t + position_t * close_t * (1 + slippage) * (1 + commission) * (1 + cushion)``): every
  order of the bar fits a gap of up to ``cushion`` (docs/trading-model.md, "Sizing"). The cap
  only binds when ``fraction`` is near 1 (``fraction > ~0.989`` with the default commission and
  cushion and no slippage). Shorts are not capped (stock-like short selling: the proceeds are
  cash). Cash is checked at the fill,
  with the real price (``checksubmit=False``); if a gap beyond the cushion still makes a buy
  unaffordable, backtrader refuses it, it is reported with status ``margin`` in ``orders`` (never
  dropped silently), and ``AtlasStrategy`` retries at once, sized on the bar of the refusal.
- **Reversals** are two orders on the same bar: close, then open; each is one trade.
- **Exits** (``spec.exits``: stop-loss, take-profit, trailing stop) are backtrader Stop /
  StopTrail / Limit orders in one OCO group per position, live from the bar after the entry
  fill (``engine.exits``; conventions in docs/trading-model.md). Without exits nothing changes.
- **Warm-up.** Bars before the strategy's first ``next`` (before every indicator has a value)
  are not in ``equity``/``close``; their count is ``warmup_bars``.
- **Trade from** (``trade_from_ms``, optional). Bars with open time before it are warm-up too:
  the strategy's ``next`` runs on them (indicators and its own state evolve) but every order it
  creates there is dropped: ``buy``/``sell`` (and so ``close`` and ``order_target_*``) return
  None, and nothing reaches the broker or ``orders``. The position is therefore flat with
  ``spec.cash`` at the first bar with open time >= ``trade_from_ms`` (the trade-from bar), and
  from that bar on it follows the strategy: an ``AtlasStrategy`` moves to its target at its
  next ``target()`` call on or after that bar, which for the shipped strategies is their next
  signal (a target set during warm-up is not acted on by itself). ``equity``/``close`` start at
  ``max(first decision bar, trade-from bar)``, and ``warmup_bars`` is that bar's index. A
  ``trade_from_ms`` after the last candle's open time is a ``ValueError``; without it (None) the
  run is unchanged, nothing is added per bar.
- **End of data.** A position still open after the last bar is marked to market only: it is in
  the last equity (at the last close, no exit fee) but not in ``trades``, which holds closed
  trades only. Force-closing would invent a fill at a close price and a fee no order paid.
- **Equity** of a bar is ``cash + position * close`` after that bar's fills, exactly the
  broker's value; it is rebuilt after the run from the fills instead of sampled every bar.
- **Indicators.** The strategy's plotted indicator lines over the same bars as ``equity``
  (``BacktestResult.indicators``), read from backtrader's buffers after the run; which ones and
  on which chart panel follows backtrader's ``plotinfo`` (``engine/indicators.py``).
- **Perpetual swaps** (``BacktestSpec.perp``): isolated margin, leverage, funding and
  liquidation on the same fills, in ``perps.py``; rules in ``docs/trading-model.md``.

Speed (``bench/backtest.py --variants``, 525,600 1m bars, SMA crossover, 2-core box): 35.2k
bars/s, against 12.6k for a bare script with ``PandasData`` and ``bt.Cerebro()`` defaults (2.8x).
Each choice, undone alone, costs: backtrader's ``PandasData`` instead of ``CandleFeed`` (whole
numpy columns into the line buffers, no per-bar ``_load``, no tick bookkeeping) 2.3x;
``runonce=False`` 2.7x; observers (``stdstats=True``) 1.35x; ``BackBroker.next``'s full loop on
bars with no order waiting 1.1x. All give the same trades and final value. Fills are recorded by
the broker as they happen, so no analyzer or observer runs per bar. With exits
(``bench/backtest.py``, always run) the engine stays >= 2x a bare backtrader script with the same
Stop + Limit OCO exits (2.83x measured, 86,400 bars): a bar that reaches no waiting exit skips the broker's
full loop (``ExitBroker.next``).
"""

from __future__ import annotations

import array
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import backtrader as bt
import numpy as np
import pandas as pd

from atlas_pipeline.market_data.candles import CANDLE_COLUMNS, ms_to_iso, timeframe_ms
from atlas_pipeline.market_data.store import CandleStore, TimeLike
from atlas_pipeline.research.engine.exits import SIGNAL, ExitBroker, Exits, exit_kind, with_exits
from atlas_pipeline.research.engine.indicators import record_indicators
from atlas_pipeline.research.results import EQUITY_COLUMNS, ORDER_COLUMNS, TRADE_COLUMNS, BacktestResult
from atlas_pipeline.research.strategy_base import FLAT, LONG, SHORT, AtlasStrategy
from atlas_pipeline.research.strategy_loader import (
    StrategyError,
    load_strategy,
    strategy_failure,
    strategy_file,
    strategy_params,
    validate_params,
)

if TYPE_CHECKING:
    from atlas_pipeline.research.engine.perps import PerpSpec

__all__ = [
    "BacktestSpec",
    "Exits",
    "StrategyError",
    "TooFewCandlesError",
    "run_backtest",
    "run_backtest_from_store",
    "run_backtest_with_signals",
    "stored_candles",
]

_EPOCH_ORDINAL = 719_163.0
"""``bt.date2num`` of 1970-01-01 (days since 0001-01-01, plus one)."""
_MS_PER_DAY = 86_400_000.0


@dataclass(frozen=True)
class BacktestSpec:
    """What to run and under which trading costs; the candles and timeframe come separately."""

    strategy: str
    """Module name in the strategies folder (``sma_crossover``)."""
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Strategy params; checked against the strategy's (unknown name or wrong type: StrategyError)."""
    cash: float = 10_000.0
    fraction: float = 1.0
    """Fraction of current equity committed per entry."""
    commission: float = 0.001
    """Per side, fraction of each fill's value (market orders pay taker)."""
    slippage: float = 0.0
    """Fraction of the fill price, against the order."""
    cushion: float = 0.01
    """Gap between the signal bar's close and the next open that a buy's size still fits."""
    exits: Exits | None = None
    """Protective exits every position gets (docs/trading-model.md); None or empty: none."""
    perp: PerpSpec | None = None
    """A perpetual swap on isolated margin (``perps.py``, docs/trading-model.md); None: spot."""

    def __post_init__(self) -> None:
        if self.exits is not None and not isinstance(self.exits, Exits):
            raise ValueError(f"bad backtest spec: exits={self.exits!r} (need an Exits or None)")
        checks = {
            "cash": self.cash > 0,
            "fraction": 0 < self.fraction <= 1,
            "commission": 0 <= self.commission < 1,
            "slippage": 0 <= self.slippage < 1,
            "cushion": 0 <= self.cushion < 1,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"bad backtest spec: {', '.join(bad)} (need cash > 0, 0 < fraction <= 1, "
                "0 <= commission, slippage, cushion < 1)"
            )


class CandleFeed(bt.feed.DataBase):
    """A feed that hands backtrader whole numpy columns at preload instead of bar by bar.

    ``dataname`` is a candle frame (``CANDLE_COLUMNS``); times become backtrader day numbers
    (naive UTC). Needs ``preload=True`` (without it the feed delivers no bars).
    """

    def preload(self) -> None:
        frame: pd.DataFrame = self.p.dataname
        days = frame["timestamp"].to_numpy(np.float64) / _MS_PER_DAY + _EPOCH_ORDINAL
        columns = {"datetime": days, "openinterest": np.zeros(len(frame))}
        columns.update({c: frame[c].to_numpy(np.float64) for c in CANDLE_COLUMNS[1:]})
        for name in self.lines.getlinealiases():
            buffer = getattr(self.lines, name)
            buffer.array = array.array("d", np.ascontiguousarray(columns[name], dtype=np.float64).tobytes())
        self.home()

    def _load(self) -> bool:
        return False  # every bar came in at preload; asked again only at the end (next mode)

    # The tick_* attributes carry a bar still being built (replay, live feeds); a preloaded bar is
    # whole, and with them unset the broker matches orders on the bar's open/high/low/close, the
    # same prices. Skipping them saves two Python loops per bar (~15 % of a run).
    def _tick_nullify(self) -> None:
        pass

    def _tick_fill(self, force: bool = False) -> None:
        pass


class PercentCommission(bt.CommInfoBase):
    """Spot trading: fee = commission x |size| x price on every fill (``percabs``: 0.001 = 0.1 %)."""

    params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_PERC), ("percabs", True))


class FractionSizer(bt.Sizer):
    """``fraction`` of equity at the signal bar's close; buys capped to fit cash (module doc)."""

    params = (("fraction", 1.0), ("commission", 0.0), ("slippage", 0.0), ("cushion", 0.0))

    def _getsizing(self, comminfo: bt.CommInfoBase, cash: float, data: bt.DataBase, isbuy: bool) -> float:
        close = data.close[0]
        held = self.broker.getposition(data).size
        size = self.p.fraction * (cash + held * close) / close
        if isbuy:
            costs = (1 + self.p.slippage) * (1 + self.p.commission)
            available = cash + min(held, 0.0) * close * costs * (1 + self.p.cushion)
            size = min(size, available / (close * costs * (1 + self.p.cushion)))
        return max(size, 0.0)


@dataclass
class _Fill:
    ref: int
    bar: int
    cash: float
    position: float


class RecordingBroker(ExitBroker, bt.brokers.BackBroker):
    """``BackBroker`` that keeps every order it was sent and notes, at each fill, the bar and the
    cash and position after it (backtrader's own ``orders`` list skips orders when
    ``checksubmit`` is off). ``ExitBroker`` adds the exits' gap rule and quiet-bar fast path
    (``engine.exits``)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[int, bt.Order] = {}
        self.fills: list[_Fill] = []

    def next(self) -> None:
        """A bar with no order waiting only revalues the account: for spot positions (stock-like,
        no interest, no user order history) the rest of ``BackBroker.next``, credit interest and
        the futures cash adjustment, adds exactly 0. Skipping it saves ~10 % of a run."""
        if self.pending or self._toactivate or self._userhist:
            super().next()
        else:
            self._get_value()

    def notify(self, order: bt.Order) -> None:
        self.sent.setdefault(order.ref, order)
        if order.status == order.Completed:
            bar = len(order.data) - 1
            self.fills.append(_Fill(order.ref, bar, self.cash, self.positions[order.data].size))
        super().notify(order)


FEED: type[bt.feed.DataBase] = CandleFeed
CEREBRO_OPTIONS: dict[str, Any] = dict(stdstats=False, runonce=True, preload=True, maxcpus=1, tradehistory=True)
"""The fastest choices that give the same results (``bench/backtest.py --variants`` measures the
alternatives). ``tradehistory`` only costs per fill and gives trades their exit fills."""


def configure_broker(cerebro: bt.Cerebro, broker: RecordingBroker, spec: BacktestSpec) -> RecordingBroker:
    """The engine's broker conventions, shared by spot and perp runs: the spec's cash, orders
    checked at their fill (not at submission), and slippage on every fill kind."""
    broker.set_cash(spec.cash)
    broker.set_checksubmit(False)
    broker.set_slippage_perc(spec.slippage, slip_open=True, slip_limit=True, slip_match=True, slip_out=True)
    cerebro.broker = broker
    return broker


def bt_timeframe(timeframe: str) -> tuple[int, int]:
    """backtrader's (TimeFrame, compression) for a ccxt timeframe: ``5m`` -> (Minutes, 5)."""
    ms = timeframe_ms(timeframe)
    if ms % _MS_PER_DAY == 0:
        return bt.TimeFrame.Days, int(ms // _MS_PER_DAY)
    if ms % 60_000 == 0:
        return bt.TimeFrame.Minutes, ms // 60_000
    return bt.TimeFrame.Seconds, ms // 1_000


class TooFewCandlesError(ValueError):
    """The candles are fewer than the strategy's warm-up (a ``ValueError``, as it always was)."""


class _TooFewCandles(Exception):
    def __init__(self, candles: int, warmup: int) -> None:
        super().__init__(candles, warmup)
        self.candles, self.warmup = candles, warmup


def _with_hooks(
    cls: type[bt.Strategy], record_targets: bool = False, trade_from_bar: int | None = None
) -> type[bt.Strategy]:
    """The user's class plus a note of the bar of its first ``next`` (the end of warm-up), and a
    clear error instead of backtrader's IndexError when the candles are fewer than the warm-up
    (``runonce`` indexes past the end then).

    With ``record_targets`` (``AtlasStrategy`` only) it also notes, in ``_atlas_targets``, the
    target after each bar's ``next``/``nextstart``, keyed by bar; off, nothing runs per bar.

    With ``trade_from_bar`` (a bar index) ``buy`` and ``sell`` return None on bars before it
    instead of creating an order; ``bt.Strategy.close`` and ``order_target_*`` go through them.
    Without it they are not overridden at all.
    """

    def nextstart(self: bt.Strategy) -> None:
        self._atlas_first_bar = len(self) - 1
        cls.nextstart(self)
        if record_targets:
            self._atlas_targets[len(self) - 1] = self._atlas_target

    def _once(self: bt.Strategy) -> None:
        if self._minperiod > self.data.buflen():
            raise _TooFewCandles(self.data.buflen(), self._minperiod - 1)
        cls._once(self)

    hooks = {"nextstart": nextstart, "_once": _once, "__module__": cls.__module__}
    if record_targets:

        def next(self: bt.Strategy) -> None:
            cls.next(self)
            self._atlas_targets[len(self) - 1] = self._atlas_target

        def start(self: bt.Strategy) -> None:
            self._atlas_targets = {}
            cls.start(self)

        hooks.update(next=next, start=start)
    if trade_from_bar is not None:

        def buy(self: bt.Strategy, *args: Any, **kwargs: Any) -> bt.Order | None:
            if len(self) <= trade_from_bar:  # this bar's index, len(self) - 1, is before it
                return None
            return cls.buy(self, *args, **kwargs)

        def sell(self: bt.Strategy, *args: Any, **kwargs: Any) -> bt.Order | None:
            if len(self) <= trade_from_bar:
                return None
            return cls.sell(self, *args, **kwargs)

        hooks.update(buy=buy, sell=sell)
    return type(cls.__name__, (cls,), hooks)


def run_backtest(
    candles: pd.DataFrame,
    spec: BacktestSpec,
    timeframe: str,
    strategies_dir: Path | None = None,
    trade_from_ms: int | None = None,
) -> BacktestResult:
    """Backtest ``spec`` on a candle frame (one market, sorted, one row per timestamp).

    ``trade_from_ms``: candles with open time before it only warm the strategy up; it trades
    (and ``equity`` starts) from the first candle at or after it (module doc, "Trade from")."""
    return _run(candles, spec, timeframe, strategies_dir, record_signals=False, trade_from_ms=trade_from_ms)[0]


def run_backtest_with_signals(
    candles: pd.DataFrame,
    spec: BacktestSpec,
    timeframe: str,
    strategies_dir: Path | None = None,
    trade_from_ms: int | None = None,
) -> tuple[BacktestResult, pd.Series]:
    """``run_backtest`` plus the strategy's signal on every bar after warm-up (for bias checks).

    The signal of a bar is what the strategy decided on it: for an ``AtlasStrategy`` its target
    after that bar's ``next`` (``"LONG"``, ``"FLAT"``, ``"SHORT"``); for a plain backtrader
    strategy the sides of the orders it created on that bar, in order, joined by ``+``
    (``"buy"``, ``"sell+buy"``; ``""`` for none). A str Series indexed like ``result.equity``.
    Recording changes nothing in the result; it costs one dict write per bar.
    """
    result, signals = _run(candles, spec, timeframe, strategies_dir, record_signals=True, trade_from_ms=trade_from_ms)
    assert signals is not None
    return result, signals


_TARGET_NAMES = {LONG: "LONG", FLAT: "FLAT", SHORT: "SHORT"}


def _run(
    candles: pd.DataFrame,
    spec: BacktestSpec,
    timeframe: str,
    strategies_dir: Path | None,
    record_signals: bool,
    trade_from_ms: int | None = None,
) -> tuple[BacktestResult, pd.Series | None]:
    """One run; the signals (else None) only when asked, so the default path adds nothing per bar."""
    cls = load_strategy(spec.strategy, strategies_dir)
    params = validate_params(spec.strategy, cls, spec.params)
    _check_candles(candles, spec.strategy)
    candles = candles.reset_index(drop=True)
    trade_from_bar = _trade_from_bar(candles, trade_from_ms)
    tf, compression = bt_timeframe(timeframe)
    atlas = issubclass(cls, AtlasStrategy)

    cerebro = bt.Cerebro(**CEREBRO_OPTIONS)
    if spec.perp is not None:
        from atlas_pipeline.research.engine import perps

        broker = perps.configure(cerebro, candles, spec)
    else:
        broker = configure_broker(cerebro, RecordingBroker(), spec)
        broker.addcommissioninfo(PercentCommission(commission=spec.commission))
        cerebro.addsizer(
            FractionSizer,
            fraction=spec.fraction,
            commission=spec.commission,
            slippage=spec.slippage,
            cushion=spec.cushion,
        )
    cerebro.adddata(FEED(dataname=candles, timeframe=tf, compression=compression))
    strategy_cls = with_exits(cls, spec.exits or None)
    cerebro.addstrategy(
        _with_hooks(strategy_cls, record_targets=record_signals and atlas, trade_from_bar=trade_from_bar), **params
    )
    try:
        (strategy,) = cerebro.run()
        if not hasattr(strategy, "_atlas_first_bar"):  # never decided (runonce=False)
            raise _TooFewCandles(len(candles), strategy._minperiod - 1)
    except _TooFewCandles as short:
        raise TooFewCandlesError(
            f"{short.candles} candles are too few for strategy {spec.strategy!r}: its indicators need "
            f"{short.warmup} bars of warm-up before the first decision"
        ) from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the strategy's code (or its indicators) raised
        # (a sys.exit() in a strategy is its failure, not a request to end the process running it)
        raise strategy_failure(spec.strategy, strategy_file(spec.strategy, strategies_dir), error, "raised") from error

    effective = {**strategy_params(cls), **params}
    first = max(strategy._atlas_first_bar, trade_from_bar or 0)
    result = _result(candles, spec, timeframe, effective, broker, strategy, first)
    if not record_signals:
        return result, None
    bars = range(first, len(candles))
    if atlas:
        values = [_TARGET_NAMES[strategy._atlas_targets[bar]] for bar in bars]
    else:
        sides: dict[int, list[str]] = {}
        for order in broker.sent.values():  # in sending order
            sides.setdefault(order.plen - 1, []).append("buy" if order.isbuy() else "sell")
        values = ["+".join(sides.get(bar, ())) for bar in bars]
    return result, pd.Series(values, index=result.equity.index, name="signal", dtype=object)


def _trade_from_bar(candles: pd.DataFrame, trade_from_ms: int | None) -> int | None:
    """Index of the first candle with open time >= ``trade_from_ms`` (None without one)."""
    if trade_from_ms is None:
        return None
    stamps = candles["timestamp"].to_numpy(np.int64)
    if int(trade_from_ms) > stamps[-1]:
        raise ValueError(
            f"trade_from {ms_to_iso(trade_from_ms)} is after the last candle ({ms_to_iso(stamps[-1])}): "
            "no bar is left to trade on"
        )
    return int(np.searchsorted(stamps, int(trade_from_ms), side="left"))


def _check_candles(candles: pd.DataFrame, strategy: str) -> None:
    """The candle convention (int ms open times, strictly increasing), which backtrader assumes."""
    if candles.empty:
        raise ValueError(f"no candles to backtest {strategy!r} on")
    missing = [c for c in CANDLE_COLUMNS if c not in candles.columns]
    if missing:
        raise ValueError(f"candles lack column(s) {', '.join(missing)}; expected {', '.join(CANDLE_COLUMNS)}")
    stamps = candles["timestamp"]
    if stamps.dtype.kind not in "iu":
        raise ValueError(f"candle timestamps must be integer ms since the epoch, not {stamps.dtype}")
    if not (np.diff(stamps.to_numpy()) > 0).all():
        raise ValueError("candle timestamps must be strictly increasing (sorted, one row per bar)")


def stored_candles(
    store: CandleStore, exchange: str, symbol: str, timeframe: str, start: TimeLike | None, end: TimeLike | None
) -> pd.DataFrame:
    """Stored candles with open time in ``[start, end)``; none at all is an error saying what to fetch."""
    candles = store.read(exchange, symbol, timeframe, start, end)
    if candles.empty:
        raise ValueError(
            f"no stored {exchange} {symbol} {timeframe} candles from {start} to {end or 'the newest'}: "
            f"materialize {exchange}/ohlcv_{timeframe} for {symbol} first (UI, or `atlas fetch`)"
        )
    return candles


def run_backtest_from_store(
    store: CandleStore,
    exchange: str,
    symbol: str,
    timeframe: str,
    start: TimeLike | None,
    end: TimeLike | None,
    spec: BacktestSpec,
    strategies_dir: Path | None = None,
) -> BacktestResult:
    """``run_backtest`` on the stored candles with open time in ``[start, end)``."""
    return run_backtest(stored_candles(store, exchange, symbol, timeframe, start, end), spec, timeframe, strategies_dir)


def _times(ms: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(ms, unit="ms", utc=True), name="time")


def _result(
    candles: pd.DataFrame,
    spec: BacktestSpec,
    timeframe: str,
    params: dict[str, Any],
    broker: RecordingBroker,
    strategy: bt.Strategy,
    first: int,
) -> BacktestResult:
    ms = candles["timestamp"].to_numpy(np.int64)
    close = candles["close"].to_numpy(np.float64)
    held = close[first:]
    if spec.perp is not None:
        from atlas_pipeline.research.engine import perps

        columns = perps.equity_columns(broker, held, first)
    else:
        fills = broker.fills
        fill_bars = np.array([f.bar for f in fills], dtype=np.int64)
        last_fill = np.searchsorted(fill_bars, np.arange(first, len(ms)), side="right") - 1
        cash = np.append(np.array([f.cash for f in fills]), spec.cash)[last_fill]
        position = np.append(np.array([f.position for f in fills]), 0.0)[last_fill]
        columns = {"equity": cash + position * held, "cash": cash, "position": position}
    equity = pd.DataFrame(
        {**columns, "in_market": columns["position"] != 0}, index=_times(ms[first:])
    ).loc[:, list(EQUITY_COLUMNS)]
    indicators, panels = record_indicators(strategy, first, equity.index)
    perp_outputs = {} if spec.perp is None else perps.outputs(broker, spec.perp)
    return BacktestResult(
        equity=equity,
        trades=_trades(strategy, ms, broker.exit_reasons),
        orders=_orders(broker, ms),
        close=pd.Series(held, index=equity.index, name="close"),
        warmup_bars=first,
        parameters={
            "strategy": spec.strategy,
            "params": params,
            "timeframe": timeframe,
            **{k: getattr(spec, k) for k in ("cash", "fraction", "commission", "slippage", "cushion")},
            "exits": spec.exits.as_dict() if spec.exits else {},
            **perp_outputs.pop("parameters", {}),
        },
        indicators=indicators,
        indicator_panels=panels,
        **perp_outputs,
    )


_STATUS = {
    bt.Order.Completed: "completed",
    bt.Order.Margin: "margin",
    bt.Order.Rejected: "rejected",
    bt.Order.Canceled: "canceled",
    bt.Order.Expired: "canceled",
}


def _orders(broker: RecordingBroker, ms: np.ndarray) -> pd.DataFrame:
    """Every order the strategy sent, in sending order; unfinished ones at the end are canceled."""
    filled = {f.ref: f.bar for f in broker.fills}
    rows = []
    for order in broker.sent.values():
        status = _STATUS.get(order.status, "canceled")
        done = status == "completed"
        size = abs(order.executed.size if done else order.created.size)
        price = _fill_price(order) if done else math.nan
        rows.append(
            {
                "created_time": ms[order.plen - 1],
                "executed_time": ms[filled[order.ref]] if done else None,
                "side": "buy" if order.isbuy() else "sell",
                "size": size,
                "price": price,
                "value": size * price,
                "fee": order.executed.comm if done else 0.0,
                "status": status,
                "kind": exit_kind(broker.exit_reasons, order),
            }
        )
    frame = pd.DataFrame(rows, columns=list(ORDER_COLUMNS))
    for column in ("created_time", "executed_time"):
        frame[column] = pd.to_datetime(frame[column].astype("Int64"), unit="ms", utc=True)
    return frame.astype({c: "float64" for c in ("size", "price", "value", "fee")})


def _fill_price(order: bt.Order) -> float:
    """The fill's own price (``executed.price`` is a running average, off by an ulp at times)."""
    bits = order.executed.exbits
    return bits[0].price if len(bits) == 1 else order.executed.price


def _trades(strategy: bt.Strategy, ms: np.ndarray, exit_reasons: Mapping[int, str]) -> pd.DataFrame:
    """Closed trades from backtrader's own ``Trade`` records (``tradehistory`` gives the fills).

    Entry price is backtrader's average entry; exit price the size-weighted average of the
    closing fills; size the largest absolute size the trade reached; exit reason the exit whose
    fill closed it (``signal``: a strategy order).
    """
    rows = []
    for trade in (t for by_id in strategy._trades.values() for ts in by_id.values() for t in ts):
        if not trade.isclosed:
            continue
        peak = max(abs(h.status.size) for h in trade.history)
        # an update reduced the trade when its size after is smaller than before (after - event)
        exits = [h.event for h in trade.history if abs(h.status.size) < abs(h.status.size - h.event.size)]
        exit_price = sum(abs(e.size) * e.price for e in exits) / sum(abs(e.size) for e in exits)
        rows.append(
            {
                "entry_time": ms[trade.baropen - 1],
                "exit_time": ms[trade.barclose - 1],
                "side": "long" if trade.long else "short",
                "size": peak,
                "entry_price": trade.price,
                "exit_price": exit_price,
                "gross_pnl": trade.pnl,
                "fees": trade.commission,
                "net_pnl": trade.pnlcomm,
                "return_pct": trade.pnlcomm / (peak * trade.price),
                "bars_held": trade.barlen,
                "exit_reason": exit_reasons.get(exits[-1].order.ref, SIGNAL),
            }
        )
    frame = pd.DataFrame(rows, columns=list(TRADE_COLUMNS))
    for column in ("entry_time", "exit_time"):
        frame[column] = pd.to_datetime(frame[column].astype("int64"), unit="ms", utc=True)
    frame = frame.sort_values("entry_time", kind="stable").reset_index(drop=True)
    return frame.astype({"size": "float64", "bars_held": "int64"})
