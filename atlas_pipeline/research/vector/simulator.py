"""The engine's spot conventions as one compiled loop over bars: a twin's signals in, the same
cash, position, orders and trades as ``engine.run_backtest`` out.

Each bar ``t`` runs the three phases backtrader runs, in its order:

1. **Fills** at ``open[t]``: the orders sent on bar ``t - 1``, in sending order (close before
   open on a reversal), at ``open * (1 + slippage)`` for a buy and ``open * (1 - slippage)`` for
   a sell, each paying ``commission x |size| x price``. Cash moves by backtrader's own
   arithmetic (a close books ``size x entry + pnl``). An opening order that would leave cash
   below 0 is refused (``margin``) and changes nothing.
2. **Notifications**: if orders were done this bar and the position is not on the target
   (a refused buy), ``AtlasStrategy.notify_order`` moves to it at once, sized on this bar.
3. **Decision** (bars from the twin's ``first``): the strategy's rule (``signals.Signals``)
   may call ``target(direction)``; it sends orders unless some are pending, the bar is the last,
   or the bar is before ``trade_from`` (the engine drops orders there, the target stays set).

Sizing is ``FractionSizer``'s expression for expression (the cushion cap on buys, the short's
buy-back on a reversal priced at the cushioned open too, shorts uncapped), so a refusal falls on
the same bar. A position open after the last bar stays in the equity, not in the trades
(end-of-data marking). Protective exits (``spec.exits``) are not simulated: ``run_twin`` refuses
a spec with exits and such candidates run on backtrader (docs/walkforward.md). Were they added,
they belong in phase 1, as orders that fill inside a bar's range: the loop keeps one place where
orders fill.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from atlas_pipeline.research.vector.signals import Signals

COMPLETED, MARGIN = 0, 1


@numba.njit(cache=True)
def _size(buy: bool, cash: float, held: float, close: float, fraction: float, commission: float,
          slippage: float, cushion: float) -> float:
    """``engine.FractionSizer._getsizing``, operation for operation."""
    size = fraction * (cash + held * close) / close
    if buy:
        costs = (1 + slippage) * (1 + commission)
        available = cash + min(held, 0.0) * close * costs * (1 + cushion)
        size = min(size, available / (close * costs * (1 + cushion)))
    return max(size, 0.0)


@numba.njit(cache=True)
def _simulate(open_, close, first, trade_from, long_entry, short_entry, long_exit, short_exit, allow_short,
              cash0, fraction, commission, slippage, cushion):
    n = len(close)
    cash_out = np.empty(n)
    pos_out = np.empty(n)
    target_out = np.zeros(n, dtype=np.int8)
    cap = 2 * n + 2
    o_created = np.empty(cap, dtype=np.int64)
    o_exec = np.full(cap, -1, dtype=np.int64)
    o_side = np.empty(cap, dtype=np.int8)
    o_size = np.empty(cap)
    o_price = np.full(cap, np.nan)
    o_fee = np.zeros(cap)
    o_status = np.zeros(cap, dtype=np.int8)
    o_closing = np.zeros(cap, dtype=np.bool_)
    t_entry = np.empty(n, dtype=np.int64)
    t_exit = np.empty(n, dtype=np.int64)
    t_side = np.empty(n, dtype=np.int8)
    t_size = np.empty(n)
    t_entry_price = np.empty(n)
    t_exit_price = np.empty(n)
    t_gross = np.empty(n)
    t_fees = np.empty(n)
    orders = 0
    trades = 0
    pend_lo = 0  # orders[pend_lo:orders] are pending
    cash = cash0
    pos = 0.0
    target = 0
    entry_bar, entry_price, entry_fee = 0, 0.0, 0.0
    for t in range(n):
        had_orders = orders > pend_lo
        for o in range(pend_lo, orders):
            buy = o_side[o] > 0
            price = open_[t] * (1 + slippage) if buy else open_[t] * (1 - slippage)
            size = o_size[o]
            fee = size * commission * price
            if o_closing[o]:
                held = pos  # +size when a sell closes a long, -size when a buy covers a short
                pnl = held * (price - entry_price)
                cash += held * entry_price + pnl
                cash -= fee
                pos = 0.0
                t_entry[trades] = entry_bar
                t_exit[trades] = t
                t_side[trades] = 1 if held > 0 else -1
                t_size[trades] = size
                t_entry_price[trades] = entry_price
                t_exit_price[trades] = price
                t_gross[trades] = pnl
                t_fees[trades] = entry_fee + fee
                trades += 1
            else:
                signed = size if buy else -size
                after = cash - signed * price - fee
                if after < 0.0:
                    o_status[o] = MARGIN
                    continue
                cash = after
                pos = signed
                entry_bar, entry_price, entry_fee = t, price, fee
            o_exec[o] = t
            o_price[o] = price
            o_fee[o] = fee
        pend_lo = orders
        held_sign = (pos > 0) - (pos < 0)
        last = t >= n - 1
        if had_orders and held_sign != target and not last:
            orders = _send(orders, t, held_sign, target, cash, pos, close[t], fraction, commission, slippage,
                           cushion, o_created, o_side, o_size, o_closing)
        if t >= first:
            call = True
            if long_entry[t]:
                direction = 1
            elif short_entry[t]:
                direction = -1 if allow_short else 0
            elif (held_sign > 0 and long_exit[t]) or (held_sign < 0 and short_exit[t]):
                direction = 0
            else:
                call = False
            if call:
                target = direction
                if orders == pend_lo and not last and t >= trade_from and held_sign != target:
                    orders = _send(orders, t, held_sign, target, cash, pos, close[t], fraction, commission,
                                   slippage, cushion, o_created, o_side, o_size, o_closing)
        cash_out[t] = cash
        pos_out[t] = pos
        target_out[t] = target
    return (cash_out, pos_out, target_out,
            o_created[:orders], o_exec[:orders], o_side[:orders], o_size[:orders], o_price[:orders],
            o_fee[:orders], o_status[:orders],
            t_entry[:trades], t_exit[:trades], t_side[:trades], t_size[:trades], t_entry_price[:trades],
            t_exit_price[:trades], t_gross[:trades], t_fees[:trades])


@numba.njit(cache=True)
def _send(orders, t, held_sign, target, cash, pos, close, fraction, commission, slippage, cushion,
          o_created, o_side, o_size, o_closing):
    """``AtlasStrategy._move_to_target``: close what is held, then open the target's side."""
    if held_sign != 0:
        o_created[orders] = t
        o_side[orders] = -held_sign
        o_size[orders] = abs(pos)
        o_closing[orders] = True
        orders += 1
    if target != 0:
        size = _size(target > 0, cash, pos, close, fraction, commission, slippage, cushion)
        if size > 0:  # bt.Strategy.buy/sell send nothing for a zero size
            o_created[orders] = t
            o_side[orders] = target
            o_size[orders] = size
            o_closing[orders] = False
            orders += 1
    return orders


@dataclass
class Simulation:
    """One candidate's run; bar arrays cover every candle (slice with ``start`` for the result)."""

    start: int
    """First bar in the equity: max(the twin's first decision bar, the trade-from bar)."""
    cash: np.ndarray
    position: np.ndarray
    target: np.ndarray
    """The target after each bar's decision (LONG 1, FLAT 0, SHORT -1)."""
    orders: dict[str, np.ndarray]
    """created, executed (-1 when not), side (+1 buy, -1 sell), size, price, fee, status (0 done, 1 margin)."""
    trades: dict[str, np.ndarray]
    """entry, exit (bars), side (+1 long, -1 short), size, entry_price, exit_price, gross_pnl, fees."""

    def equity(self, close: np.ndarray) -> np.ndarray:
        return self.cash[self.start :] + self.position[self.start :] * close[self.start :]


_ORDER_KEYS = ("created", "executed", "side", "size", "price", "fee", "status")
_TRADE_KEYS = ("entry", "exit", "side", "size", "entry_price", "exit_price", "gross_pnl", "fees")


def simulate(
    open_: np.ndarray,
    close: np.ndarray,
    signals: Signals,
    *,
    allow_short: bool,
    cash: float,
    fraction: float,
    commission: float,
    slippage: float,
    cushion: float,
    trade_from_bar: int | None = None,
) -> Simulation:
    """Run ``signals`` through the engine's conventions (module doc) on one market's bars."""
    n = len(close)
    none = np.zeros(n, dtype=np.bool_)
    out = _simulate(
        np.ascontiguousarray(open_, dtype=np.float64), np.ascontiguousarray(close, dtype=np.float64),
        int(signals.first), int(trade_from_bar or 0),
        signals.long_entry, signals.short_entry,
        none if signals.long_exit is None else signals.long_exit,
        none if signals.short_exit is None else signals.short_exit,
        bool(allow_short), float(cash), float(fraction), float(commission), float(slippage), float(cushion),
    )
    return Simulation(
        start=max(int(signals.first), int(trade_from_bar or 0)),
        cash=out[0], position=out[1], target=out[2],
        orders=dict(zip(_ORDER_KEYS, out[3:10])),
        trades=dict(zip(_TRADE_KEYS, out[10:18])),
    )
