"""Perpetual-swap portfolios: one account over N swaps, isolated margin per market.

The portfolio engine (``portfolio.py``) with ``perps.py``'s pieces per market: a ``PerpCommission``
per feed (margin, fees, funding through backtrader's credit-interest hook), ``maybe_liquidate`` on
each market's own mark extreme, ``check_funding`` over each market's own candles. Every rule is in
``docs/trading-model.md`` ("Perpetual-swap portfolios") and pinned by
``atlas_pipeline_tests/test_perp_portfolio_engine.py`` against an independent loop.

The feeds share one timeline (the union of the markets' candle times); each market's mark prices
and funding events are laid on it at the rows of its own candles. Rows without its candle carry a
NaN mark, so nothing settles or liquidates there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import backtrader as bt
import numpy as np
import pandas as pd

from atlas_pipeline.research.engine.perps import (
    FUNDING_COLUMNS,
    LIQUIDATION_COLUMNS,
    MarginAccount,
    PerpCommission,
    PerpSpec,
    check_funding,
    funding_by_bar,
    funding_frame,
    liquidations_frame,
    mark_arrays,
    maybe_liquidate,
)
from atlas_pipeline.research.engine.portfolio import PortfolioBroker

if TYPE_CHECKING:
    from atlas_pipeline.research.engine.portfolio import PortfolioSpec


@dataclass(frozen=True, eq=False)
class PerpMarket:
    """One swap of the portfolio: its settings and its mark prices on the shared timeline."""

    symbol: str
    spec: PerpSpec
    comminfo: PerpCommission
    mark_high: np.ndarray
    mark_low: np.ndarray


def perp_markets(
    frames: Mapping[str, pd.DataFrame], rows: Mapping[str, np.ndarray], ms: np.ndarray, spec: PortfolioSpec
) -> list[PerpMarket]:
    """Each market's commission info and mark arrays on the timeline ``ms`` (``rows``:
    where its candles sit), after checking its funding history over its own candles
    (``MissingFundingError`` naming the market) and that every candle has its mark candle."""
    perps = spec.perps or {}
    markets = []
    for symbol, frame in frames.items():
        perp = perps.get(symbol)
        if perp is None:
            raise ValueError(f"{symbol}: a swap portfolio needs the mark prices and funding of every market")
        stamps = frame["timestamp"].to_numpy(np.int64)
        check_funding(stamps, perp.funding, perp.funding_interval_ms, f" of {symbol}")
        try:
            own_open, own_high, own_low = mark_arrays(frame, perp.mark)
        except ValueError as error:
            raise ValueError(f"{symbol}: {error}") from None
        at = rows[symbol]
        mark_open, mark_high, mark_low = (np.full(len(ms), np.nan) for _ in range(3))
        mark_open[at], mark_high[at], mark_low[at] = own_open, own_high, own_low
        comminfo = PerpCommission(commission=spec.market.commission, leverage=perp.leverage)
        comminfo.stamps, comminfo.mark_open = ms, mark_open
        comminfo.funding_due = {int(at[bar]): events for bar, events in funding_by_bar(stamps, perp.funding).items()}
        markets.append(PerpMarket(symbol, perp, comminfo, mark_high, mark_low))
    return markets


class PerpPortfolioBroker(MarginAccount, PortfolioBroker):
    """``PortfolioBroker`` whose feeds are swaps: every bar settles funding (backtrader's full
    ``next``), fills, then checks each market's liquidation, and notes the available balance,
    positions and entries."""

    def __init__(self, has: np.ndarray, markets: Sequence[PerpMarket]) -> None:
        super().__init__(has, {})
        self.markets = list(markets)
        for market in self.markets:
            self.addcommissioninfo(market.comminfo, name=market.symbol)
        self._datas: list[bt.DataBase] = []
        bars, count = has.shape
        self.available = np.zeros(bars)
        self.sizes = np.zeros((bars, count))
        self.entries = np.zeros((bars, count))
        self.liquidations: list[tuple] = []
        """``LIQUIDATION_COLUMNS`` rows, each after its market's column index."""
        self.liquidated: list[tuple[int, int, int]] = []
        """(bar, market column, side) of each liquidation, read by ``PortfolioStrategy``."""

    def next(self) -> None:
        bt.brokers.BackBroker.next(self)  # funding, then the bar's fills
        bar = len(self._datas[0]) - 1
        for m, (data, market) in enumerate(zip(self._datas, self.markets)):
            position = self.positions[data]
            if position.size:
                row = maybe_liquidate(
                    self, data, position, market.spec, market.comminfo, market.mark_high, market.mark_low, self._owner
                )
                if row is not None:
                    self.liquidations.append((m, *row))
                    self.liquidated.append((bar, m, 1 if row[1] == "long" else -1))
            position = self.positions[data]
            self.sizes[bar, m] = position.size
            self.entries[bar, m] = position.price if position.size else 0.0
        self.available[bar] = self.cash


def equity_columns(broker: PerpPortfolioBroker, closes: np.ndarray, first: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(``equity``, ``cash`` = the wallet, ``available``; positions) from bar ``first`` on."""
    sizes, entries = broker.sizes[first:], broker.entries[first:]
    leverage = np.array([market.spec.leverage for market in broker.markets])
    available = broker.available[first:]
    wallet = available + (np.abs(sizes) * entries / leverage).sum(axis=1)
    equity = wallet + (sizes * (closes - entries)).sum(axis=1)
    return {"equity": equity, "cash": wallet, "available": available}, sizes.copy()


def outputs(broker: PerpPortfolioBroker, symbols: Sequence[str]) -> dict[str, object]:
    """The swap-only parts of a ``PortfolioResult``: funding and liquidations with their symbol,
    and the margin parameters."""
    funding = [
        funding_frame(market.comminfo.funding_rows).assign(symbol=market.symbol) for market in broker.markets
    ]
    funding_all = pd.concat(funding, ignore_index=True).sort_values(["settled_time", "time"], kind="stable")
    liquidations = liquidations_frame([row[1:] for row in broker.liquidations])
    liquidations.insert(0, "symbol", [symbols[row[0]] for row in broker.liquidations])
    first = broker.markets[0].spec
    return {
        "funding": funding_all.loc[:, ["symbol", *FUNDING_COLUMNS]].reset_index(drop=True),
        "liquidations": liquidations.loc[:, ["symbol", *LIQUIDATION_COLUMNS]],
        "parameters": {
            "market_type": "swap",
            "leverage": first.leverage,
            "maintenance_margin": first.maintenance_margin,
            "liquidation_fee": first.liquidation_fee,
        },
    }


def cumulative_funding(funding: pd.DataFrame, symbols: Sequence[str], index: pd.DatetimeIndex) -> np.ndarray:
    """Per bar and market: the funding it settled so far (received positive)."""
    flows = np.zeros((len(index), len(symbols)))
    rows = index.get_indexer(pd.DatetimeIndex(funding["settled_time"]))
    for row, symbol, amount in zip(rows, funding["symbol"], funding["amount"].to_numpy(np.float64)):
        flows[row, list(symbols).index(symbol)] += amount
    return np.cumsum(flows, axis=0)
