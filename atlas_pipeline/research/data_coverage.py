"""How much of a backtest's period its stored candles cover, and the warning when it is thin.

A backtest configured from 2020-01-01 on a store holding 90 days ran on those 90 days and said
nothing: its metrics looked like five years'. ``period_coverage`` compares the period with the
candle store's day bookkeeping (Parquet footers only, no candle read), and ``warning`` says in one
line what is missing: days before the first candle, after the last, and days without candles in
between. The backtest and metrics steps record it; the CLI and the report show it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from atlas_pipeline.market_data.store import CandleStore

MAX_DAYS_NAMED = 3


@dataclass(frozen=True)
class DataCoverage:
    """Stored candles of one market over a backtest period ``[start, end)``, in UTC days."""

    exchange: str
    symbol: str
    timeframe: str
    start: str
    end: str
    """Exclusive; the period's end, or the day after the newest stored candle when it has none."""
    period_days: int
    days_with_candles: int
    first_day: str | None
    last_day: str | None
    missing_inside: list[str]
    """Days between the first and the last day with candles that have none (outages, gaps)."""

    @property
    def days_before_first(self) -> int:
        return _days(self.start, self.first_day) if self.first_day else self.period_days

    @property
    def days_after_last(self) -> int:
        return _days(self.last_day, self.end) - 1 if self.last_day else 0

    @property
    def thin(self) -> bool:
        return bool(self.days_before_first or self.days_after_last or self.missing_inside)

    @property
    def warning(self) -> str | None:
        """One line naming what the candles do not cover; None when they cover the whole period."""
        if not self.thin:
            return None
        series = f"{self.exchange} {self.symbol} {self.timeframe}"
        if self.first_day is None:
            return f"thin data: no stored {series} candles in the period {self.start}..{self.end} (end exclusive)"
        parts = [
            f"thin data: stored {series} candles cover {self.days_with_candles:,} of the period's "
            f"{self.period_days:,} days ({self.start}..{self.end}, end exclusive)"
        ]
        if self.days_before_first:
            parts.append(f"none before {self.first_day} ({_count(self.days_before_first)})")
        if self.days_after_last:
            parts.append(f"none after {self.last_day} ({_count(self.days_after_last)})")
        if self.missing_inside:
            named = ", ".join(self.missing_inside[:MAX_DAYS_NAMED])
            more = f" and {len(self.missing_inside) - MAX_DAYS_NAMED:,} more" if len(self.missing_inside) > MAX_DAYS_NAMED else ""
            parts.append(f"{_count(len(self.missing_inside))} without candles inside ({named}{more})")
        return "; ".join(parts) + "; fetch the rest with atlas fetch"

    def as_dict(self) -> dict:
        return asdict(self)

    def numbers(self) -> dict[str, int]:
        """For Dagster metadata (plotted over time in the UI)."""
        return {
            "period_days": self.period_days,
            "days_with_candles": self.days_with_candles,
            "days_without_candles": self.period_days - self.days_with_candles,
        }


def period_coverage(
    store: CandleStore, exchange: str, symbol: str, timeframe: str, start: dt.date, end: dt.date | None
) -> DataCoverage:
    """Coverage of ``[start, end)`` (``end`` None: through the newest stored day) by stored days
    holding at least one candle. Cost: the footers of the period's files."""
    table = store.coverage(exchange, symbol, timeframe, start, end)
    with_candles = sorted(day for day, rows in zip(table["day"], table["rows"]) if rows > 0 and day >= start)
    if end is None:
        end = (with_candles[-1] if with_candles else start) + dt.timedelta(days=1)
    with_candles = [day for day in with_candles if day < end]
    missing: list[str] = []
    if with_candles:
        have = set(with_candles)
        day = with_candles[0]
        while day < with_candles[-1]:
            if day not in have:
                missing.append(day.isoformat())
            day += dt.timedelta(days=1)
    return DataCoverage(
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        start=start.isoformat(),
        end=end.isoformat(),
        period_days=(end - start).days,
        days_with_candles=len(with_candles),
        first_day=with_candles[0].isoformat() if with_candles else None,
        last_day=with_candles[-1].isoformat() if with_candles else None,
        missing_inside=missing,
    )


def _count(days: int) -> str:
    return f"{days:,} day" + ("" if days == 1 else "s")


def _days(first: str, after: str) -> int:
    return (dt.date.fromisoformat(after) - dt.date.fromisoformat(first)).days
