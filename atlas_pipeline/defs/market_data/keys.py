"""Asset keys of the market data assets, in a module that imports only Dagster and the store's
dataset names: ``atlas fetch`` checks what is up to date with them before it loads (or needs) the
definitions and the exchange code (``launch.py``)."""

import dagster as dg

from atlas_pipeline.market_data.store import CANDLES, Dataset


def ohlcv_asset_key(exchange: str, timeframe: str, dataset: Dataset = CANDLES) -> dg.AssetKey:
    """``ohlcv/<exchange>/<timeframe>``, or ``markprice/...`` for perpetual swaps' mark prices."""
    return dg.AssetKey([dataset.name, exchange, timeframe])
