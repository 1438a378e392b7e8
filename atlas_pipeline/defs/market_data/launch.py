"""Materialize OHLCV partition ranges in-process, the way a single-run backfill does.

Used by ``atlas fetch``, the demo and the benchmark, so they run the very asset code the UI runs:
one run per market covering its whole date range, recorded in the given Dagster instance.
"""

import datetime as dt
from collections.abc import Sequence

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
from atlas_pipeline.defs.market_data.partitions import DATE, SYMBOL
from atlas_pipeline.defs.run_hygiene import process_tags
from atlas_pipeline.defs.run_results import LaunchedRun
from atlas_pipeline.market_data.candles import symbol_key


def partition_range_tags(symbol: str, start: dt.date, last_day: dt.date) -> dict[str, str]:
    """Run tags for the rectangle ``[start, last_day]`` x ``symbol``."""
    key = symbol_key(symbol)
    first = dg.MultiPartitionKey({DATE: start.isoformat(), SYMBOL: key})
    last = dg.MultiPartitionKey({DATE: last_day.isoformat(), SYMBOL: key})
    return {ASSET_PARTITION_RANGE_START_TAG: str(first), ASSET_PARTITION_RANGE_END_TAG: str(last)}


def materialize_ohlcv_range(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    exchange: str,
    timeframes: Sequence[str],
    symbols: Sequence[str],
    start: dt.date,
    end: dt.date,
    *,
    full_refresh: bool = False,
    log_level: str = "INFO",
) -> list[LaunchedRun]:
    """One in-process run per market over days ``[start, end)``; stops at the first failure.

    ``log_level`` is the console logger's: INFO shows progress; WARNING keeps a benchmark quiet.
    """
    if end <= start:
        raise ValueError(f"empty date range: start {start} must be before end {end}")
    job = defs.resolve_job_def(f"ohlcv_{exchange}")
    keys = [ohlcv_asset_key(exchange, tf) for tf in timeframes]
    run_config = {
        "ops": {_op_name(key): {"config": {"full_refresh": full_refresh}} for key in keys},
        "loggers": {"console": {"config": {"log_level": log_level}}},  # INFO: progress, not every event
    }
    runs: list[LaunchedRun] = []
    process = process_tags()  # so a run this process leaves behind when killed is marked failed later
    for symbol in symbols:
        result = job.execute_in_process(
            instance=instance,
            asset_selection=keys,
            run_config=run_config,
            tags={**process, **partition_range_tags(symbol, start, end - dt.timedelta(days=1))},
            raise_on_error=False,
        )
        runs.append(LaunchedRun(symbol, result))
        runs[-1].raise_if_interrupted()
        if not result.success:
            break
    return runs


def _op_name(key: dg.AssetKey) -> str:
    return key.to_python_identifier()
