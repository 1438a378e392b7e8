"""Partitions of an exchange's OHLCV assets: UTC day x market."""

from __future__ import annotations

import dagster as dg

from atlas_pipeline.config import ExchangeSettings
from atlas_pipeline.market_data.candles import symbol_key

DATE = "date"
SYMBOL = "symbol"


def ohlcv_partitions(settings: ExchangeSettings) -> dg.MultiPartitionsDefinition:
    """Days from ``history_start`` through today (today is partial until it closes) x markets.

    ``end_offset=1`` adds today's partition so intraday refreshes can store the candles closed so
    far; the daily schedule still targets yesterday, which is complete.
    """
    return dg.MultiPartitionsDefinition(
        {
            DATE: dg.DailyPartitionsDefinition(
                start_date=settings.history_start.isoformat(), timezone="UTC", end_offset=1
            ),
            SYMBOL: dg.StaticPartitionsDefinition([symbol_key(m) for m in settings.markets]),
        }
    )


def symbols_by_key(settings: ExchangeSettings) -> dict[str, str]:
    """Partition key -> ccxt symbol (``BTC-USDT`` -> ``BTC/USDT``)."""
    return {symbol_key(m): m for m in settings.markets}


def market_keys(settings: ExchangeSettings, instance: dg.DagsterInstance | None = None) -> list[str]:
    """The market dimension's partition keys as they are now, for code that enumerates markets
    (schedules, sensors, the CLI). Static today; an exchange entry whose markets come from universe
    rules will read them from ``instance`` (dynamic partitions), so call it with one where you can."""
    return list(symbols_by_key(settings))
