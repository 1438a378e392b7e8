"""``AtlasStrategy``: the small base every shipped strategy uses.

A strategy only says which side it wants to be on (``self.target(LONG | FLAT | SHORT)``); the
engine decides how much (its sizer: a fraction of equity), at what price (next bar's open plus
slippage) and at what cost (percentage commission). Keeping that split means one strategy file is
only its signal logic, and every strategy is sized and charged the same way.
"""

from __future__ import annotations

import backtrader as bt

LONG, FLAT, SHORT = 1, 0, -1


class AtlasStrategy(bt.Strategy):
    """Base with a ``target(direction)`` helper; subclasses implement ``next`` (and ``__init__``).

    Params:
        allow_short (bool, default False): whether ``target(SHORT)`` opens a short. When False a
            short signal means flat, so every strategy is long-only unless asked otherwise.
    """

    params = (("allow_short", False),)

    def __init__(self) -> None:
        self._atlas_target = FLAT
        self._atlas_pending: list[bt.Order] = []

    def target(self, direction: int) -> None:
        """Hold ``direction`` (LONG, FLAT or SHORT) from the next bar's open.

        Sends the orders that move the position there (closing first, then opening; the engine's
        sizer sizes the opening order). Idempotent: calling it every bar with the same direction
        sends nothing more. Nothing is sent on the last bar, where no next open exists to fill at.
        """
        if direction not in (LONG, FLAT, SHORT):
            raise ValueError(f"target direction must be LONG (1), FLAT (0) or SHORT (-1), not {direction!r}")
        if direction == SHORT and not self.p.allow_short:
            direction = FLAT
        self._atlas_target = direction
        self._move_to_target()

    def _move_to_target(self) -> None:
        self._atlas_pending = [o for o in self._atlas_pending if o.alive()]
        if self._atlas_pending or len(self.data) >= self.data.buflen():
            return
        size = self.position.size
        held = (size > 0) - (size < 0)
        if held == self._atlas_target:
            return
        if held:
            self._send(self.close())
        if self._atlas_target == LONG:
            self._send(self.buy())
        elif self._atlas_target == SHORT:
            self._send(self.sell())

    def _send(self, order: bt.Order | None) -> None:
        if order is not None:
            self._atlas_pending.append(order)

    def notify_order(self, order: bt.Order) -> None:
        """Once an order is done, move to the target again if the position is not there.

        After a rejection (not enough cash at the fill) that retries at once, sized at this bar, so
        a gap past the sizing cushion delays an entry instead of losing it. Subclasses overriding
        this should call ``super().notify_order(order)``.
        """
        if not order.alive():
            self._move_to_target()
