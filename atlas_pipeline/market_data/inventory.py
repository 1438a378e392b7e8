"""What the candle store holds, one row per series: span, days, gaps, missing candles.

Built from ``CandleStore.coverage`` (Parquet footers only: the bookkeeping of every stored day),
never from the candles themselves, so listing a store of 500 markets x 9 years costs footer reads,
not candle reads (``bench/inventory.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from atlas_pipeline.market_data.candles import DAY_MS, candles_per_day, symbol_key, timeframe_ms
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

_EPOCH_ORDINAL = 719_163  # datetime.date(1970, 1, 1).toordinal()


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
    """The inventory row of one series, from its coverage (and its cached first candle)."""
    coverage = store.coverage(*key)
    days = np.array([(d.toordinal() - _EPOCH_ORDINAL) for d in coverage["day"]], dtype=np.int64)  # days since 1970-01-01
    rows = coverage["rows"].to_numpy(dtype=np.int64)
    complete = coverage["complete"].to_numpy(dtype=bool)
    firsts = coverage["first_timestamp"].dropna()
    lasts = coverage["last_timestamp"].dropna()
    first_stored = int(firsts.min()) if len(firsts) else None
    listed = store.first_candle(*key)
    if listed is None or (first_stored is not None and first_stored < listed):
        listed = first_stored
    row: dict[str, object] = {
        "exchange": key.exchange, "market": key.symbol, "timeframe": key.timeframe,
        "first_candle": _stamp(first_stored), "last_candle": _stamp(int(lasts.max()) if len(lasts) else None),
        "days": 0, "candles": int(rows.sum()), "missing_candles": 0,
        "incomplete_days": int((~complete).sum()), "unstored_days": 0,
    }
    if listed is None:  # only empty days: nothing listed yet in the stored range
        return row
    listing_day = listed // DAY_MS
    after = days >= listing_day
    tf_ms = timeframe_ms(key.timeframe)
    expected = np.full(len(days), candles_per_day(key.timeframe), dtype=np.int64)
    before_listing = listed - listing_day * DAY_MS  # ms of the listing day before the first candle
    expected[days == listing_day] -= -(-before_listing // tf_ms)
    counted = after & complete
    row["days"] = int(after.sum())
    row["missing_candles"] = int(np.clip(expected[counted] - rows[counted], 0, None).sum())
    if after.any():
        span = days[after]
        row["unstored_days"] = int(span.max() - span.min() + 1 - len(span))
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

