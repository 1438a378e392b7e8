"""Portfolio backtests: one strategy's per-market signals traded on one account over N markets.

One backtrader ``Cerebro`` holds a feed per market (aligned on the union of their bar times) and
one ``RecordingBroker``; ``PortfolioStrategy`` turns the signals into target weights and orders.
Every rule (timeline, signals, selection, weights, rebalancing, the sizing cushion, fills, equity,
attribution) is written in ``docs/trading-model.md`` ("Portfolios") and pinned by
``atlas_pipeline_tests/test_portfolio_engine.py`` against an independent numpy loop. Fills, fees,
slippage, the refused-order retry and the warm-up follow the single-market engine
(``research/engine/__init__.py``), whose broker, commission and feed classes are reused here.
A swap portfolio (``PortfolioSpec.perps``) runs the same strategy on ``perp_portfolio.py``'s broker:
isolated margin, funding and liquidation per market, SHORT signals as negative weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import backtrader as bt
import numpy as np
import pandas as pd

from atlas_pipeline.research import engine
from atlas_pipeline.research.engine import (
    CEREBRO_OPTIONS,
    FEED,
    BacktestSpec,
    PercentCommission,
    RecordingBroker,
    TooFewCandlesError,
    bt_timeframe,
    configure_broker,
)
from atlas_pipeline.research.strategy_base import LONG, SHORT, AtlasStrategy
from atlas_pipeline.research.strategy_loader import StrategyError, load_strategy, strategy_file

if TYPE_CHECKING:
    from atlas_pipeline.research.engine.perps import PerpSpec

ALLOCATIONS = ("equal", "inverse_volatility")


@dataclass(frozen=True)
class PortfolioSpec:
    """What a portfolio runs and how it allocates; the candles and timeframe come separately."""

    market: BacktestSpec
    """The strategy, its params and the costs, as for one market; ``fraction`` is the sum of the
    target weights (the fraction of equity invested when anything is selected)."""
    allocation: str = "equal"
    volatility_window: int = 288
    """Returns in the trailing volatility of ``inverse_volatility`` (288 5m bars = one day)."""
    max_positions: int | None = None
    rebalance_every_ms: int = 86_400_000
    rebalance_threshold: float = 0.05
    perps: Mapping[str, PerpSpec] | None = None
    """Perpetual swaps (symbol -> its margin settings, mark prices and funding): a swap portfolio,
    isolated margin per market, SHORT signals as negative weights (``perp_portfolio.py``); None: spot."""

    def __post_init__(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation {self.allocation!r}: one of {', '.join(ALLOCATIONS)}")
        if self.volatility_window < 2:
            raise ValueError(f"volatility_window={self.volatility_window}: need at least 2 returns")
        if self.max_positions is not None and self.max_positions < 1:
            raise ValueError(f"max_positions={self.max_positions}: need at least 1")
        if self.rebalance_every_ms <= 0 or not 0 <= self.rebalance_threshold < 1:
            raise ValueError("need rebalance_every_ms > 0 and 0 <= rebalance_threshold < 1")

    def market_spec(self) -> BacktestSpec:
        """The single-market run that gives a market's signals (same strategy, params and costs)."""
        return dataclasses.replace(self.market, fraction=1.0)


@dataclass
class PortfolioResult:
    """Everything a portfolio backtest produced; frames indexed by bar open time (UTC) from its first bar."""

    equity: pd.DataFrame
    """``equity``, ``cash``, ``in_market`` (any position), ``positions`` (markets held)."""
    positions: pd.DataFrame
    """Units held per market (columns: symbols) after each bar's fills."""
    closes: pd.DataFrame
    """The price each market is marked at per bar (its close, or its last close without a candle)."""
    pnl: pd.DataFrame
    """Each market's cumulative P&L per bar (cash flows of its fills + its position at the close)."""
    orders: pd.DataFrame
    """``ORDER_COLUMNS`` plus ``symbol``."""
    trades: pd.DataFrame
    """``TRADE_COLUMNS`` plus ``symbol``."""
    signals: pd.DataFrame
    """Per market and bar: its side, 1 LONG, -1 SHORT (swap portfolios only), 0 none or no candle."""
    has_candle: pd.DataFrame
    """Per market and bar: whether the exchange delivered a candle for it."""
    warmup_bars: int
    parameters: dict[str, Any] = field(default_factory=dict)
    funding: pd.DataFrame | None = None
    """Swap portfolios: ``perps.FUNDING_COLUMNS`` plus ``symbol``, one row per settled event."""
    liquidations: pd.DataFrame | None = None
    """Swap portfolios: ``perps.LIQUIDATION_COLUMNS`` plus ``symbol``."""

    @property
    def symbols(self) -> list[str]:
        return list(self.positions.columns)

    @property
    def weights(self) -> pd.DataFrame:
        """Each market's share of equity at each bar's close."""
        return (self.positions * self.closes).div(self.equity["equity"], axis=0)

    def basket(self) -> pd.Series:
        """Equal-weight buy-and-hold of the markets from the first bar (a market listed later: cash
        until its first candle), for ``buy_and_hold_return``."""
        listed = self.has_candle.cummax()
        entry = self.closes.where(listed).bfill().iloc[0]
        return (self.closes / entry).where(listed, 1.0).mean(axis=1).rename("close")


@dataclass(frozen=True)
class _Plan:
    """Per bar and market, what the strategy decides on (numpy, row = bar, column = market)."""

    ms: np.ndarray
    has: np.ndarray
    side: np.ndarray
    """1 LONG, -1 SHORT (swap portfolios), 0 otherwise."""
    vol: np.ndarray
    first: int
    spec: PortfolioSpec
    leverage: np.ndarray | None = None
    """Per market, swap portfolios only."""


class PortfolioBroker(RecordingBroker):
    """``RecordingBroker`` that holds an order back while its market has no candle (a flat filler
    bar): it stays pending and fills at the market's next candle's open."""

    def __init__(self, has: np.ndarray, column: Mapping[int, int]) -> None:
        super().__init__()
        self._has, self._column = has, column

    def _try_exec(self, order: bt.Order) -> None:
        if self._has[len(order.data) - 1, self._column[id(order.data)]]:
            super()._try_exec(order)


class PortfolioStrategy(bt.Strategy):
    """Targets weights from the plan's signals on each decision bar (``docs/trading-model.md``)."""

    params = (("plan", None),)

    def __init__(self) -> None:
        self._atlas_orders: list[bt.Order] = []
        self._atlas_refused = False
        self._atlas_period: int | None = None
        self._atlas_out = np.zeros(len(self.datas), dtype=np.int64)
        """Per market: the side it was liquidated on while it sits out (0: eligible)."""
        self._atlas_seen = 0

    def notify_order(self, order: bt.Order) -> None:
        if order.status == order.Margin:
            self._atlas_refused = True

    def next(self) -> None:
        plan: _Plan = self.p.plan
        spec = plan.spec
        t = len(self) - 1
        self._sit_out(plan, t)
        if t < plan.first or t >= len(plan.ms) - 1:
            return
        self._atlas_orders = [o for o in self._atlas_orders if o.alive()]
        positions = [self.broker.getposition(d) for d in self.datas]
        held = np.array([p.size for p in positions])
        if self._atlas_orders or not plan.has[t][held != 0].all():
            return
        close = np.array([d.close[0] for d in self.datas])
        cash = self.broker.get_cash()
        target, chosen = target_weights(plan, t, held != 0, self._atlas_out != 0)
        period = int(plan.ms[t] // spec.rebalance_every_ms)
        scheduled, self._atlas_period = period != self._atlas_period, period
        if not (scheduled or self._atlas_refused or (np.sign(target) != np.sign(held)).any()):
            return
        self._atlas_refused = False
        entry = None if plan.leverage is None else np.array([p.price if p.size else 0.0 for p in positions])
        for m, size in rebalance_orders(spec, cash, held, close, target, chosen, entry, plan.leverage):
            data = self.datas[m]
            self._atlas_orders.append(self.buy(data, size=size) if size > 0 else self.sell(data, size=-size))


    def _sit_out(self, plan: _Plan, t: int) -> None:
        """A market liquidated (swap portfolios) sits out until a bar with its candle whose signal
        is not the side it was liquidated on (docs/trading-model.md)."""
        liquidated = getattr(self.broker, "liquidated", ())
        for _, m, side in liquidated[self._atlas_seen :]:
            self._atlas_out[m] = side
        self._atlas_seen = len(liquidated)
        back = (self._atlas_out != 0) & plan.has[t] & (plan.side[t] != self._atlas_out)
        self._atlas_out[back] = 0


def target_weights(plan: _Plan, t: int, held: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(signed target weight per market, selected mask) on bar ``t`` given the markets held (and
    those sitting out after a liquidation)."""
    spec = plan.spec
    eligible = plan.has[t] & (plan.side[t] != 0)
    if out is not None:
        eligible &= ~out
    if spec.allocation == "inverse_volatility":
        eligible &= np.isfinite(plan.vol[t]) & (plan.vol[t] > 0)
    chosen = eligible.copy()
    if spec.max_positions is not None and eligible.sum() > spec.max_positions:
        order = [m for m in np.flatnonzero(eligible & held)] + [m for m in np.flatnonzero(eligible & ~held)]
        chosen[:] = False
        chosen[order[: spec.max_positions]] = True
    target = np.zeros(len(chosen))
    if chosen.any():
        side = plan.side[t][chosen]
        if spec.allocation == "equal":
            target[chosen] = side * spec.market.fraction / chosen.sum()
        else:
            inverse = 1.0 / plan.vol[t][chosen]
            target[chosen] = side * spec.market.fraction * inverse / inverse.sum()
    return target, chosen


def rebalance_orders(
    spec: PortfolioSpec,
    cash: float,
    held: np.ndarray,
    close: np.ndarray,
    target: np.ndarray,
    chosen: np.ndarray,
    entry: np.ndarray | None = None,
    leverage: np.ndarray | None = None,
) -> list[tuple[int, float]]:
    """(market, signed units) to send on a rebalance bar: the closing orders first, then the
    opening ones scaled to fit the cash (spot) or the available balance (swaps: ``entry`` and
    ``leverage`` given, ``cash`` the available balance) if every next open gaps against the
    portfolio by ``cushion`` (docs/trading-model.md, "Sizing cushion" of both portfolio kinds)."""
    perp = entry is not None
    lev = leverage if perp else np.ones(len(held))
    value = np.abs(held) * entry / lev + held * (close - entry) if perp else held * close
    equity = cash + float(np.sum(value))
    weight = held * close / (lev * equity)
    units = target * lev * equity / close
    closing: list[tuple[int, float]] = []
    opening: list[tuple[int, float]] = []
    for m in range(len(held)):
        q = held[m]
        if not chosen[m]:
            if q != 0:
                closing.append((m, -q))  # leaving
        elif q != 0 and np.sign(units[m]) != np.sign(q):
            closing.append((m, -q))  # reversing: close, then open the other side
            opening.append((m, units[m]))
        elif q == 0 or abs(weight[m] - target[m]) > spec.rebalance_threshold:
            delta = units[m] - q
            if delta != 0:
                (opening if q == 0 or np.sign(delta) == np.sign(q) else closing).append((m, delta))
    costs = spec.market
    s, k, u = costs.slippage, costs.commission, costs.cushion
    if perp:
        def freed(m: int, d: float) -> float:  # margin back, realized pnl and fee at the worst gapped price
            sigma = np.sign(held[m])
            price = close[m] * (1 - s) * (1 - u) if sigma > 0 else close[m] * (1 + s) * (1 + u)
            return abs(d) * entry[m] / lev[m] + sigma * abs(d) * (price - entry[m]) - k * abs(d) * price

        def needed(m: int, d: float) -> float:  # margin and fee, at the open gapped up
            return abs(d) * close[m] * (1 + s) * (1 + u) * (1 / lev[m] + k)
    else:
        up, down = (1 + s) * (1 + k) * (1 + u), (1 - s) * (1 - k) * (1 - u)
        freed = lambda m, d: -d * close[m] * down  # noqa: E731  (sale proceeds after fees)
        needed = lambda m, d: d * close[m] * up  # noqa: E731
    available = cash + sum(freed(m, d) for m, d in closing)
    cost = sum(needed(m, d) for m, d in opening)
    scale = max(0.0, min(1.0, available / cost)) if cost > 0 else 1.0  # funding can leave a swap account short
    return closing + [(m, d * scale) for m, d in opening if d * scale != 0]


def market_signals(
    candles: pd.DataFrame, spec: PortfolioSpec, timeframe: str, strategies_dir: Path | None = None
) -> pd.Series:
    """The side the strategy, run alone on this market (without margin), holds after each bar
    from its warm-up on: 1 LONG, -1 SHORT (swap portfolios; spot ones are long or flat), else 0.
    Empty when the market's candles are fewer than the warm-up."""
    try:
        _, signals = engine.run_backtest_with_signals(candles, spec.market_spec(), timeframe, strategies_dir)
    except TooFewCandlesError:
        return pd.Series(dtype=np.int64, index=pd.DatetimeIndex([], tz="UTC", name="time"))
    sides = {engine._TARGET_NAMES[LONG]: 1, engine._TARGET_NAMES[SHORT]: -1 if spec.perps is not None else 0}
    return signals.map(lambda name: sides.get(name, 0)).astype(np.int64)


def trailing_volatility(candles: pd.DataFrame, window: int) -> pd.Series:
    """Sample std (ddof 1) of the last ``window`` close-to-close returns, per candle (NaN before)."""
    close = candles["close"].astype(float).reset_index(drop=True)
    vol = close.pct_change().rolling(window, min_periods=window).std(ddof=1)
    return pd.Series(vol.to_numpy(), index=engine._times(candles["timestamp"].to_numpy(np.int64)))


def run_portfolio(
    candles: Mapping[str, pd.DataFrame],
    spec: PortfolioSpec,
    timeframe: str,
    strategies_dir: Path | None = None,
) -> PortfolioResult:
    """Backtest ``spec`` on several markets' candle frames (symbol -> frame, in config order)."""
    strategy = spec.market.strategy
    cls = load_strategy(strategy, strategies_dir)
    if not issubclass(cls, AtlasStrategy):
        raise StrategyError(
            strategy,
            f"{strategy_file(strategy, strategies_dir)} defines a plain backtrader strategy; a portfolio needs an "
            "AtlasStrategy, whose target (self.target) on each market is that market's signal",
        )
    symbols = list(candles)
    if not symbols:
        raise ValueError("a portfolio needs at least one market")
    frames = {}
    for symbol in symbols:
        try:
            engine._check_candles(candles[symbol], strategy)
        except ValueError as error:
            raise ValueError(f"{symbol}: {error}") from None
        frames[symbol] = candles[symbol].reset_index(drop=True)
    ms = np.unique(np.concatenate([f["timestamp"].to_numpy(np.int64) for f in frames.values()]))
    times = engine._times(ms)
    has = np.zeros((len(ms), len(symbols)), dtype=bool)
    rows = {symbol: np.searchsorted(ms, frames[symbol]["timestamp"].to_numpy(np.int64)) for symbol in symbols}
    for m, symbol in enumerate(symbols):
        has[rows[symbol], m] = True
    perp_markets = None
    if spec.perps is not None:
        from atlas_pipeline.research.engine import perp_portfolio

        perp_markets = perp_portfolio.perp_markets(frames, rows, ms, spec)  # fails before any run
    side = np.zeros(has.shape, dtype=np.int64)
    vol = np.full(has.shape, np.nan)
    feeds, signal_series = [], []
    for m, symbol in enumerate(symbols):
        frame = frames[symbol]
        try:
            signals = market_signals(frame, spec, timeframe, strategies_dir)
        except StrategyError as error:
            raise StrategyError(error.strategy, f"on {symbol}: {error.detail}") from error
        signal_series.append(signals)
        side[:, m] = signals.reindex(times, fill_value=0).to_numpy(np.int64) * has[:, m]
        vol[:, m] = trailing_volatility(frame, spec.volatility_window).reindex(times).to_numpy()
        feeds.append(_aligned(frame, ms, rows[symbol]))
    starts = [np.searchsorted(ms, _ms(signals.index[0])) for signals in signal_series if len(signals)]
    if not starts:
        raise TooFewCandlesError(f"no market has more candles than strategy {strategy!r}'s warm-up")
    leverage = None if perp_markets is None else np.array([market.spec.leverage for market in perp_markets])
    plan = _Plan(ms=ms, has=has, side=side, vol=vol, first=int(min(starts)), spec=spec, leverage=leverage)

    tf, compression = bt_timeframe(timeframe)
    cerebro = bt.Cerebro(**CEREBRO_OPTIONS)
    if perp_markets is None:
        broker = configure_broker(cerebro, PortfolioBroker(has, {}), spec.market)
        broker.addcommissioninfo(PercentCommission(commission=spec.market.commission))
    else:
        broker = configure_broker(cerebro, perp_portfolio.PerpPortfolioBroker(has, perp_markets), spec.market)
    datas = [cerebro.adddata(FEED(dataname=feed, timeframe=tf, compression=compression), name=s) for s, feed in zip(symbols, feeds)]
    broker._column = {id(data): m for m, data in enumerate(datas)}
    broker._datas = datas
    cerebro.addstrategy(PortfolioStrategy, plan=plan)
    (strategy,) = cerebro.run()
    return _result(symbols, feeds, plan, broker, strategy, datas)


def _ms(time: pd.Timestamp) -> int:
    return int(time.value // 1_000_000)


def _aligned(frame: pd.DataFrame, ms: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
    """The market's candles on the union timeline; bars without a candle are flat at the last
    close (before the first candle: at the first open), with no volume."""
    out = pd.DataFrame({"timestamp": ms})
    for column in ("open", "high", "low", "close", "volume"):
        values = np.full(len(ms), np.nan)
        values[rows] = frame[column].to_numpy(np.float64)
        out[column] = values
    carried = out["close"].ffill().fillna(float(frame["open"].iloc[0]))
    for column in ("open", "high", "low", "close"):
        out[column] = out[column].fillna(carried)
    out["volume"] = out["volume"].fillna(0.0)
    return out


def _result(
    symbols: Sequence[str],
    feeds: Sequence[pd.DataFrame],
    plan: _Plan,
    broker: PortfolioBroker,
    strategy: PortfolioStrategy,
    datas: Sequence[bt.DataBase],
) -> PortfolioResult:
    spec, first, ms = plan.spec, plan.first, plan.ms
    bars = np.arange(first, len(ms))
    index = engine._times(ms[first:])
    column = {id(data): m for m, data in enumerate(datas)}
    closes = np.column_stack([feed["close"].to_numpy(np.float64)[first:] for feed in feeds])
    perp = spec.perps is not None
    if perp:
        from atlas_pipeline.research.engine import perp_portfolio

        columns, positions = perp_portfolio.equity_columns(broker, closes, first)
    else:
        fill_bars = np.array([f.bar for f in broker.fills], dtype=np.int64)
        last = np.searchsorted(fill_bars, bars, side="right") - 1
        cash = np.append(np.array([f.cash for f in broker.fills]), spec.market.cash)[last]
        positions = np.zeros((len(bars), len(symbols)))
        for m in range(len(symbols)):
            own = [f for f in broker.fills if column[id(broker.sent[f.ref].data)] == m]
            at = np.searchsorted(np.array([f.bar for f in own], dtype=np.int64), bars, side="right") - 1
            positions[:, m] = np.append(np.array([f.position for f in own]), 0.0)[at]
        columns = {"equity": cash + (positions * closes).sum(axis=1), "cash": cash}
    orders = engine._orders(broker, ms)
    orders.insert(0, "symbol", [symbols[column[id(order.data)]] for order in broker.sent.values()])
    frame = lambda values: pd.DataFrame(values, index=index, columns=list(symbols))  # noqa: E731
    pnl = _cumulative_pnl(orders, symbols, index) + positions * closes
    extra: dict[str, Any] = {}
    if perp:
        extra = perp_portfolio.outputs(broker, symbols)
        pnl += perp_portfolio.cumulative_funding(extra["funding"], symbols, index)
    return PortfolioResult(
        equity=pd.DataFrame(
            {**columns, "in_market": (positions != 0).any(axis=1), "positions": (positions != 0).sum(axis=1)},
            index=index,
        ),
        positions=frame(positions),
        closes=frame(closes),
        pnl=frame(pnl),
        orders=orders,
        trades=_trades(strategy, datas, symbols, ms, broker.exit_reasons),
        signals=frame(plan.side[first:]),
        has_candle=frame(plan.has[first:]),
        warmup_bars=first,
        parameters={
            **{f.name: getattr(spec.market, f.name) for f in dataclasses.fields(spec.market)},
            "params": dict(spec.market.params),
            "symbols": list(symbols),
            **{k: getattr(spec, k) for k in (
                "allocation", "volatility_window", "max_positions", "rebalance_every_ms", "rebalance_threshold",
            )},
            **extra.pop("parameters", {}),
        },
        **extra,
    )


def _cumulative_pnl(orders: pd.DataFrame, symbols: Sequence[str], index: pd.DatetimeIndex) -> np.ndarray:
    """Per bar and market: the cash its fills moved so far (sales - purchases - fees)."""
    flows = np.zeros((len(index), len(symbols)))
    done = orders[orders["status"] == "completed"]
    sign = np.where(done["side"] == "sell", 1.0, -1.0)
    amount = sign * done["value"].to_numpy() - done["fee"].to_numpy()
    rows = index.get_indexer(pd.DatetimeIndex(done["executed_time"]))
    for row, symbol, value in zip(rows, done["symbol"], amount):
        flows[row, symbols.index(symbol)] += value
    return np.cumsum(flows, axis=0)


def _trades(
    strategy: bt.Strategy, datas: Sequence[bt.DataBase], symbols: Sequence[str], ms: np.ndarray, exit_reasons: Mapping[int, str]
) -> pd.DataFrame:
    """Closed trades of every market (the single-market engine's records), with their symbol."""
    frames = []
    for data, symbol in zip(datas, symbols):
        one = engine._trades(SimpleNamespace(_trades={data: strategy._trades.get(data, {})}), ms, exit_reasons)
        frames.append(one.assign(symbol=symbol))
    trades = pd.concat(frames, ignore_index=True).sort_values("entry_time", kind="stable").reset_index(drop=True)
    return trades.loc[:, ["symbol", *(c for c in trades.columns if c != "symbol")]]
