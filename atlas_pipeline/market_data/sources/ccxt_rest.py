"""How Atlas asks an exchange's REST API for candles through ccxt, and the quirks that differ.

``ExchangeClient`` owns what every exchange shares (retries, rate limits, the still-open candle,
the frame); a ``CcxtRest`` owns what differs per exchange: the ccxt options that keep
``load_markets`` to the spot API, how a range of candles is paged, and how a market's first
candle is found. ``rest_for(exchange_id)`` (in ``sources/__init__``) picks one.

``CcxtRest`` itself is the common case (Binance and most exchanges): ``fetch_ohlcv`` with
``since`` answers the oldest ``limit`` candles from ``since`` on, so a range is paged forward on
``since`` with ``params={"until": end - 1}``, and ``since=0`` answers the listing candle.

Either way a range stops only on an empty page or once the range is covered, never on a short
page: exchanges answer short pages (maintenance gaps, caps below the documented limit, proxies),
and stopping there once stored 1,600 of 3,624 candles and marked the rest empty and complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

Rows = list[list[Any]]


class PagingError(RuntimeError):
    """The exchange answered a page that contradicts the request (the client names the market)."""


@dataclass(frozen=True)
class OhlcvFetcher:
    """One market and timeframe's ``fetch_ohlcv``, with the client's retries: ``call(what,
    since=..., limit=..., params=...)`` returns ccxt's rows (``what`` names the request in logs
    and errors); ``last_json()`` is the exchange's last answer as parsed JSON (before ccxt
    filtered it), for strategies that must see what ccxt dropped."""

    call: Callable[..., Rows]
    last_json: Callable[[], Any]


class CcxtRest:
    """Forward paging on ``since`` (Binance and most exchanges); see the module docstring."""

    exchange_id: str | None = None

    def ccxt_options(self, swaps: bool = False) -> dict[str, Any]:
        """``options`` for the ccxt constructor; ``swaps``: perpetual swaps are collected too."""
        if swaps:
            raise ValueError(f"perpetual swaps are collected from binance only, not {self.exchange_id or 'this exchange'}")
        return {}

    def prepare(self, exchange: Any) -> None:
        """Adjust a constructed ccxt exchange (no requests)."""

    def pages(self, fetch: OhlcvFetcher, tf_ms: int, start_ms: int, end_ms: int, limit: int, now_ms: int) -> Iterator[Rows]:
        """The pages that together hold every candle opening in ``[start_ms, end_ms)``."""
        since = start_ms
        while since < end_ms:
            rows = fetch.call(f"candles since {iso(since)}", since=since, limit=limit, params={"until": end_ms - 1})
            if not rows:
                return  # nothing from `since` to the end
            first = min(int(row[0]) for row in rows)
            last = max(int(row[0]) for row in rows)
            if last < since:
                raise PagingError(f"asked for candles since {iso(since)} and got only older ones (up to {iso(last)})")
            if first > since:
                # A page should start at the first candle from `since`; one that starts later is
                # an outage, or a page that lost its head (reordered, then cut short). Ask for the
                # gap itself: an empty answer confirms it, anything else is what the page lost.
                yield from self.pages(fetch, tf_ms, since, min(first, end_ms), limit, now_ms)
            yield rows
            if last + tf_ms >= end_ms:
                return
            since = last + tf_ms

    def first_candle(self, fetch: OhlcvFetcher, market: Mapping[str, Any], tf_ms: int, limit: int, now_ms: int) -> int | None:
        """Open time of the market's first candle, or None if it has none yet: ``since=0``
        answers the oldest candle the exchange has, which is the listing."""
        rows = fetch.call("first candle", since=0, limit=1)
        return int(rows[0][0]) if rows else None


class BinanceRest(CcxtRest):
    exchange_id = "binance"

    def ccxt_options(self, swaps: bool = False) -> dict[str, Any]:
        # Spot, plus USDⓈ-M ("linear") when swaps are collected (else load_markets walks the
        # futures and options APIs); no currencies and no margin pairs (with API keys,
        # load_markets would also call private wallet and margin APIs).
        types = ["spot", "linear"] if swaps else ["spot"]
        return {"fetchMarkets": {"types": types}, "fetchCurrencies": False, "fetchMargins": False}


def iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")
