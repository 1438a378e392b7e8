"""What an exchange says about itself, and the active market universe that follows from it.

``collect_exchange_metadata`` asks an exchange (through ccxt) for its supported timeframes, its
markets ranked by 24-hour quote volume, maker/taker fees, each configured market's first candle
per configured timeframe, and whether each configured market is still listed and active.
``write_metadata_yaml`` stores that atomically in ``config/exchange_metadata.yaml`` (one section
per exchange), and ``active_markets`` reads it back: the configured markets minus those the
exchange no longer lists or marks inactive, each drop logged with its reason. Dropping a market
from the active universe never deletes its stored candles.

Fees are ccxt's public defaults (``exchange.fees['trading']``): Binance's ``fetch_trading_fees``
is a private (signed) endpoint, and a research pipeline must not need API keys for metadata.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ccxt
import pandas as pd
import yaml

from atlas_pipeline.atomic_files import write_text_atomic
from atlas_pipeline.market_data.candles import ms_to_iso, timeframe_ms
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection, Logger
from atlas_pipeline.market_data.universe import Rules, resolve_universe

METADATA_FILE = "exchange_metadata.yaml"
ACTIVE, INACTIVE, NOT_LISTED, LEFT_UNIVERSE = "active", "inactive", "not_listed", "left_universe"
FEES_SOURCE = "ccxt public defaults (exchange.fees['trading']); fetch_trading_fees needs API keys"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankedMarket:
    rank: int
    symbol: str
    quote_volume: float
    base_volume: float
    last_price: float | None


@dataclass(frozen=True)
class MarketStatus:
    """A configured market as the exchange sees it; ``reason`` says why it is not active."""

    symbol: str
    status: str  # ACTIVE, INACTIVE or NOT_LISTED
    reason: str = ""

    @property
    def flagged(self) -> bool:
        return self.status != ACTIVE


@dataclass
class ExchangeMetadata:
    exchange: str
    collected_at: str
    timeframes: list[str]
    top_n: int
    top_markets: list[RankedMarket]
    maker_fee: float | None
    taker_fee: float | None
    markets: list[MarketStatus]
    first_candles: dict[str, dict[str, int | None]] = field(default_factory=dict)
    markets_listed: int = 0
    fees_source: str = FEES_SOURCE
    universe: list[str] | None = None
    """Markets the entry's universe rules select now (None: the entry lists its markets).
    ``markets`` then holds every market that was ever a member, so none loses its history."""

    @property
    def flagged(self) -> list[MarketStatus]:
        return [market for market in self.markets if market.flagged]

    def to_dict(self) -> dict[str, Any]:
        return {
            "collected_at": self.collected_at,
            "timeframes": list(self.timeframes),
            "fees": {"maker": self.maker_fee, "taker": self.taker_fee, "source": self.fees_source},
            "markets_listed": self.markets_listed,
            "top_n": self.top_n,
            "top_markets_by_quote_volume": [asdict(market) for market in self.top_markets],
            **({"universe": list(self.universe)} if self.universe is not None else {}),
            "markets": {
                m.symbol: {
                    "status": m.status,
                    **({"reason": m.reason} if m.reason else {}),
                    **(
                        {"first_candles": {tf: _iso(ms) for tf, ms in self.first_candles[m.symbol].items()}}
                        if m.symbol in self.first_candles
                        else {}
                    ),
                }
                for m in self.markets
            },
        }

    @classmethod
    def from_dict(cls, exchange: str, data: dict[str, Any]) -> ExchangeMetadata:
        fees = data.get("fees") or {}
        markets = data.get("markets") or {}
        return cls(
            exchange=exchange,
            collected_at=str(data.get("collected_at", "")),
            timeframes=list(data.get("timeframes") or []),
            top_n=int(data.get("top_n") or 0),
            top_markets=[RankedMarket(**row) for row in data.get("top_markets_by_quote_volume") or []],
            maker_fee=fees.get("maker"),
            taker_fee=fees.get("taker"),
            fees_source=fees.get("source", FEES_SOURCE),
            markets=[MarketStatus(s, v.get("status", ACTIVE), v.get("reason", "")) for s, v in markets.items()],
            first_candles={
                s: {tf: _ms(value) for tf, value in (v["first_candles"] or {}).items()}
                for s, v in markets.items()
                if "first_candles" in v
            },
            markets_listed=int(data.get("markets_listed") or 0),
            universe=None if data.get("universe") is None else list(data["universe"]),
        )


def collect_exchange_metadata(
    client_or_exchange: ExchangeClient | ccxt.Exchange,
    configured_markets: Sequence[str],
    timeframes: Sequence[str],
    top_n: int = 20,
    universe_rules: Rules | None = None,
    previous: ExchangeMetadata | None = None,
) -> ExchangeMetadata:
    """Ask the exchange about itself: ``load_markets``, ``fetch_tickers`` and one klines request
    per listed configured market and timeframe (``since=0, limit=1``: the first candle).

    With ``universe_rules`` the configured markets are the rules' members now plus every earlier
    member in ``previous`` (the last collected metadata); earlier members that left are flagged
    ``left_universe`` with the reason, and first candles already known are not asked again."""
    client = client_or_exchange
    if not isinstance(client, ExchangeClient):
        client = ExchangeClient(ExchangeConnection(exchange_id=client.id), exchange=client)
    exchange = client.exchange
    name = client.connection.exchange_id
    markets = client.load_markets()
    tickers = client.fetch_tickers()
    ranked = sorted(
        (
            (float(t.get("quoteVolume") or 0.0), symbol, t)
            for symbol, t in tickers.items()
            if symbol in markets and markets[symbol].get("active") is not False
        ),
        key=lambda item: (-item[0], item[1]),
    )
    top = [
        RankedMarket(
            rank=i + 1,
            symbol=symbol,
            quote_volume=volume,
            base_volume=float(t.get("baseVolume") or 0.0),
            last_price=None if t.get("last") is None else float(t["last"]),
        )
        for i, (volume, symbol, t) in enumerate(ranked[:top_n])
    ]
    known_firsts = dict(previous.first_candles) if previous is not None else {}
    first_candle = functools.cache(client.first_candle)  # the listing-age rule asks some already
    universe = None
    if universe_rules is not None:
        coarsest = max(timeframes, key=timeframe_ms)
        earlier = [m.symbol for m in previous.markets] if previous is not None else []
        universe = resolve_universe(
            universe_rules, markets, tickers, lambda symbol: first_candle(symbol, coarsest), client.now_ms(), earlier
        )
        configured_markets = [*universe.members, *sorted(set(earlier) - set(universe.members))]
    statuses = [market_status(name, symbol, markets) for symbol in configured_markets]
    if universe is not None:
        statuses = [
            MarketStatus(s.symbol, LEFT_UNIVERSE, f"{name} {s.symbol} left the universe: {universe.left[s.symbol]}")
            if s.status == ACTIVE and s.symbol in universe.left
            else s
            for s in statuses
        ]
    first_candles = {
        status.symbol: {tf: known_firsts.get(status.symbol, {}).get(tf) or first_candle(status.symbol, tf) for tf in timeframes}
        for status in statuses
        if status.status != NOT_LISTED
    }
    trading = (exchange.fees or {}).get("trading") or {}
    return ExchangeMetadata(
        exchange=name,
        collected_at=ms_to_iso(client.now_ms()),
        timeframes=list(exchange.timeframes or {}),
        top_n=top_n,
        top_markets=top,
        maker_fee=trading.get("maker"),
        taker_fee=trading.get("taker"),
        markets=statuses,
        first_candles=first_candles,
        markets_listed=len(markets),
        universe=None if universe is None else universe.members,
    )


def market_status(exchange: str, symbol: str, markets: dict[str, Any]) -> MarketStatus:
    market = markets.get(symbol)
    if market is None:
        return MarketStatus(symbol, NOT_LISTED, f"{exchange} no longer lists {symbol} ({len(markets)} markets listed)")
    if market.get("active") is False:
        info = market.get("info") or {}
        raw = info.get("status") or info.get("state")  # Binance: status BREAK; OKX: state suspend
        detail = f" (status {raw})" if raw else ""
        return MarketStatus(symbol, INACTIVE, f"{exchange} lists {symbol} as inactive{detail}")
    return MarketStatus(symbol, ACTIVE)


def metadata_path(directory: Path | str) -> Path:
    return Path(directory) / METADATA_FILE


def write_metadata_yaml(path: Path | str, metadata: ExchangeMetadata) -> Path:
    """Replace this exchange's section of the YAML at ``path`` atomically (temp file + rename).

    Other exchanges' sections are kept; a lock on the folder serialises writers (two exchange
    assets may run at once), and leaves no lock file behind. If anything fails, the old file is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        document = _read_document(path)
        exchanges = document.setdefault("exchanges", {})
        exchanges[metadata.exchange] = metadata.to_dict()
        text = (
            "# Written by the <exchange>/exchange_metadata assets; do not edit (it is rewritten).\n"
            + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        )
        write_text_atomic(path, text)
    return path


def read_metadata(path: Path | str, exchange: str) -> ExchangeMetadata | None:
    """This exchange's section of the metadata file, or None if there is none yet."""
    section = (_read_document(Path(path)).get("exchanges") or {}).get(exchange)
    return None if section is None else ExchangeMetadata.from_dict(exchange, section)


def flagged_markets(exchange: str, configured: Sequence[str], path: Path | str) -> dict[str, str]:
    """Configured markets the last collected metadata flags (inactive or not listed) -> reason."""
    metadata = read_metadata(path, exchange)
    if metadata is None:
        return {}
    flagged = {m.symbol: m.reason or m.status for m in metadata.flagged}
    return {symbol: flagged[symbol] for symbol in configured if symbol in flagged}


def active_markets(settings: Any, metadata_path: Path | str, log: Logger | None = None) -> list[str]:
    """The configured markets of ``settings`` (an ``ExchangeSettings``) minus those flagged in the
    metadata file, each drop logged with its reason. Without metadata, every configured market is
    active. Stored candles of dropped markets are not touched."""
    log = log or logger
    dropped = flagged_markets(settings.id, settings.markets, metadata_path)
    for symbol, reason in dropped.items():
        log.warning(f"{settings.id} {symbol} dropped from the active universe: {reason} (stored candles are kept)")
    return [symbol for symbol in settings.markets if symbol not in dropped]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_document(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error}); rematerialize exchange_metadata to rewrite it") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping with an 'exchanges' key")
    return document


def _iso(ms: int | None) -> str | None:
    return None if ms is None else ms_to_iso(ms)


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    stamp = pd.Timestamp(value)  # YAML reads ISO strings as datetimes; strings work too
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000)
