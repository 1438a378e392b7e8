"""Where candles come from, one module per kind of source: ccxt REST with its per-exchange quirks
(``ccxt_rest``: the common forward paging and Binance; ``okx``: backward paging)."""

from atlas_pipeline.market_data.sources.ccxt_rest import BinanceRest, CcxtRest, OhlcvFetcher, PagingError
from atlas_pipeline.market_data.sources.okx import OkxRest

_REST: dict[str, type[CcxtRest]] = {"binance": BinanceRest, "okx": OkxRest}


def rest_for(exchange_id: str) -> CcxtRest:
    """The REST quirks of ``exchange_id``; exchanges without their own behave like the common case."""
    return _REST.get(exchange_id, CcxtRest)()


__all__ = ["BinanceRest", "CcxtRest", "OhlcvFetcher", "OkxRest", "PagingError", "rest_for"]
