"""Protective exits (stop-loss, take-profit, trailing stop) on backtrader's native orders.

The conventions are in docs/trading-model.md ("Exits"); ``atlas_pipeline_tests/test_exits.py``
pins them against an independent numpy loop. The engine's broker always mixes in
``ExitBroker`` and the strategy is always wrapped by ``with_exits`` (so strategy code can set
``self.exits``); without exits neither adds an order or per-bar work.

How it maps onto backtrader: once a strategy order leaves a position open, the position gets one
OCO group (sized to the whole position, created through the broker directly so no user hook,
sizer or trade-from rule touches it): a ``Stop`` (stop-loss), or a ``StopTrail`` (trailing stop,
its starting level tightened to the stop-loss level when both are set), then a ``Limit``
(take-profit). The broker checks pending orders in submission order, so the stop is tried
before the target: the stop wins a bar where both lie inside the range. ``ExitBroker`` adds the
one exception backtrader lacks: a target the bar *opened* through fills at the open, first; and
a fast path for the bars that reach no exit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import backtrader as bt

from atlas_pipeline.research.strategy_base import FLAT, AtlasStrategy

if TYPE_CHECKING:
    from atlas_pipeline.research.engine import BacktestSpec

EXIT_PREFIX = "exits."
"""Grid names with this prefix sweep an exit value (``exits.stop_loss``) instead of a strategy param."""
MARKET = "market"
SIGNAL = "signal"
STOP_LOSS, TAKE_PROFIT, TRAILING_STOP = "stop_loss", "take_profit", "trailing_stop"


@dataclass(frozen=True)
class Exits:
    """Exit distances as fractions of the entry price (None: that exit is off)."""

    stop_loss: float | None = None
    take_profit: float | None = None
    trailing_stop: float | None = None

    def __post_init__(self) -> None:
        for key in EXIT_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"exits.{key} = {value!r}: need a fraction of the entry price, 0 < {key} < 1")
            object.__setattr__(self, key, float(value))

    def __bool__(self) -> bool:
        return any(getattr(self, key) is not None for key in EXIT_KEYS)

    def as_dict(self) -> dict[str, float]:
        """The exits that are on, by key (for result parameters and tables)."""
        return {key: getattr(self, key) for key in EXIT_KEYS if getattr(self, key) is not None}


EXIT_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Exits))


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A candidate's names split into (strategy params, exit values by exit key)."""
    strategy = {k: v for k, v in params.items() if not k.startswith(EXIT_PREFIX)}
    exits = {k.removeprefix(EXIT_PREFIX): v for k, v in params.items() if k.startswith(EXIT_PREFIX)}
    unknown = sorted(set(exits) - set(EXIT_KEYS))
    if unknown:
        raise ValueError(f"unknown exit {EXIT_PREFIX}{unknown[0]}; exits are {', '.join(EXIT_KEYS)}")
    return strategy, exits


def with_params(spec: BacktestSpec, params: Mapping[str, Any]) -> BacktestSpec:
    """``spec`` with a sweep candidate applied: strategy params over ``spec.params``, ``exits.*``
    values over ``spec.exits``. The one place a candidate becomes a spec."""
    strategy, exits = split_params(params)
    spec = replace(spec, params={**spec.params, **strategy})
    if exits:
        spec = replace(spec, exits=replace(spec.exits or Exits(), **exits))
    return spec


def _gapped_through(order: bt.Order, open_: float) -> bool:
    """The bar opened at or beyond a take-profit's level (a sell limit below the open, a buy limit above)."""
    level = order.created.price
    return open_ >= level if order.issell() else open_ <= level


class ExitBroker:
    """Broker mixin: a stop yields for one bar to its take-profit when the bar opened through the
    take-profit (the open is the bar's first price, so that fill came first). The stop stays in the
    queue behind the target, whose fill cancels it (OCO). Costs one dict lookup per order tried."""

    def __init__(self) -> None:
        super().__init__()
        self.exit_targets: dict[int, bt.Order] = {}
        """A stop's ref -> its take-profit order."""
        self.exit_reasons: dict[int, str] = {}
        """Exit order ref -> the exit it closes a position as (``orders.kind``, ``trades.exit_reason``)."""

    def next(self) -> None:
        """A bar that triggers none of the waiting exits (and has no other order) only ratchets
        the trailing stops on its close and revalues the account: exactly what
        ``BackBroker.next``'s full loop would do then (spot: no interest, no cash adjustment),
        at a fraction of its cost. A position's exits wait on most bars, so this is most bars."""
        if self._toactivate or self._userhist or not self._exits_quiet():
            super().next()  # type: ignore[misc]
            return
        for order in self.pending:
            if order.exectype == bt.Order.StopTrail:
                order.trailadjust(order.data.close[0])
        self._get_value()  # type: ignore[attr-defined]

    def _exits_quiet(self) -> bool:
        """Every waiting order is an exit this bar's range does not reach (backtrader's own
        trigger tests, negated: a sell stop fills at ``low <= level``, a sell limit at
        ``high >= level``, and the mirror for buys)."""
        for order in self.pending:
            if order.ref not in self.exit_reasons:
                return False
            data, level = order.data, order.created.price
            stop = order.exectype != bt.Order.Limit
            if order.issell() == stop:  # sell stop or buy limit: reached from above
                if data.low[0] <= level:
                    return False
            elif data.high[0] >= level:  # buy stop or sell limit: reached from below
                return False
        return True

    def _try_exec(self, order: bt.Order) -> None:
        target = self.exit_targets.get(order.ref)
        if target is not None and target.alive() and _gapped_through(target, order.data.open[0]):
            return
        super()._try_exec(order)  # type: ignore[misc]


def with_exits(cls: type[bt.Strategy], exits: Exits | None) -> type[bt.Strategy]:
    """The strategy class with protective exits (module doc; docs/trading-model.md).

    ``self.exits`` holds the exits new positions get (class default: the backtest's); strategy code
    may read or reassign it. Every order the strategy itself sends cancels the position's live
    exits; once none of its orders is alive and a position is open, new exits are placed."""

    def start(self: bt.Strategy) -> None:
        self._atlas_exit_group: list[bt.Order] = []
        self._atlas_own: list[bt.Order] = []
        cls.start(self)

    def _send(self: bt.Strategy, parent: Any, *args: Any, **kwargs: Any) -> bt.Order | None:
        _cancel_exits(self)
        order = parent(self, *args, **kwargs)
        if order is not None:
            self._atlas_own.append(order)
        return order

    def buy(self: bt.Strategy, *args: Any, **kwargs: Any) -> bt.Order | None:
        return _send(self, cls.buy, *args, **kwargs)

    def sell(self: bt.Strategy, *args: Any, **kwargs: Any) -> bt.Order | None:
        return _send(self, cls.sell, *args, **kwargs)

    def notify_order(self: bt.Strategy, order: bt.Order) -> None:
        reason = self.broker.exit_reasons.get(order.ref)
        if reason is not None and order.status == order.Completed:
            if order.exectype == bt.Order.StopTrail and self._atlas_stop_loss_level is not None:
                # one StopTrail carries both stops: which level was the tighter when it filled?
                reason = STOP_LOSS if order.created.price == self._atlas_stop_loss_level else TRAILING_STOP
                self.broker.exit_reasons[order.ref] = reason
            self._atlas_exit_group = []
            if isinstance(self, AtlasStrategy):  # an exit leaves it flat: no re-entry by itself
                self._atlas_target = FLAT
        cls.notify_order(self, order)
        if not order.alive():
            _protect(self)

    return type(cls.__name__, (cls,), {
        "__module__": cls.__module__, "exits": exits, "start": start, "buy": buy, "sell": sell,
        "notify_order": notify_order,
    })


def _cancel_exits(strategy: bt.Strategy) -> None:
    for order in strategy._atlas_exit_group:
        if order.alive():
            strategy.broker.cancel(order)  # OCO cancels the rest of the group
    strategy._atlas_exit_group = []


def _protect(strategy: bt.Strategy) -> None:
    """Place the exits of the open position once the strategy's own orders are all done."""
    strategy._atlas_own = [o for o in strategy._atlas_own if o.alive()]
    exits: Exits | None = strategy.exits
    position = strategy.position
    if strategy._atlas_own or strategy._atlas_exit_group or not position.size or not exits:
        return
    broker, data = strategy.broker, strategy.data
    size, entry = abs(position.size), position.price
    long = position.size > 0
    side = broker.sell if long else broker.buy
    sign = 1.0 if long else -1.0
    group: list[bt.Order] = []
    stop_level = None if exits.stop_loss is None else entry * (1 - sign * exits.stop_loss)
    strategy._atlas_stop_loss_level = stop_level
    oco = None
    if exits.trailing_stop is not None:
        stop = side(strategy, data, size=size, price=entry, exectype=bt.Order.StopTrail,
                    trailpercent=exits.trailing_stop, oco=oco)
        if stop_level is not None and sign * (stop_level - stop.created.price) >= 0:
            stop.created.price = stop_level
        stop.trailadjust(data.close[0])  # the entry bar's close counts for the trail
        broker.exit_reasons[stop.ref] = STOP_LOSS if stop.created.price == stop_level else TRAILING_STOP
        group.append(stop)
    elif stop_level is not None:
        stop = side(strategy, data, size=size, price=stop_level, exectype=bt.Order.Stop, oco=oco)
        broker.exit_reasons[stop.ref] = STOP_LOSS
        group.append(stop)
    if group:
        oco = group[0]
    if exits.take_profit is not None:
        target = side(strategy, data, size=size, price=entry * (1 + sign * exits.take_profit),
                      exectype=bt.Order.Limit, oco=oco)
        broker.exit_reasons[target.ref] = TAKE_PROFIT
        if group:
            broker.exit_targets[group[0].ref] = target
        group.append(target)
    strategy._atlas_exit_group = group


def exit_kind(reasons: Mapping[int, str], order: bt.Order) -> str:
    """An order's ``orders.kind``: the exit it was placed as, else ``market``."""
    return reasons.get(order.ref, MARKET)
