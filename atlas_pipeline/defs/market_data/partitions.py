"""Partitions of an exchange's OHLCV assets: UTC day x market.

The market dimension is a static list for an entry that lists its markets, and a dynamic one for
an entry with universe rules: the ``<exchange>/exchange_metadata`` asset adds each market the rules
select (never removes one, so a market that leaves keeps its history and partitions).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from atlas_pipeline.config import ExchangeSettings
from atlas_pipeline.market_data.candles import symbol_key
from atlas_pipeline.market_data.exchange_metadata import read_metadata

DATE = "date"
SYMBOL = "symbol"


def ohlcv_partitions(settings: ExchangeSettings) -> dg.MultiPartitionsDefinition:
    """Days from ``history_start`` through today (today is partial until it closes) x markets.

    Mark prices and funding rates use the same market dimension (their spot partitions stay
    empty): a perp backtest, partitioned by the entry's markets, maps onto all three of its
    inputs with one ``MultiToSingleDimensionPartitionMapping``, which needs that dimension to be
    the very same partitions definition (a swaps-only one failed every run in ``dagster dev``).

    ``end_offset=1`` adds today's partition so intraday refreshes can store the candles closed so
    far; the daily schedule still targets yesterday, which is complete.
    """
    return dg.MultiPartitionsDefinition(
        {
            DATE: dg.DailyPartitionsDefinition(
                start_date=settings.history_start.isoformat(), timezone="UTC", end_offset=1
            ),
            SYMBOL: market_partitions(settings),
        }
    )


def swap_markets(settings: ExchangeSettings) -> list[str]:
    """The perpetual swaps (``BTC/USDT:USDT``) among an entry's listed markets."""
    return [m for m in settings.markets if ":" in m]


def market_partitions(settings: ExchangeSettings) -> dg.PartitionsDefinition:
    if settings.universe is not None:
        return dg.DynamicPartitionsDefinition(name=universe_partitions_name(settings))
    return dg.StaticPartitionsDefinition([symbol_key(m) for m in settings.markets])


def universe_partitions_name(settings: ExchangeSettings) -> str:
    """The dynamic partitions (in the Dagster instance) of an entry's universe markets."""
    return f"{settings.id}_markets"


def symbols_by_key(settings: ExchangeSettings, metadata_file: Path | None = None) -> dict[str, str]:
    """Partition key -> ccxt symbol (``BTC-USDT`` -> ``BTC/USDT``): the listed markets, or every
    market the entry's universe ever selected (from ``metadata_file``; empty before the first
    ``<exchange>/exchange_metadata`` run or without the file)."""
    if settings.universe is None:
        return {symbol_key(m): m for m in settings.markets}
    metadata = read_metadata(metadata_file, settings.id) if metadata_file is not None else None
    return {} if metadata is None else {symbol_key(m.symbol): m.symbol for m in metadata.markets}


def market_keys(settings: ExchangeSettings, instance: dg.DagsterInstance | None = None) -> list[str]:
    """The market dimension's partition keys as they are now, for code that enumerates markets
    (schedules, sensors, the CLI): the listed markets, or the universe's dynamic partitions, which
    need the ``instance``."""
    if settings.universe is None:
        return [symbol_key(m) for m in settings.markets]
    if instance is None:
        raise ValueError(f"{settings.id}: the markets of a universe entry live in the Dagster instance; pass one")
    return list(instance.get_dynamic_partitions(universe_partitions_name(settings)))
