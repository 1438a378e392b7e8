"""Pandera rules for candle frames, grouped into the named checks Atlas reports.

Each blocking check is one small Pandera schema, validated lazily over a whole fetched range at
once (one call per check, not per day: per-day validation of a 9-year backfill would cost more
than the fetch). Failures are reported with the days they fall on, so an asset check can say
which partitions are bad. Gaps are not a schema rule: exchanges have outages, so missing candles
are counted separately and reported as a warning.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from atlas_pipeline.market_data.candles import DAY_MS, day_of_ms, timeframe_ms


class CandleSchema(pa.DataFrameModel):
    """Columns, dtypes and value ranges: UTC ms open times, positive prices, volume >= 0."""

    timestamp: Series[np.int64] = pa.Field(ge=0)
    open: Series[np.float64] = pa.Field(gt=0)
    high: Series[np.float64] = pa.Field(gt=0)
    low: Series[np.float64] = pa.Field(gt=0)
    close: Series[np.float64] = pa.Field(gt=0)
    volume: Series[np.float64] = pa.Field(ge=0)

    class Config:
        strict = True  # no extra columns: the store keeps exactly the candle convention
        coerce = False


@dataclass(frozen=True)
class CheckOutcome:
    """Result of one named check over a range of candles."""

    name: str
    passed: bool
    failures: int = 0
    failing_days: tuple[dt.date, ...] = ()
    examples: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        if self.passed:
            return f"{self.name}: passed"
        days = ", ".join(d.isoformat() for d in self.failing_days[:5])
        more = f" (+{len(self.failing_days) - 5} more days)" if len(self.failing_days) > 5 else ""
        where = f" on {days}{more}" if days else ""
        return f"{self.name}: {self.failures} failing rows{where}; e.g. {'; '.join(self.examples[:3])}"


def row_check(name: str, rule: Callable[[pd.DataFrame], pd.Series], error: str) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(checks=[pa.Check(rule, name=name, error=error)])


def blocking_schemas(timeframe: str, start_ms: int, end_ms: int) -> dict[str, pa.DataFrameSchema]:
    """The blocking checks, by name, for candles of ``timeframe`` in ``[start_ms, end_ms)``."""
    tf_ms = timeframe_ms(timeframe)
    return {
        "candle_schema": CandleSchema.to_schema(),
        "ohlc_sanity": row_check(
            "ohlc_sanity",
            lambda df: (df["high"] >= df[["open", "close", "low"]].max(axis=1))
            & (df["low"] <= df[["open", "close"]].min(axis=1)),
            "high must be >= open, close and low; low must be <= open and close",
        ),
        "unique_timestamps": row_check(
            "unique_timestamps",
            lambda df: ~df["timestamp"].duplicated(keep=False),
            "one candle per open time",
        ),
        "sorted_timestamps": row_check(
            "sorted_timestamps",
            lambda df: df["timestamp"].diff().fillna(0) >= 0,
            "candles sorted by open time",
        ),
        "timeframe_grid": row_check(
            "timeframe_grid",
            lambda df: df["timestamp"] % tf_ms == 0,
            f"open times on the {timeframe} grid (multiples of {tf_ms} ms)",
        ),
        "inside_partition": row_check(
            "inside_partition",
            lambda df: (df["timestamp"] >= start_ms) & (df["timestamp"] < end_ms),
            f"open times inside the partitions' days [{_iso(start_ms)}, {_iso(end_ms)})",
        ),
    }


BLOCKING_CHECKS: tuple[str, ...] = (
    "candle_schema",
    "ohlc_sanity",
    "unique_timestamps",
    "sorted_timestamps",
    "timeframe_grid",
    "inside_partition",
)
GAPS_CHECK = "missing_candles"


def validate_candles(frame: pd.DataFrame, timeframe: str, start_ms: int, end_ms: int) -> list[CheckOutcome]:
    """Run every blocking check over ``frame``; one outcome per check, in ``BLOCKING_CHECKS`` order."""
    return run_checks(frame, blocking_schemas(timeframe, start_ms, end_ms))


def run_checks(frame: pd.DataFrame, schemas: dict[str, pa.DataFrameSchema]) -> list[CheckOutcome]:
    """Each named schema validated lazily over ``frame`` (a ``timestamp`` column in ms); one
    outcome per check, with the failing rows' days."""
    frame = frame.reset_index(drop=True)
    outcomes = []
    for name, schema in schemas.items():
        try:
            schema.validate(frame, lazy=True)
        except pa.errors.SchemaErrors as errors:
            outcomes.append(_outcome_from_failures(name, frame, errors.failure_cases))
        else:
            outcomes.append(CheckOutcome(name=name, passed=True))
    return outcomes


def _outcome_from_failures(name: str, frame: pd.DataFrame, cases: pd.DataFrame) -> CheckOutcome:
    """Failing rows, their days, and a few readable examples (the candle, or Pandera's own words)."""
    rows = pd.to_numeric(cases["index"], errors="coerce").dropna().astype("int64").unique()
    rows = rows[(rows >= 0) & (rows < len(frame))]
    days: list[dt.date] = []
    examples: list[str] = []
    if len(rows) and pd.api.types.is_integer_dtype(frame["timestamp"]):
        stamps = frame["timestamp"].to_numpy()[rows]
        days = sorted({day_of_ms(ts) for ts in stamps})
        for row in rows[:3]:
            candle = frame.iloc[row]
            values = ", ".join(f"{c}={candle[c]}" for c in frame.columns if c != "timestamp")
            examples.append(f"{_iso(int(candle['timestamp']))} ({values})")
    else:
        for _, case in cases.head(3).iterrows():
            examples.append(f"{case.get('column') or 'frame'}: {case.get('check')} failed on {case.get('failure_case')!r}")
    return CheckOutcome(name, passed=False, failures=len(rows) or len(cases), failing_days=tuple(days), examples=tuple(examples))


def missing_candles(
    frame: pd.DataFrame,
    timeframe: str,
    days: list[dt.date],
    *,
    first_candle_ms: int | None,
    closed_before_ms: int,
) -> dict[dt.date, int]:
    """Missing candles per day: grid slots after the listing and before now with no candle.

    Days before a market's first candle, and the still-open part of today, expect nothing.
    """
    tf_ms = timeframe_ms(timeframe)
    stamps = frame["timestamp"].to_numpy(dtype=np.int64) if len(frame) else np.empty(0, np.int64)
    on_grid = np.unique(stamps[stamps % tf_ms == 0])
    counts = pd.Series(on_grid // DAY_MS).value_counts()
    listed = first_candle_ms if first_candle_ms is not None else closed_before_ms
    missing: dict[dt.date, int] = {}
    for day in days:
        start = (day - dt.date(1970, 1, 1)).days * DAY_MS
        lo = max(start, -(-listed // tf_ms) * tf_ms)
        hi = min(start + DAY_MS, closed_before_ms)
        expected = max(0, -(-(hi - lo) // tf_ms)) if hi > lo else 0
        present = int(counts.get(start // DAY_MS, 0))
        missing[day] = max(0, expected - present)
    return missing


def _iso(ms: int) -> str:
    try:
        stamp = pd.Timestamp(ms, unit="ms", tz="UTC")
        return stamp.strftime("%Y-%m-%d %H:%M") if ms % 60_000 == 0 else stamp.isoformat()
    except (ValueError, OverflowError, NotImplementedError):
        return f"{ms} ms"
