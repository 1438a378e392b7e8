"""Perpetual futures on backtrader's broker: isolated margin, leverage, funding, liquidation.

Every rule is in ``docs/trading-model.md`` ("Perpetual futures") and pinned by
``atlas_pipeline_tests/test_perps_engine.py`` against an independent loop. How it sits on
backtrader:

- ``PerpCommission`` is backtrader's ``CommInfoBase`` with the accounting of a linear perp:
  opening ``|q| p`` of notional locks ``|q| p / L`` of margin (backtrader's ``leverage`` divides
  the operation cost; ``getoperationcost`` is ``|q| p`` for both sides, with the broker's
  ``shortcash`` off), the position's value is its margin plus its unrealized pnl, and
  backtrader's credit-interest hook (``get_credit_interest``, charged by ``BackBroker.next``
  before it fills the bar's orders) settles the funding events due on the bar.
- ``PerpBroker`` runs ``BackBroker.next`` in full on every bar (funding must settle even with no
  order waiting), then checks liquidation on the bar's mark extreme and executes it through
  backtrader's own ``_execute`` at the liquidation price, and notes the wallet, position and
  entry after each bar, from which the equity curve is rebuilt.
- ``PerpSizer`` sizes entries as ``fraction x leverage x equity / close``, capped to fit the
  available balance after a gap of the cushion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import backtrader as bt
import numpy as np
import pandas as pd

from atlas_pipeline.market_data.candles import ms_to_iso
from atlas_pipeline.research.engine import RecordingBroker, configure_broker  # the package imports this module lazily
from atlas_pipeline.research.strategy_base import FLAT, AtlasStrategy

if TYPE_CHECKING:
    from atlas_pipeline.research.engine import BacktestSpec

FUNDING_COLUMNS = ("time", "settled_time", "position", "mark_price", "rate", "amount")
"""One row per funding event settled on a position: ``time`` the funding time, ``settled_time``
the open time of the bar it settled on, ``position`` the signed size held, ``mark_price`` the
settling bar's mark open, ``rate``, ``amount`` the cash flow to the account (negative: paid)."""
LIQUIDATION_COLUMNS = ("time", "side", "size", "entry_price", "liquidation_price", "fee", "pnl")
"""One row per liquidation: bar open time, side of the position (``long``/``short``), its size,
average entry, the liquidation price it was closed at, the liquidation fee and the price pnl."""
DEFAULT_FUNDING_INTERVAL_MS = 8 * 3_600_000
"""Binance USDⓈ-M: funding every 8 hours, at 00:00, 08:00 and 16:00 UTC."""


class MissingFundingError(ValueError):
    """The funding history lacks events on the grid inside the candles' span; ``ranges`` names them."""

    def __init__(self, ranges: Sequence[tuple[int, int, int]], where: str = "") -> None:
        self.ranges = list(ranges)
        text = "; ".join(f"{_iso(a)} .. {_iso(b)} ({n} event{'s' * (n != 1)})" for a, b, n in self.ranges[:5])
        more = f" and {len(self.ranges) - 5} more ranges" if len(self.ranges) > 5 else ""
        events = sum(n for _, _, n in self.ranges)
        super().__init__(
            f"funding history{where} is missing {events} funding event(s): {text}{more}; "
            "a perp backtest never assumes zero funding: materialize the funding asset for this period"
        )


@dataclass(frozen=True, eq=False)
class PerpSpec:
    """A perp backtest's margin settings and its market's mark prices and funding history."""

    mark: pd.DataFrame
    """Mark-price candles (candle convention); every trade candle needs its mark candle."""
    funding: pd.DataFrame
    """Funding events: ``timestamp`` (int ms, the funding time) and ``rate``."""
    leverage: float = 1.0
    maintenance_margin: float = 0.004
    liquidation_fee: float = 0.0125
    funding_interval_ms: int = DEFAULT_FUNDING_INTERVAL_MS

    def __post_init__(self) -> None:
        if not 1 <= self.leverage <= 125:
            raise ValueError(f"bad perp spec: leverage={self.leverage!r} (need 1 <= leverage <= 125)")
        if not 0 <= self.maintenance_margin < 1 / self.leverage:
            raise ValueError(
                f"bad perp spec: maintenance_margin={self.maintenance_margin!r} must be >= 0 and below "
                f"1/leverage = {1 / self.leverage:g} (else a position is liquidated as it opens)"
            )
        if not 0 <= self.liquidation_fee < 0.1:
            raise ValueError(f"bad perp spec: liquidation_fee={self.liquidation_fee!r} (need 0 <= fee < 0.1)")
        if self.funding_interval_ms <= 0:
            raise ValueError(f"bad perp spec: funding_interval_ms={self.funding_interval_ms!r}")


def liquidation_price(size: float, entry: float, leverage: float, maintenance: float) -> float:
    """Where margin ``|q| e / L + q (P - e)`` equals maintenance ``m |q| P`` (docs/trading-model.md)."""
    if size > 0:
        return entry * (1 - 1 / leverage) / (1 - maintenance)
    return entry * (1 + 1 / leverage) / (1 + maintenance)


def missing_funding(stamps: np.ndarray, funding: pd.DataFrame, interval_ms: int) -> list[tuple[int, int, int]]:
    """Grid times from the first to the last candle's open time with no event, as
    ``(first, last, count)`` ranges of consecutive missing times."""
    if not len(stamps):
        return []
    first = -(-int(stamps[0]) // interval_ms) * interval_ms
    grid = np.arange(first, int(stamps[-1]) + 1, interval_ms, dtype=np.int64)
    have = funding["timestamp"].to_numpy(np.int64) if len(funding) else np.empty(0, np.int64)
    absent = grid[~np.isin(grid, have)]
    ranges: list[tuple[int, int, int]] = []
    for t in absent.tolist():
        if ranges and ranges[-1][1] + interval_ms == t:
            a, _, n = ranges[-1]
            ranges[-1] = (a, t, n + 1)
        else:
            ranges.append((t, t, 1))
    return ranges


def check_funding(stamps: np.ndarray, funding: pd.DataFrame, interval_ms: int, where: str = "") -> None:
    """``MissingFundingError`` naming every missing range; nothing when the history is whole."""
    ranges = missing_funding(stamps, funding, interval_ms)
    if ranges:
        raise MissingFundingError(ranges, where)


def mark_arrays(candles: pd.DataFrame, mark: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mark open, high and low of every trade candle (joined on open time)."""
    stamps = candles["timestamp"].to_numpy(np.int64)
    indexed = mark.set_index("timestamp")
    found = np.isin(stamps, indexed.index.to_numpy(np.int64))
    if not found.all():
        absent = stamps[~found]
        raise ValueError(
            f"mark-price candles are missing for {len(absent)} of {len(stamps)} bars (first at {_iso(int(absent[0]))}): "
            "materialize the markprice asset for this period"
        )
    rows = indexed.loc[stamps]
    return rows["open"].to_numpy(np.float64), rows["high"].to_numpy(np.float64), rows["low"].to_numpy(np.float64)


def funding_by_bar(stamps: np.ndarray, funding: pd.DataFrame) -> dict[int, list[tuple[int, float]]]:
    """Bar index -> the events ``(funding time, rate)`` it settles: the first bar opening at or
    after each funding time; events after the last bar's open are not settled."""
    due: dict[int, list[tuple[int, float]]] = {}
    if not len(funding) or not len(stamps):
        return due
    events = funding.sort_values("timestamp")
    times = events["timestamp"].to_numpy(np.int64)
    bars = np.searchsorted(stamps, times, side="left")
    for t, bar, rate in zip(times.tolist(), bars.tolist(), events["rate"].to_numpy(np.float64).tolist()):
        if bar < len(stamps) and t >= stamps[0]:
            due.setdefault(bar, []).append((t, rate))
    return due


class PerpCommission(bt.CommInfoBase):
    """A linear perp: ``|q| p`` of notional locks ``|q| p / L`` of margin; value = margin +
    unrealized pnl; fees a percentage of notional (the liquidation fee while liquidating);
    funding through backtrader's credit-interest hook."""

    params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_PERC), ("percabs", True))

    def __init__(self) -> None:
        super().__init__()
        self.fee_rate: float | None = None
        """Set while a liquidation executes: its fee rate instead of the commission."""
        self.funding_due: dict[int, list[tuple[int, float]]] = {}
        self.mark_open = np.empty(0)
        self.stamps = np.empty(0, np.int64)
        self.funding_rows: list[tuple[int, int, float, float, float, float]] = []

    def getoperationcost(self, size: float, price: float) -> float:
        return abs(size) * price

    def getvalue(self, position: bt.Position, price: float) -> float:
        return abs(position.size) * position.price / self.get_leverage() + position.size * (price - position.price)

    def _getcommission(self, size: float, price: float, pseudoexec: bool) -> float:
        rate = self.p.commission if self.fee_rate is None else self.fee_rate
        return abs(size) * rate * price

    def get_credit_interest(self, data: bt.DataBase, pos: bt.Position, dt: object) -> float:
        """Funding the held position pays on this bar (negative: receives); noted per event."""
        bar = len(data) - 1
        events = self.funding_due.get(bar)
        if not events:
            return 0.0
        mark = float(self.mark_open[bar])
        paid = 0.0
        for time, rate in events:
            amount = -pos.size * mark * rate
            self.funding_rows.append((time, int(self.stamps[bar]), pos.size, mark, rate, amount))
            paid -= amount
        return paid


class PerpSizer(bt.Sizer):
    """``fraction x leverage x equity / close``, capped to fit after a gap (docs/trading-model.md)."""

    params = (("fraction", 1.0), ("leverage", 1.0), ("commission", 0.0), ("slippage", 0.0), ("cushion", 0.0))

    def _getsizing(self, comminfo: bt.CommInfoBase, cash: float, data: bt.DataBase, isbuy: bool) -> float:
        close = data.close[0]
        position = self.broker.getposition(data)
        held, entry, lev = position.size, position.price, self.p.leverage
        equity = cash + (abs(held) * entry / lev + held * (close - entry) if held else 0.0)
        size = self.p.fraction * lev * equity / close
        worst = (1 + self.p.slippage) * (1 + self.p.cushion)
        reversing = (held < 0) if isbuy else (held > 0)
        available = equity - abs(held) * close * (worst * (1 + self.p.commission) - 1) if reversing else cash
        size = min(size, available / (close * worst * (1 / lev + self.p.commission)))
        return max(size, 0.0)


@dataclass
class _BarState:
    wallet: list[float] = field(default_factory=list)
    position: list[float] = field(default_factory=list)
    entry: list[float] = field(default_factory=list)


class MarginAccount:
    """Broker mixin of a perp account (``PerpBroker``, ``perp_portfolio.PerpPortfolioBroker``):
    both sides lock margin, funding is no trade's commission, and the strategy trading here is
    remembered (from its orders) as the owner of a liquidation."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[call-arg]
        self.p.shortcash = False  # both sides lock margin (PerpCommission.getoperationcost)
        self.p.int2pnl = False  # funding is not a trade's commission
        self._owner: bt.Strategy | None = None
        """The strategy trading here (from its orders), whose position a liquidation closes."""

    def notify(self, order: bt.Order) -> None:
        if order.owner is not None:
            self._owner = order.owner
        super().notify(order)  # type: ignore[misc]


class PerpBroker(MarginAccount, RecordingBroker):
    """``RecordingBroker`` with funding (via ``PerpCommission``) and liquidation every bar."""

    def __init__(self, spec: PerpSpec, candles: pd.DataFrame, commission: float) -> None:
        super().__init__()
        self.spec = spec
        self.perp_comminfo = PerpCommission(commission=commission, leverage=spec.leverage)
        self.addcommissioninfo(self.perp_comminfo)
        stamps = candles["timestamp"].to_numpy(np.int64)
        mark_open, self.mark_high, self.mark_low = mark_arrays(candles, spec.mark)
        self.perp_comminfo.stamps, self.perp_comminfo.mark_open = stamps, mark_open
        self.perp_comminfo.funding_due = funding_by_bar(stamps, spec.funding)
        self.stamps = stamps
        self.state = _BarState()
        self.liquidations: list[tuple[int, str, float, float, float, float, float]] = []

    def next(self) -> None:
        bt.brokers.BackBroker.next(self)  # funding, then the bar's fills
        for data, position in self.positions.items():
            if position.size:
                self._maybe_liquidate(data, position)
        data, position = next(iter(self.positions.items()), (None, None))
        size = position.size if position is not None else 0.0
        entry = position.price if size else 0.0
        self.state.wallet.append(self.cash + abs(size) * entry / self.spec.leverage)
        self.state.position.append(size)
        self.state.entry.append(entry)

    def _maybe_liquidate(self, data: bt.DataBase, position: bt.Position) -> None:
        row = maybe_liquidate(self, data, position, self.spec, self.perp_comminfo, self.mark_high, self.mark_low, self._owner)
        if row is not None:
            self.liquidations.append(row)


def maybe_liquidate(
    broker: bt.brokers.BackBroker,
    data: bt.DataBase,
    position: bt.Position,
    spec: PerpSpec,
    comminfo: PerpCommission,
    mark_high: np.ndarray,
    mark_low: np.ndarray,
    owner: bt.Strategy | None,
) -> tuple[int, str, float, float, float, float, float] | None:
    """Liquidate ``data``'s position if this bar's adverse mark extreme reaches its liquidation
    price: an order executed through backtrader's own ``_execute`` at that price with the
    liquidation fee; the market's waiting orders are canceled. Returns the liquidation's row
    (``LIQUIDATION_COLUMNS``), None when the position survives the bar. A NaN mark (a bar
    without the market's candle, in a portfolio) never liquidates."""
    bar = len(data) - 1
    size, entry = position.size, position.price
    price = liquidation_price(size, entry, spec.leverage, spec.maintenance_margin)
    if not (mark_low[bar] <= price if size > 0 else mark_high[bar] >= price):
        return None
    if isinstance(owner, AtlasStrategy):
        # now, not when notified: the strategy hears of its earlier fills of this bar first,
        # and would move back to its old target on them
        owner._atlas_target = FLAT
    kind = bt.SellOrder if size > 0 else bt.BuyOrder
    order = kind(owner=owner, data=data, size=abs(size), price=price, exectype=bt.Order.Market)
    order.addinfo(liquidation=True)
    broker._ocoize(order, None)
    order.submit(broker)
    order.accept(broker)
    broker.notify(order)
    comminfo.fee_rate = min(spec.liquidation_fee, spec.maintenance_margin)
    try:
        broker._execute(order, ago=0, price=price)
    finally:
        comminfo.fee_rate = None
    for waiting in [o for o in broker.pending if o is not None and o.data is data]:
        broker.cancel(waiting)  # nothing left for them to act on (stop orders of the position, say)
    stamp = int(comminfo.stamps[bar])
    return stamp, "long" if size > 0 else "short", abs(size), entry, price, order.executed.comm, size * (price - entry)


def configure(cerebro: bt.Cerebro, candles: pd.DataFrame, spec: BacktestSpec, where: str = "") -> PerpBroker:
    """The perp broker and sizer of a ``BacktestSpec`` with ``perp`` set, after checking that
    the funding history covers the candles (``MissingFundingError`` otherwise)."""
    perp = spec.perp
    assert perp is not None
    check_funding(candles["timestamp"].to_numpy(np.int64), perp.funding, perp.funding_interval_ms, where)
    broker = configure_broker(cerebro, PerpBroker(perp, candles, spec.commission), spec)
    cerebro.addsizer(
        PerpSizer,
        fraction=spec.fraction,
        leverage=perp.leverage,
        commission=spec.commission,
        slippage=spec.slippage,
        cushion=spec.cushion,
    )
    return broker


def equity_columns(broker: PerpBroker, close: np.ndarray, first: int) -> dict[str, np.ndarray]:
    """Wallet, position and equity (wallet + unrealized pnl at the close) from bar ``first`` on."""
    wallet = np.asarray(broker.state.wallet[first:], dtype=np.float64)
    position = np.asarray(broker.state.position[first:], dtype=np.float64)
    entry = np.asarray(broker.state.entry[first:], dtype=np.float64)
    return {"equity": wallet + position * (close - entry), "cash": wallet, "position": position}


def funding_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    """``FUNDING_COLUMNS`` from ``PerpCommission.funding_rows``."""
    frame = pd.DataFrame(list(rows), columns=list(FUNDING_COLUMNS))
    for column in ("time", "settled_time"):
        frame[column] = pd.to_datetime(frame[column].astype("int64"), unit="ms", utc=True)
    return frame.astype({c: "float64" for c in ("position", "mark_price", "rate", "amount")})


def liquidations_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    """``LIQUIDATION_COLUMNS`` from the rows ``maybe_liquidate`` returned."""
    frame = pd.DataFrame(list(rows), columns=list(LIQUIDATION_COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"].astype("int64"), unit="ms", utc=True)
    return frame.astype({c: "float64" for c in ("size", "entry_price", "liquidation_price", "fee", "pnl")})


def perp_metrics(equity: pd.DataFrame, close: pd.Series, funding: pd.DataFrame, liquidations: pd.DataFrame) -> dict[str, float]:
    """``funding_paid``, ``funding_received`` (both >= 0), ``liquidations``, ``max_leverage_used``."""
    notional = np.abs(equity["position"].to_numpy(np.float64)) * close.to_numpy(np.float64)
    return margin_metrics(notional, equity["equity"].to_numpy(np.float64), funding, liquidations)


def margin_metrics(notional: np.ndarray, equity: np.ndarray, funding: pd.DataFrame, liquidations: pd.DataFrame) -> dict[str, float]:
    """``perp_metrics`` from the notional held per bar (a portfolio: summed over its markets)."""
    amounts = funding["amount"].to_numpy(np.float64) if len(funding) else np.empty(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        used = np.where(notional > 0, notional / equity, 0.0)
    return {
        "funding_paid": float(-amounts[amounts < 0].sum()),
        "funding_received": float(amounts[amounts > 0].sum()),
        "liquidations": float(len(liquidations)),
        "max_leverage_used": float(used.max()) if len(used) else math.nan,
    }


def _iso(ms: int) -> str:
    return ms_to_iso(ms).replace("T", " ")[:16]


def outputs(broker: PerpBroker, perp: PerpSpec) -> dict[str, object]:
    """The perp-only parts of a ``BacktestResult``: funding, liquidations, margin parameters."""
    return {
        "funding": funding_frame(broker.perp_comminfo.funding_rows),
        "liquidations": liquidations_frame(broker.liquidations),
        "parameters": {
            "market_type": "swap",
            "leverage": perp.leverage,
            "maintenance_margin": perp.maintenance_margin,
            "liquidation_fee": perp.liquidation_fee,
        },
    }
