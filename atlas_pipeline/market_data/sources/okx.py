"""OKX's REST quirks, as ccxt ``okx`` (4.5.90) exposes them (the emulator's ``okx_api`` speaks
the same API; its docstring has the details).

OKX pages BACKWARD: a candles request answers the newest ``limit`` (at most 300) candles older
than ``after`` (and newer than ``before``), newest first. ccxt maps ``since`` to
``before = since - 1`` and ``params={"until": t}`` to ``after = t``. So a request for
``[since, until)`` spanning more than one page answers its newest page, not its oldest:
forward paging on ``since`` would stop after one page at the range end and miss the rest, and
``since=0, limit=1`` asks for the window ``[0, 1 candle)``, which is empty. Here a range is paged
from its end towards its start (``until`` = the oldest candle so far); an empty answer means the
window holds no candles, which is final (OKX answers the newest candles of the window, whatever
the gaps), and a short page just moves the cursor.

Moving the cursor to a page's oldest candle trusts that the page is the TOP of its window. Two
things break that, and then the window above the page's newest candle is asked again (one more
request, only then): ccxt keeps at most ``limit`` rows of an answer, the OLDEST after sorting, so
if the exchange sent more (repeated rows) the newest were dropped; and an answer not in OKX's
order (strictly newest first) may have been cut anywhere (reordered, then cut by a proxy).

market/candles serves only the latest 1,440 candles, market/history-candles everything; ccxt
picks by ``since`` against its own clock with no margin, so the endpoint is chosen here with a
margin (``RECENT_CANDLES``) that survives clock skew: candles only for windows well inside the
recent 1,440.

The first candle: the instrument's ``listTime`` (ccxt ``market["created"]``) is a hint, checked
by asking for anything older than the candle found from it (one request: OKX answers the newest
candle older than ``after``, so an empty answer proves there is none); without a hint, or if the
check fails, a binary search over ``after`` (about 30 requests of one candle).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from atlas_pipeline.market_data.sources.ccxt_rest import CcxtRest, OhlcvFetcher, PagingError, Rows, iso

RECENT_CANDLES = 1200
"""Windows starting within this many candles of now use market/candles (which holds 1,440)."""


class OkxRest(CcxtRest):
    exchange_id = "okx"

    def ccxt_options(self, swaps: bool = False) -> dict[str, Any]:
        super().ccxt_options(swaps)  # refuses swaps
        return {"fetchMarkets": {"types": ["spot"]}}  # else also futures, swaps and options

    def prepare(self, exchange: Any) -> None:
        # With API keys, ccxt's load_markets would call the private asset/currencies API (which
        # also needs OKX's passphrase); Atlas reads public data only.
        exchange.has["fetchCurrencies"] = False

    def endpoint(self, start_ms: int, tf_ms: int, now_ms: int) -> str:
        """ccxt's ``type`` for a window starting at ``start_ms``."""
        return "Candles" if start_ms >= now_ms - RECENT_CANDLES * tf_ms else "HistoryCandles"

    def pages(self, fetch: OhlcvFetcher, tf_ms: int, start_ms: int, end_ms: int, limit: int, now_ms: int) -> Iterator[Rows]:
        pending = [(start_ms, end_ms)]  # windows [lo, hi) not yet known; the newest is last
        while pending:
            lo, hi = pending.pop()
            params = {"until": hi, "type": self.endpoint(lo, tf_ms, now_ms)}
            rows = fetch.call(f"candles {iso(lo)}..{iso(hi)} (before {iso(hi)})", since=lo, limit=limit, params=params)
            if not rows:
                continue  # the window holds no candles
            yield rows
            stamps = [int(row[0]) for row in rows]
            oldest, newest = min(stamps), max(stamps)
            if oldest < lo or newest >= hi:
                raise PagingError(
                    f"asked for candles in {iso(lo)}..{iso(hi)} and got {iso(oldest)}..{iso(newest)}"
                )
            if oldest > lo:
                pending.append((lo, oldest))
            if not _top_of_window(rows, fetch.last_json()):
                pending.append((newest + 1, hi))  # asked first: LIFO

    def first_candle(self, fetch: OhlcvFetcher, market: Mapping[str, Any], tf_ms: int, limit: int, now_ms: int) -> int | None:
        def older(t: int) -> int | None:
            """The newest candle opening before ``t``, if any."""
            rows = fetch.call(f"first candle: anything before {iso(t)}", since=None, limit=1, params={"until": t, "type": "HistoryCandles"})
            return max(int(row[0]) for row in rows) if rows else None

        listed = market.get("created")
        known: int | None = None  # some candle, as a start for the search
        if isinstance(listed, int) and 0 < listed <= now_ms:
            lo = listed - listed % tf_ms
            hi = lo + limit * tf_ms
            params = {"until": hi, "type": self.endpoint(lo, tf_ms, now_ms)}
            rows = fetch.call(f"first candle from the listing {iso(listed)}", since=lo, limit=limit, params=params)
            if rows:
                candidate = min(int(row[0]) for row in rows)
                known = older(candidate)
                if known is None:
                    return candidate
        if known is None:
            known = older(now_ms + tf_ms)
            if known is None:
                return None  # no candle at all yet
        lo = 0  # no candle opens before lo; `known` is a candle
        while True:
            mid = lo + (known - lo) // (2 * tf_ms) * tf_ms
            if mid <= lo:
                before = older(known)
                if before is None:
                    return known
                known = before
                continue
            found = older(mid)
            if found is None:
                lo = mid
            else:
                known = found


def _top_of_window(rows: Rows, answer: Any) -> bool:
    """Whether ``rows`` (ccxt's) are all OKX sent, and OKX sent them in its order (strictly newest
    first), so nothing newer than them can be missing from the window."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or len(data) != len(rows):
        return False
    try:
        sent = [int(row[0]) for row in data]
    except (TypeError, ValueError, IndexError):
        return False
    return all(a > b for a, b in zip(sent, sent[1:]))
