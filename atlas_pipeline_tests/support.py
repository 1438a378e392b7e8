"""Helpers shared by the data-path tests: real candles, configs pointing at an emulator, runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from atlas_pipeline.defs.market_data.launch import materialize_ohlcv_range
from atlas_pipeline.defs.run_results import LaunchedRun
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.market_data.candles import CANDLE_COLUMNS, DAY_MS, day_start_ms, timeframe_ms

SHARED_CANDLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "candles"
needs_shared_candles = pytest.mark.skipif(
    not SHARED_CANDLES.is_dir(),
    reason=f"real exchange candles not found at {SHARED_CANDLES} (CI checks out ../shared beside the repo)",
)


def shared_candles(name: str) -> pd.DataFrame:
    """A real candle file from ``../shared/data/candles`` in the candle convention (int ms)."""
    frame = pd.read_parquet(SHARED_CANDLES / f"{name}.parquet")
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    frame["timestamp"] = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    return frame.loc[:, list(CANDLE_COLUMNS)].astype({"timestamp": "int64"}).reset_index(drop=True)


def between(frame: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    mask = (frame["timestamp"] >= day_start_ms(start)) & (frame["timestamp"] < day_start_ms(end))
    return frame[mask].reset_index(drop=True)


def expected_missing(frame: pd.DataFrame, timeframe: str, start: dt.date, end: dt.date) -> int:
    """Grid slots from the first candle to the end of the range with no candle (now is far later)."""
    tf_ms = timeframe_ms(timeframe)
    lo = max(day_start_ms(start), int(frame["timestamp"].iloc[0]))
    hi = day_start_ms(end)
    return (hi - lo) // tf_ms - len(between(frame, start, end))


def write_exchange_config(folder: Path, api_url: str, exchange: str = "binance", **settings: object) -> Path:
    """An ``exchanges.yaml`` for ``exchange`` (default binance) at ``api_url``; ``settings``
    override the defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    entry = {
        "timeframes": ["5m"],
        "markets": ["ETH/BTC", "ADA/BTC"],
        "history_start": "2018-01-01",
        "api_url": api_url,
        "min_request_interval_ms": 0,
        "timeout_seconds": 5,
        "max_retries": 3,
        **settings,
    }
    (folder / "exchanges.yaml").write_text(yaml.safe_dump({"exchanges": {exchange: entry}}))
    return folder


def run_range(
    config_dir: Path,
    store_root: Path,
    instance: dg.DagsterInstance,
    symbols: list[str],
    start: dt.date,
    end: dt.date,
    timeframes: tuple[str, ...] = ("5m",),
    full_refresh: bool = False,
    exchange: str = "binance",
) -> list[LaunchedRun]:
    defs = build_definitions(config_dir, store_root=str(store_root))
    return materialize_ohlcv_range(
        defs, instance, exchange, list(timeframes), symbols, start, end, full_refresh=full_refresh
    )


def assert_frames_equal(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(actual.reset_index(drop=True), expected.reset_index(drop=True), check_exact=True)


def day_counts(frame: pd.DataFrame) -> dict[dt.date, int]:
    counts = (frame["timestamp"] // DAY_MS).value_counts()
    return {dt.date(1970, 1, 1) + dt.timedelta(days=int(day)): int(n) for day, n in counts.items()}
