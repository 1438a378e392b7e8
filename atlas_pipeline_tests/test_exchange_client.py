"""The ccxt exchange client against the emulator: paging, first candle, open candle, retries, errors."""

import datetime as dt

import pytest

from atlas_pipeline.market_data.candles import day_start_ms
from atlas_pipeline.market_data.emulator import FaultRule, FileCandleSource, SyntheticCandleSource
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection, ExchangeRequestError
from atlas_pipeline_tests.support import SHARED_CANDLES, assert_frames_equal, between, shared_candles, needs_shared_candles

pytestmark = needs_shared_candles


def client_for(server, sleeps: list[float] | None = None, **overrides) -> ExchangeClient:
    connection = ExchangeConnection(
        exchange_id="binance",
        api_url=server.base_url,
        timeout_seconds=1,
        request_limit=overrides.pop("request_limit", 1000),
        min_request_interval_ms=0,
        max_retries=overrides.pop("max_retries", 3),
    )
    recorder = sleeps if sleeps is not None else []
    return ExchangeClient(connection, sleep=recorder.append)


@pytest.fixture
def files(emulator_factory):
    return emulator_factory(FileCandleSource(SHARED_CANDLES))


def test_whole_file_in_the_fewest_requests(files) -> None:
    source = shared_candles("binance_ETH-BTC_5m")
    client = client_for(files, request_limit=1000)
    result = client.fetch_range("ETH/BTC", "5m", day_start_ms(dt.date(2018, 1, 1)), day_start_ms(dt.date(2018, 2, 1)))
    assert_frames_equal(result.candles, source)
    # 6 pages of 1000, the last one short, then the empty answer that says nothing is left, and
    # one for the gap before the file's first candle (the range starts 9 days before it)
    assert result.requests == -(-len(source) // 1000) + 1 + 1
    assert result.retries == 0


def test_a_page_that_lost_its_head_is_noticed(files) -> None:
    """A reply reordered and then cut short holds only the newest half of the page; paging on
    from its last candle would skip the rest without a sign. The gap before it is asked for."""
    source = shared_candles("binance_ETH-BTC_5m")
    files.set_faults([
        FaultRule(kind="out_of_order", endpoint="klines", after=2, times=1),
        FaultRule(kind="short_page", endpoint="klines", after=2, times=1),
    ])
    result = client_for(files, request_limit=1000).fetch_range(
        "ETH/BTC", "5m", day_start_ms(dt.date(2018, 1, 1)), day_start_ms(dt.date(2018, 2, 1))
    )
    assert [rule["fired"] for rule in files.faults] == [1, 1]
    assert_frames_equal(result.candles, source)


@pytest.mark.parametrize(
    "fault",
    [
        FaultRule(kind="short_page", endpoint="klines", after=1, times=1, rows=600),  # one short page
        FaultRule(kind="short_page", endpoint="klines", rows=300),  # a cap below the documented limit
    ],
    ids=["one-short-page", "page-cap"],
)
def test_short_pages_never_end_the_range_early(files, fault) -> None:
    """Paging stops on an empty page or at the end, never on a short one (DESIGN.md section 10)."""
    source = shared_candles("binance_ETH-BTC_5m")
    files.set_faults([fault])
    result = client_for(files, request_limit=1000).fetch_range(
        "ETH/BTC", "5m", day_start_ms(dt.date(2018, 1, 1)), day_start_ms(dt.date(2018, 2, 1))
    )
    assert files.faults[0]["fired"] >= 1
    assert_frames_equal(result.candles, source)


def test_range_is_half_open_and_exact(files) -> None:
    source = shared_candles("binance_LTC-BTC_5m")
    start, end = dt.date(2018, 1, 12), dt.date(2018, 1, 14)
    result = client_for(files, request_limit=100).fetch_range("LTC/BTC", "5m", day_start_ms(start), day_start_ms(end))
    assert_frames_equal(result.candles, between(source, start, end))
    assert result.requests == 6  # 576 candles in pages of 100


def test_first_candle_is_the_listing(files) -> None:
    source = shared_candles("binance_UNITTEST-BTC_1m")
    client = client_for(files)
    assert client.first_candle("UNITTEST/BTC", "1m") == int(source["timestamp"].iloc[0])
    assert client.first_candle("ETH/BTC", "1h") == day_start_ms(dt.date(2018, 1, 10)) + 4 * 3_600_000


def test_still_open_candle_is_dropped(emulator_factory) -> None:
    server = emulator_factory(SyntheticCandleSource(seed=3))
    client = client_for(server)
    now = client.now_ms()
    raw = client.exchange.fetch_ohlcv("BTC/USDT", "1h", since=now - 5 * 3_600_000)
    assert raw[-1][0] + 3_600_000 > now  # the exchange does serve the open candle...
    result = client.fetch_range("BTC/USDT", "1h", now - 5 * 3_600_000, now + 3_600_000)
    assert int(result.candles["timestamp"].iloc[-1]) + 3_600_000 <= client.now_ms()  # ...we never keep it
    assert len(result.candles) == len(raw) - 1


def test_rate_limit_waits_as_long_as_retry_after_says(files) -> None:
    files.set_faults([FaultRule(kind="rate_limit", endpoint="klines", times=2, retry_after=7)])
    sleeps: list[float] = []
    client = client_for(files, sleeps)
    result = client.fetch_range("ETH/BTC", "5m", day_start_ms(dt.date(2018, 1, 12)), day_start_ms(dt.date(2018, 1, 13)))
    assert sleeps == [7.0, 7.0]
    assert result.retries == 2 and len(result.candles) == 288


def test_server_errors_back_off_exponentially_then_fail_naming_the_request(files) -> None:
    files.set_faults([FaultRule(kind="server_error", endpoint="klines")])
    sleeps: list[float] = []
    client = client_for(files, sleeps, max_retries=3)
    with pytest.raises(ExchangeRequestError) as caught:
        client.fetch_range("ETH/BTC", "5m", day_start_ms(dt.date(2018, 1, 12)), day_start_ms(dt.date(2018, 1, 13)))
    assert sleeps == [0.5, 1.0, 2.0]
    message = str(caught.value)
    assert "binance ETH/BTC 5m candles since 2018-01-12 00:00" in message
    assert "ExchangeNotAvailable" in message and "4 attempts" in message


def test_market_not_listed_fails_at_once(files) -> None:
    client = client_for(files)
    with pytest.raises(ExchangeRequestError, match="binance does not list market 'DOGE/BTC'"):
        client.fetch_range("DOGE/BTC", "5m", 0, day_start_ms(dt.date(2018, 1, 2)))
    assert files.stats["requests"].get("klines", 0) == 0


def test_permanent_exchange_errors_are_not_retried(files) -> None:
    sleeps: list[float] = []
    client = client_for(files, sleeps)
    with pytest.raises(ExchangeRequestError, match="BadRequest|BadSymbol|ExchangeError"):
        client.fetch_range("ETH/BTC", "2m", 0, day_start_ms(dt.date(2018, 1, 2)))  # binance has no 2m klines
    assert sleeps == []


def test_api_keys_never_reach_errors_or_repr(files) -> None:
    connection = ExchangeConnection("binance", api_url=files.base_url, credentials={"apiKey": "SEKRIT-KEY", "secret": "SEKRIT"})
    assert "SEKRIT" not in repr(connection)
    client = ExchangeClient(connection, sleep=lambda _: None)
    with pytest.raises(ExchangeRequestError) as caught:
        client.fetch_range("DOGE/BTC", "5m", 0, 1)
    assert "SEKRIT" not in str(caught.value)
