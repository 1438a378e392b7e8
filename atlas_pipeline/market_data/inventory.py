"""What the candle store holds, one row per series: span, days, gaps, missing candles.

Built from ``CandleStore.iter_coverage`` (``coverage`` without the frame: the bookkeeping of every
stored day, from Parquet footers only), never from the candles: the cost follows stored days, not
candles (``bench/inventory.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pandas as pd

from atlas_pipeline.market_data.candles import candles_per_day, day_of_ms, day_start_ms, symbol_key, timeframe_ms
from atlas_pipeline.market_data.store import CandleStore, SeriesKey

INVENTORY_COLUMNS = (
    "exchange", "market", "timeframe", "first_candle", "last_candle",
    "days", "candles", "missing_candles", "incomplete_days", "unstored_days",
)
"""first/last_candle: open times (tz-aware UTC; NaT when no candle is stored); days: stored days from
the day of the market's first candle on; missing_candles: slots of complete days after the listing
with no candle (exchange outages); incomplete_days: days stored before they closed (today, or a
fetch cut short); unstored_days: days between the first and the last stored day that are not stored
at all (a hole a fetch has not filled)."""


def inventory(
    store: CandleStore,
    exchange: str | None = None,
    markets: Iterable[str] | None = None,
    timeframes: Iterable[str] | None = None,
) -> pd.DataFrame:
    """One row per stored series (``INVENTORY_COLUMNS``), filtered, sorted by exchange, market, timeframe.

    ``markets`` match a ccxt symbol (``BTC/USDT``) or its path key (``BTC-USDT``).
    """
    wanted_markets = {symbol_key(m) for m in markets} if markets else None
    wanted_timeframes = set(timeframes) if timeframes else None
    rows = [
        series_summary(store, key)
        for key in store.series(exchange)
        if (wanted_markets is None or symbol_key(key.symbol) in wanted_markets)
        and (wanted_timeframes is None or key.timeframe in wanted_timeframes)
    ]
    return pd.DataFrame(rows, columns=list(INVENTORY_COLUMNS))


def series_summary(store: CandleStore, key: SeriesKey) -> dict[str, object]:
    """The inventory row of one series, from its footers (``iter_coverage``) and cached first candle."""
    entries = list(store.iter_coverage(*key))
    first_stored = next((first for _, _, first, _, _ in entries if first is not None), None)
    last_stored = next((last for _, _, _, last, _ in reversed(entries) if last is not None), None)
    listed = store.first_candle(*key)
    if listed is None or (first_stored is not None and first_stored < listed):
        listed = first_stored
    row: dict[str, object] = {
        "exchange": key.exchange, "market": key.symbol, "timeframe": key.timeframe,
        "first_candle": _stamp(first_stored), "last_candle": _stamp(last_stored),
        "days": 0, "candles": sum(entry[1] for entry in entries), "missing_candles": 0,
        "incomplete_days": sum(not entry[4] for entry in entries), "unstored_days": 0,
    }
    if listed is None:  # only empty days: nothing listed yet in the stored range
        return row
    listing_day = day_of_ms(listed)
    listing_iso = listing_day.isoformat()  # ISO days compare as strings
    per_day = candles_per_day(key.timeframe)
    listing_day_expects = per_day - -(-(listed - day_start_ms(listing_day)) // timeframe_ms(key.timeframe))
    days = missing = 0
    span_first = span_last = None
    for iso, rows, _, _, complete in entries:
        if iso < listing_iso:
            continue
        days += 1
        span_first, span_last = span_first or iso, iso
        if complete:
            missing += max(0, (listing_day_expects if iso == listing_iso else per_day) - rows)
    row.update(days=days, missing_candles=missing)
    if days:
        span = (dt.date.fromisoformat(span_last) - dt.date.fromisoformat(span_first)).days + 1
        row["unstored_days"] = span - days
    return row


def _stamp(ms: int | None) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC") if ms is not None else pd.NaT


def inventory_text(table: pd.DataFrame) -> str:
    """The inventory as an aligned plain-text table (dates to the minute, counts with separators)."""
    if table.empty:
        return ""
    shown = table.copy()
    for column in ("first_candle", "last_candle"):
        shown[column] = [t.strftime("%Y-%m-%d %H:%M") if not pd.isna(t) else "-" for t in shown[column]]
    for column in ("days", "candles", "missing_candles", "incomplete_days", "unstored_days"):
        shown[column] = [f"{v:,}" for v in shown[column]]
    shown.columns = ["exchange", "market", "timeframe", "first candle", "last candle", "days", "candles",
                     "missing", "incomplete days", "unstored days"]
    return shown.to_string(index=False)

