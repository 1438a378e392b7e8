"""Candles from an exchange through ccxt: whole ranges in as few requests as the exchange allows.

Paging is done by Atlas rather than with ccxt's ``paginate`` option, which silently returns only
the newest pages of an old range; how a range is paged and a first candle found differs per
exchange (Binance forward on ``since``, OKX backward on ``until``) and lives in
``market_data/sources`` (``rest_for``). Transient
failures (ccxt's ``OperationFailed`` family: network errors, rate limits, timeouts, unreadable
answers) are retried with exponential backoff; a rate-limit answer's ``Retry-After`` is waited out
in full, up to ``MAX_RETRY_AFTER_SECONDS``, and an HTTP 418 (Binance's IP ban) for the whole ban.
Permanent failures (``BadSymbol``, ``BadRequest``, other ``ExchangeError``s) fail at once with the
market named.
"""

from __future__ import annotations

import copy
import datetime as dt
import email.utils
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import ccxt
import pandas as pd

from atlas_pipeline.market_data.candles import CANDLE_COLUMNS, empty_candles, normalize_candles, round_to_second, timeframe_ms
from atlas_pipeline.market_data.sources import CcxtRest, OhlcvFetcher, PagingError, rest_for
from atlas_pipeline.market_data.sources.ccxt_rest import iso

T = TypeVar("T")
MAX_BACKOFF_SECONDS = 60.0
"""Cap of Atlas's own exponential backoff (answers without a usable ``Retry-After``)."""
FUNDING_PAGE = 1000
"""Funding events per request (Binance's maximum)."""
MAX_RETRY_AFTER_SECONDS = 600.0
"""Longest ``Retry-After`` of a 429/418 answer Atlas waits out (10 min). Asked to wait longer, the
request fails at once naming the wait: retrying early is what gets an IP banned (Binance: 418)."""


class Logger(Protocol):
    """Both ``logging.Logger`` and Dagster's ``context.log`` fit."""

    def info(self, msg: str, *args: Any) -> Any: ...
    def warning(self, msg: str, *args: Any) -> Any: ...


class ExchangeRequestError(RuntimeError):
    """A request that failed for good; the message names exchange, market and the request."""


NOT_LISTED_MESSAGE = "does not list market"
"""In the error for a configured market the exchange does not list: a config mistake, which the
CLI recognises in a run's failure to exit 2 rather than 1."""


@dataclass
class ExchangeConnection:
    """How to reach one exchange (plain values, so this layer needs no config import)."""

    exchange_id: str
    api_url: str | None = None
    timeout_seconds: float = 30.0
    request_limit: int = 1000
    min_request_interval_ms: int | None = None
    max_retries: int = 5
    config_file: str | None = None
    """The exchanges.yaml this connection comes from, named in errors a config edit fixes."""
    credentials: dict[str, str] = field(default_factory=dict, repr=False)
    swaps: bool = False
    """Perpetual swaps (``BTC/USDT:USDT``) are among the markets: load their markets too."""


@dataclass
class FetchResult:
    candles: pd.DataFrame
    requests: int
    retries: int


@dataclass
class _Counters:
    requests: int = 0
    retries: int = 0


def point_at(exchange: ccxt.Exchange, base_url: str) -> None:
    """Replace scheme and host of every REST URL of ``exchange`` with ``base_url``.

    This is how ccxt is pointed at the exchange emulator (or a proxy) while keeping its real paths.
    """
    target = urlsplit(base_url)

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return urlsplit(value)._replace(scheme=target.scheme, netloc=target.netloc).geturl()
        return value

    exchange.urls["api"] = rewrite(exchange.urls["api"])


def build_ccxt_exchange(connection: ExchangeConnection, rest: CcxtRest | None = None) -> ccxt.Exchange:
    rest = rest or rest_for(connection.exchange_id)
    options: dict[str, Any] = {"timeout": int(connection.timeout_seconds * 1000), **connection.credentials}
    if rest.ccxt_options(connection.swaps):  # e.g. spot markets only (see market_data/sources)
        options["options"] = rest.ccxt_options(connection.swaps)
    exchange: ccxt.Exchange = getattr(ccxt, connection.exchange_id)(options)
    rest.prepare(exchange)
    # ccxt hands a 200 answer that is not JSON (an HTML maintenance page, say) to the parser as
    # text, which reads as "no candles"; keeping the parsed JSON lets the client tell them apart.
    exchange.enableLastJsonResponse = True
    if connection.min_request_interval_ms is not None:
        exchange.rateLimit = connection.min_request_interval_ms
        exchange.enableRateLimit = connection.min_request_interval_ms > 0
    if connection.api_url:
        point_at(exchange, connection.api_url)
    return exchange


class ExchangeClient:
    """Fetches closed candles of one exchange; one instance per exchange and run."""

    def __init__(
        self,
        connection: ExchangeConnection,
        *,
        log: Logger | None = None,
        sleep: Callable[[float], None] = time.sleep,
        exchange: ccxt.Exchange | None = None,
    ) -> None:
        self.connection = connection
        self.rest = rest_for(connection.exchange_id)
        self.exchange = exchange or build_ccxt_exchange(connection, self.rest)
        self.log: Logger = log or logging.getLogger(__name__)
        self._sleep = sleep
        self._counters = _Counters()
        self._markets_loaded = False
        self._last_status: int | None = None
        self.price: str | None = None
        """ccxt's ``price`` param of candle requests (``"mark"``: mark-price candles); None: trades."""
        self._watch_http_status()

    def for_price(self, price: str) -> ExchangeClient:
        """This client (same connection, markets and counters) asking for ``price`` candles, e.g.
        ``"mark"`` for a perpetual swap's mark-price candles."""
        other = copy.copy(self)
        other.price = price
        return other

    def _watch_http_status(self) -> None:
        """Remember the HTTP status of each answer. ccxt raises ``DDoSProtection`` for both of
        Binance's 429 (slow down) and 418 (IP banned) and keeps no status, but hands it to this hook."""
        original = self.exchange.on_rest_response

        def on_rest_response(code: Any, *args: Any, **kwargs: Any) -> Any:
            self._last_status = code if isinstance(code, int) else None
            return original(code, *args, **kwargs)

        self.exchange.on_rest_response = on_rest_response

    @property
    def requests_made(self) -> int:
        """Requests sent by this client so far, retries included."""
        return self._counters.requests

    @property
    def retries_made(self) -> int:
        return self._counters.retries

    def now_ms(self) -> int:
        return int(self.exchange.milliseconds())

    def load_markets(self) -> dict[str, Any]:
        if not self._markets_loaded:
            self._call("load markets", self.exchange.load_markets)
            self._markets_loaded = True
        return self.exchange.markets

    def check_market(self, symbol: str) -> None:
        """Fail early, naming the market, when the exchange does not list it."""
        markets = self.load_markets()
        if symbol not in markets:
            raise ExchangeRequestError(
                f"{self.connection.exchange_id} {NOT_LISTED_MESSAGE} {symbol!r} "
                f"({len(markets)} markets listed; check {self.connection.config_file or 'exchanges.yaml'})"
            )

    def fetch_tickers(self) -> dict[str, Any]:
        """Every market's 24-hour ticker (ccxt's ``fetch_tickers``), with the usual retries."""
        self.load_markets()
        return self._call("tickers", self.exchange.fetch_tickers)

    def first_candle(self, symbol: str, timeframe: str) -> int | None:
        """Open time of the market's first candle, or None if it has none yet.

        Binance (and most exchanges that accept ``since``) answer ``since=0`` with the oldest
        candle they have, which is the listing; OKX needs a search (``sources/okx.py``).
        """
        self.check_market(symbol)
        fetch = self._fetcher(symbol, timeframe)
        try:
            return self.rest.first_candle(
                fetch, self.exchange.market(symbol), timeframe_ms(timeframe), self.connection.request_limit, self.now_ms()
            )
        except PagingError as error:
            raise ExchangeRequestError(f"{self.connection.exchange_id} {symbol} {timeframe}: {error}") from error

    def fetch_range(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, on_page: Callable[[int], None] | None = None
    ) -> FetchResult:
        """Closed candles with open time in ``[start_ms, end_ms)``, sorted and de-duplicated.

        Pages until the exchange answers an empty page (nothing left in the range) or a page
        reaches ``end_ms``, so the result is the exchange's whole answer for the range: a day of the
        range without candles really had none. The still-open candle (open time + timeframe beyond
        the exchange's clock) is dropped, so a stored day never holds a candle that will still change.
        ``on_page(newest_ms)``: called after every page with the newest open time fetched so far.
        """
        self.check_market(symbol)
        tf_ms = timeframe_ms(timeframe)
        before = _Counters(self._counters.requests, self._counters.retries)
        pages: list[list[list[Any]]] = []
        fetched, low, high = 0, end_ms, start_ms
        # The exchange's paging (sources/): it stops only on an empty page or once the range is
        # covered, never on a short page (exchanges answer short pages in maintenance gaps, below
        # the documented limit, behind proxies; stopping there would store the rest as empty days).
        paging = self.rest.pages(
            self._fetcher(symbol, timeframe), tf_ms, start_ms, end_ms, self.connection.request_limit, self.now_ms()
        )
        try:
            for rows in paging:
                pages.append(rows)
                fetched += len(rows)
                stamps = [int(row[0]) for row in rows]
                low, high = min(low, *stamps), max(high, *stamps)
                if on_page is not None:
                    on_page(high)
                if len(pages) % 25 == 0:
                    self.log.info(
                        f"{self.connection.exchange_id} {symbol} {timeframe}: {self._counters.requests - before.requests} "
                        f"requests, {fetched:,} candles, {iso(low)}..{iso(high)}"
                    )
        except PagingError as error:
            raise ExchangeRequestError(f"{self.connection.exchange_id} {symbol} {timeframe}: {error}") from error
        frame = _rows_to_frame(pages)
        closed_before = min(end_ms, self.now_ms() - tf_ms + 1)
        frame = frame[(frame["timestamp"] >= start_ms) & (frame["timestamp"] < closed_before)]
        return FetchResult(
            candles=frame.reset_index(drop=True),
            requests=self._counters.requests - before.requests,
            retries=self._counters.retries - before.retries,
        )

    def fetch_funding(self, symbol: str, start_ms: int, end_ms: int) -> FetchResult:
        """Funding events of a perpetual swap with funding time in ``[start_ms, end_ms)``, sorted,
        de-duplicated, as ``timestamp`` (ms) and ``rate`` (``FetchResult.candles``).

        Paged forward on ``since`` (``fetch_funding_rate_history``, 1,000 per page), stopping
        only on an empty page or once past the end, never on a short page (the rule for candles).
        Binance stamps some events a few ms after the grid time: times are rounded to the second.
        """
        self.check_market(symbol)
        before = _Counters(self._counters.requests, self._counters.retries)
        rows: list[tuple[int, float]] = []
        since = start_ms
        while since < end_ms:
            page = self._call(
                f"{symbol} funding since {iso(since)}",
                self.exchange.fetch_funding_rate_history, symbol, since, FUNDING_PAGE, {"until": end_ms - 1},
            )
            if not page:
                break
            try:
                stamps = [int(entry["timestamp"]) for entry in page]
                rows += [(t, float(entry["fundingRate"])) for t, entry in zip(stamps, page)]
            except (KeyError, TypeError, ValueError) as error:
                raise ExchangeRequestError(f"{self.connection.exchange_id} {symbol}: unreadable funding event in {page[:1]!r} ({error})") from error
            if max(stamps) < since:
                raise ExchangeRequestError(f"{self.connection.exchange_id} {symbol}: asked for funding since {iso(since)}, got older events")
            since = max(stamps) + 1
        frame = pd.DataFrame(rows, columns=["timestamp", "rate"]).astype({"timestamp": "int64", "rate": "float64"})
        frame["timestamp"] = round_to_second(frame["timestamp"])
        frame = frame[(frame["timestamp"] >= start_ms) & (frame["timestamp"] < end_ms)]
        frame = frame.drop_duplicates("timestamp", keep="last").sort_values("timestamp", kind="stable").reset_index(drop=True)
        return FetchResult(frame, self._counters.requests - before.requests, self._counters.retries - before.retries)

    def _fetcher(self, symbol: str, timeframe: str) -> OhlcvFetcher:
        """``fetch_ohlcv`` of one market and timeframe with retries, for the exchange's paging."""

        def call(what: str, **kwargs: Any) -> list[list[Any]]:
            if self.price is not None:
                kwargs["params"] = {**kwargs.get("params", {}), "price": self.price}
                what = f"{self.price} price {what}"
            return self._call(f"{symbol} {timeframe} {what}", self.exchange.fetch_ohlcv, symbol, timeframe, **kwargs)

        return OhlcvFetcher(call=call, last_json=lambda: self.exchange.last_json_response)

    def _call(self, what: str, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One exchange request with retries on transient errors; ``what`` names it in errors."""
        name = self.connection.exchange_id
        attempt = 0
        while True:
            self._counters.requests += 1
            try:
                self.exchange.last_http_response = self.exchange.last_json_response = None
                self.exchange.last_response_headers, self._last_status = None, None
                answer = method(*args, **kwargs)
                if self.exchange.last_http_response is not None and self.exchange.last_json_response is None:
                    raise ccxt.BadResponse(f"{name} answered with a body that is not JSON")
                return answer
            except ccxt.OperationFailed as error:
                delay = self._retry_delay(attempt, what, error)
                if attempt >= self.connection.max_retries:
                    raise ExchangeRequestError(
                        f"{name} {what}: still failing after {attempt + 1} attempts: "
                        f"{type(error).__name__}: {_short(error)}"
                    ) from error
                attempt += 1
                self._counters.retries += 1
                self.log.warning(
                    f"{name} {what}: {type(error).__name__} ({_short(error)}); "
                    f"retry {attempt}/{self.connection.max_retries} in {delay:.1f} s"
                )
                self._sleep(delay)
            except ccxt.BaseError as error:
                raise ExchangeRequestError(f"{name} {what}: {type(error).__name__}: {_short(error)}") from error

    def _retry_delay(self, attempt: int, what: str, error: ccxt.OperationFailed) -> float:
        """Seconds to wait before retrying ``error``, or an ``ExchangeRequestError`` not to retry.

        A rate-limit answer (HTTP 429/418, ccxt's ``DDoSProtection`` family) with ``Retry-After``:
        exactly that, up to ``MAX_RETRY_AFTER_SECONDS``; longer fails at once, naming the wait. A
        418 is an IP ban whose Retry-After is the ban's length; without one its length is unknown,
        and requests during a ban only lengthen it, so it is not retried. Anything else (a 429
        without Retry-After included): 0.5 s doubling, capped at ``MAX_BACKOFF_SECONDS``.
        """
        backoff = min(0.5 * 2**attempt, MAX_BACKOFF_SECONDS)
        status = self._last_status
        if not (isinstance(error, ccxt.DDoSProtection) or status in (418, 429)):
            return backoff
        headers = self.exchange.last_response_headers or {}
        now = self.now_ms()
        wait = _retry_after_seconds(headers.get("Retry-After") or headers.get("retry-after"), now)
        name = self.connection.exchange_id
        answer = f"HTTP {status}, " if status else ""
        answer += "the exchange has banned this IP" if status == 418 else "rate limit exceeded"
        if wait is None:
            if status == 418:
                raise ExchangeRequestError(
                    f"{name} {what}: {answer}, with no Retry-After to say for how long; not retrying "
                    "(requests during a ban lengthen it): wait before running again"
                ) from error
            return backoff
        if wait > MAX_RETRY_AFTER_SECONDS:
            until = _iso_seconds(now + int(wait * 1000)) if math.isfinite(wait) else "an unknown time"
            raise ExchangeRequestError(
                f"{name} {what}: {answer}: Retry-After {wait:g} s (until {until} UTC) is longer than "
                f"the {MAX_RETRY_AFTER_SECONDS:g} s Atlas waits; not retrying early (that is what gets "
                f"an IP banned): run again after {until} UTC"
            ) from error
        return wait


def _rows_to_frame(pages: list[list[list[Any]]]) -> pd.DataFrame:
    rows = [row[:6] for page in pages for row in page]
    if not rows:
        return empty_candles()
    try:
        return normalize_candles(pd.DataFrame(rows, columns=list(CANDLE_COLUMNS)))
    except (TypeError, ValueError) as error:
        bad = next((row for row in rows if len(row) < 6 or row[0] is None), rows[0])
        raise ExchangeRequestError(f"unreadable candle in the exchange's answer: {bad!r} ({error})") from error


def _iso_seconds(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")


def _retry_after_seconds(value: Any, now_ms: int) -> float | None:
    """A ``Retry-After`` header in seconds from now: delta-seconds or an HTTP date (RFC 9110);
    None when absent or unreadable."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = when.timestamp() - now_ms / 1000
    return None if math.isnan(seconds) else max(seconds, 0.0)


def _short(error: BaseException, limit: int = 300) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."
