"""Universe rules resolved against what an exchange says: which markets an entry collects now.

Plain data in, plain data out, so the ``<exchange>/exchange_metadata`` asset, the CLI and tests
share it. Markets that were members and no longer qualify stay known (their history and
partitions are kept); they are reported with the reason and no longer fetched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from atlas_pipeline.market_data.candles import DAY_MS


class Rules(Protocol):
    """What ``config.exchanges.UniverseRules`` holds (this layer does not import config)."""

    quote: list[str]
    type: str
    top: int | None
    min_listing_days: int
    include: list[str]
    exclude: list[str]


@dataclass(frozen=True)
class Universe:
    """``members``: the markets that qualify now, best ranked first (``include`` ones last);
    ``left``: earlier members that no longer do -> why."""

    members: list[str]
    left: dict[str, str]


def resolve_universe(
    rules: Rules,
    markets: Mapping[str, Mapping[str, Any]],
    tickers: Mapping[str, Mapping[str, Any]],
    first_candle: Callable[[str], int | None],
    now_ms: int,
    previous: Iterable[str] = (),
) -> Universe:
    """Apply ``rules`` to ccxt's ``markets`` and ``tickers``.

    Candidates are the active markets of the rules' type and quote currencies, not excluded,
    ranked by 24h quote volume. ``first_candle(symbol)`` (a request) is asked only for candidates
    in rank order until ``top`` are found, so the listing-age rule costs about ``top`` requests,
    not one per market of the exchange.
    """
    excluded = set(rules.exclude)

    def eligible(symbol: str) -> bool:
        market = markets.get(symbol)
        return (
            market is not None
            and market.get("active") is not False
            and bool(market.get(rules.type))
            and (not rules.quote or market.get("quote") in rules.quote)
            and symbol not in excluded
        )

    ranked = sorted(
        (symbol for symbol in markets if eligible(symbol)),
        key=lambda symbol: (-float((tickers.get(symbol) or {}).get("quoteVolume") or 0.0), symbol),
    )
    youngest_first = now_ms - rules.min_listing_days * DAY_MS
    members: list[str] = []
    for symbol in ranked:
        if rules.top is not None and len(members) >= rules.top:
            break
        if rules.min_listing_days:
            first = first_candle(symbol)
            if first is None or first > youngest_first:
                continue
        members.append(symbol)
    listed = {symbol for symbol in rules.include if symbol in markets and markets[symbol].get("active") is not False}
    members += sorted(listed - set(members))
    now = set(members)
    left = {symbol: _why_left(symbol, markets, rules) for symbol in previous if symbol not in now}
    return Universe(members, left)


def _why_left(symbol: str, markets: Mapping[str, Mapping[str, Any]], rules: Rules) -> str:
    market = markets.get(symbol)
    if market is None:
        return "no longer listed"
    if market.get("active") is False:
        return "listed as inactive"
    if symbol in rules.exclude:
        return "excluded by the universe rules"
    top = f"the top {rules.top} by 24h quote volume" if rules.top else "the universe rules"
    age = f" listed {rules.min_listing_days}+ days" if rules.min_listing_days else ""
    return f"no longer among {top}{age}"
