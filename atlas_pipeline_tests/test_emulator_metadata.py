"""The emulator's metadata endpoints, driven by real ccxt: 24h tickers (``fetch_tickers``) and
market status (delisted markets halted as BREAK, removed markets gone)."""

from __future__ import annotations

import ccxt
import numpy as np
import pytest

from atlas_pipeline.market_data.candles import DAY_MS, to_ms
from atlas_pipeline.market_data.emulator import EmulatorServer, FileCandleSource, SyntheticCandleSource
from atlas_pipeline.market_data.exchange_client import ExchangeConnection, build_ccxt_exchange
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles, shared_candles

NOW = to_ms("2026-11-22 13:37:21.500")


def ccxt_for(server: EmulatorServer) -> ccxt.binance:
    return build_ccxt_exchange(ExchangeConnection("binance", api_url=server.base_url, timeout_seconds=5))


def last_day_quote_volume(name: str) -> tuple[float, float, int]:
    """Quote volume, volume and close time of a shared file's last day, as kline rows derive them
    (quote volume = volume x typical price (high + low + close) / 3, rounded to 8 decimals)."""
    frame = shared_candles(name)
    last = int(frame["timestamp"].iloc[-1])
    tf = 300_000
    day = frame[frame["timestamp"] >= last + tf - DAY_MS]
    values = day[["high", "low", "close"]].to_numpy()
    quote = np.round(day["volume"].to_numpy() * values.mean(axis=1), 8).sum()
    return float(quote), float(day["volume"].sum()), last + tf - 1


@needs_shared_candles
def test_fetch_tickers_calls_only_exchange_info_and_ticker_24hr_with_the_last_days_volumes(emulator_factory) -> None:
    server = emulator_factory(FileCandleSource(SHARED_CANDLES))
    exchange = ccxt_for(server)
    tickers = exchange.fetch_tickers()
    assert server.stats["requests"] == {"exchangeInfo": 1, "ticker24hr": 1}
    assert sorted(tickers) == server.source.markets()
    for symbol in ("ETH/BTC", "ADA/BTC", "LTC/BTC"):
        quote, volume, close_time = last_day_quote_volume(f"binance_{symbol.replace('/', '-')}_5m")
        ticker = tickers[symbol]
        assert ticker["quoteVolume"] == pytest.approx(quote, rel=1e-12)
        assert ticker["baseVolume"] == pytest.approx(volume, rel=1e-12)
        assert ticker["timestamp"] == close_time
        assert ticker["last"] == pytest.approx(float(shared_candles(f"binance_{symbol.replace('/', '-')}_5m")["close"].iloc[-1]))


def test_ticker_with_symbol_and_symbols_parameters(emulator_factory) -> None:
    markets = {"BTC/USDT": "2020-01-01", "ETH/USDT": "2020-01-01"}
    server = emulator_factory(SyntheticCandleSource(seed=5, markets=markets, now=lambda: NOW))
    exchange = ccxt_for(server)
    exchange.load_markets()
    one = exchange.fetch_ticker("BTC/USDT")
    assert one["symbol"] == "BTC/USDT" and one["quoteVolume"] > 0
    both = exchange.fetch_tickers(["BTC/USDT", "ETH/USDT"])
    assert sorted(both) == ["BTC/USDT", "ETH/USDT"]
    assert both["BTC/USDT"]["quoteVolume"] == one["quoteVolume"]
    assert one["timestamp"] == NOW and one["info"]["openTime"] == NOW - DAY_MS
    status, payload = server.api.answer("ticker24hr", {"symbol": ["NOPEUSDT"]}, server.source.now())
    assert (status, payload["code"]) == (400, -1121)


def test_delisted_market_is_halted_and_removed_market_is_gone(emulator_factory) -> None:
    markets = {"BTC/USDT": "2020-01-01", "ETH/USDT": "2020-01-01", "LTC/USDT": "2020-01-01"}
    server = emulator_factory(SyntheticCandleSource(seed=5, markets=markets), delisted={"ETH/USDT"}, removed={"LTC/USDT"})
    exchange = ccxt_for(server)
    exchange.load_markets()
    assert sorted(exchange.markets) == ["BTC/USDT", "ETH/USDT"]
    assert exchange.markets["ETH/USDT"]["active"] is False
    assert exchange.markets["ETH/USDT"]["info"]["status"] == "BREAK"
    assert exchange.markets["BTC/USDT"]["active"] is True
    tickers = exchange.fetch_tickers()
    assert sorted(tickers) == ["BTC/USDT", "ETH/USDT"]
    assert tickers["ETH/USDT"]["quoteVolume"] == 0 and tickers["BTC/USDT"]["quoteVolume"] > 0
    assert exchange.fetch_ohlcv("ETH/USDT", "1d", since=0, limit=1)  # a halted market keeps its history
    with pytest.raises(ccxt.BadSymbol):
        exchange.publicGetKlines({"symbol": "LTCUSDT", "interval": "1d"})


def test_unknown_status_market_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the source"):
        EmulatorServer(SyntheticCandleSource(seed=1, markets={"BTC/USDT": "2020-01-01"}), delisted={"XRP/USDT"})
