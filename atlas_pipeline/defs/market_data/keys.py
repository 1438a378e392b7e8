"""Asset keys of the market data assets, in a module that imports only Dagster and the store's
dataset names: ``atlas fetch`` checks what is up to date with them before it loads (or needs) the
definitions and the exchange code (``launch.py``)."""

import dagster as dg

from atlas_pipeline.market_data.store import CANDLES, Dataset


def ohlcv_asset_key(exchange: str, timeframe: str, dataset: Dataset = CANDLES) -> dg.AssetKey:
    """``<exchange>/ohlcv_<timeframe>``, or ``<exchange>/markprice_<timeframe>`` for perpetual
    swaps' mark prices: the UI graph labels a node with the key's last part, so it names the
    dataset and the timeframe."""
    return dg.AssetKey([exchange, f"{dataset.name}_{timeframe}"])
