"""What a backtest produces, as plain frames every other research module agrees on.

Times are tz-aware UTC ``pd.Timestamp``s of the bar's open (the candle convention's
``timestamp``); the equity of a bar is marked at that bar's close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

EQUITY_COLUMNS = ("equity", "cash", "position", "in_market")
"""Per bar after warm-up, indexed by bar open time (UTC DatetimeIndex named ``time``):
equity = broker value at the bar's close (cash + position marked at close), cash, position =
signed size held in base units (negative when short), in_market = position != 0."""

TRADE_COLUMNS = (
    "entry_time", "exit_time", "side", "size", "entry_price", "exit_price",
    "gross_pnl", "fees", "net_pnl", "return_pct", "bars_held", "exit_reason",
)
"""One row per closed trade: side 'long'|'short'; size > 0 in base units; prices are fills
(slippage included); fees = both sides' commission; net_pnl = gross_pnl - fees; return_pct =
net_pnl / (size * entry_price); bars_held = bars between entry and exit fills; exit_reason =
what closed it: 'signal' (the strategy) | 'stop_loss' | 'take_profit' | 'trailing_stop'
(docs/trading-model.md)."""

ORDER_COLUMNS = ("created_time", "executed_time", "side", "size", "price", "value", "fee", "status", "kind")
"""One row per order: side 'buy'|'sell'; size > 0; price = fill price; value = size * price;
fee = commission paid; status 'completed'|'rejected'|'margin'|'canceled'; kind 'market' (the
strategy's) | 'stop_loss' | 'take_profit' | 'trailing_stop' (a protective exit)."""


@dataclass
class BacktestResult:
    """Everything one backtest of one market produced."""

    equity: pd.DataFrame
    trades: pd.DataFrame
    orders: pd.DataFrame
    close: pd.Series
    """Close prices over the same bars as ``equity`` (for buy-and-hold and charts)."""
    warmup_bars: int
    parameters: dict[str, Any] = field(default_factory=dict)
    """What the run used: ``strategy`` (name), ``params`` (every strategy param, defaults filled
    in), ``timeframe``, and the costs ``cash``, ``fraction``, ``commission``, ``slippage``,
    ``cushion`` (see ``research.engine``)."""
    indicators: pd.DataFrame = field(default_factory=pd.DataFrame)
    """The strategy's plotted indicator lines over the same bars as ``equity``, one float column
    per line (``SMA (20)``, ``BollingerBands (20, 2.0) top``); rules in ``engine.indicators``."""
    indicator_panels: dict[str, str] = field(default_factory=dict)
    """Column of ``indicators`` -> chart panel: ``"price"`` (over the candles) or the name of
    the indicator's own panel."""

    @property
    def bars(self) -> int:
        return len(self.equity)
