"""Switchable faults: what can go wrong between ccxt and an exchange, on demand and deterministically.

A ``FaultRule`` names a kind, the endpoint it watches, how many matching requests pass before it
starts (``after``) and how many times it fires (``times``, None = forever). ``FaultPlan`` decides,
per request and under a lock, which rules fire, so concurrent clients still see each rule fire
exactly ``times`` times. Kinds come in three groups, by where they act:
- transport (``rate_limit``, ``server_error``): the request gets an error reply instead;
  ``timeout`` delays the (otherwise normal) reply;
- body (``truncated``, ``malformed``): the reply's bytes are damaged;
- data (``duplicates``, ``out_of_order``, ``bad_ohlc``, ``off_grid``, ``short_page``): rows of a
  successful candle reply are altered, in the emulated API's own row format (``RowLayout``); they
  only fire on a reply with rows to alter (so they never hide an error). ``short_page`` keeps only
  the first ``rows`` rows (default: half) of a page as the API orders it (Binance: the oldest;
  OKX, newest first: the newest), as exchanges do in maintenance gaps or behind proxies; with
  ``times`` unset it is a per-request cap below the documented limit (``short_page:rows=300``).

Endpoints are named per API (Binance: ``klines``, ``exchangeInfo``, ``ticker24hr``, ``ping``,
``time``; Binance USDⓈ-M futures: ``fapiKlines``, ``markPriceKlines``, ``fapiExchangeInfo``,
``fundingRate``, ``premiumIndex``, ``fapiTime``, ``fapiPing``; OKX: ``candles``, ``history-candles``, ``instruments``, ``tickers``, ``time``).
``klines`` also means "every candle endpoint" of whichever API is emulated, so one rule set
works against both; ``candles``/``history-candles`` pick one of OKX's two.

``archive`` is Binance's public data archive (``binance_archive``): a fault on it acts on one
fetch of a file (its ``.CHECKSUM`` and then its zip), optionally only files whose name contains
``file``. Its own kinds: ``not_found`` (404), ``bad_checksum`` (zip bytes altered in transit),
``truncated_zip``, ``wrong_columns``, ``wrong_unit``, ``outside_period`` and ``altered`` (a
published file that is itself wrong, with a checksum that matches it); ``timeout`` on it is a slow
download, ``server_error`` and ``rate_limit`` answer the zip with that error.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TRANSPORT_KINDS = ("rate_limit", "server_error", "timeout")
BODY_KINDS = ("truncated", "malformed")
DATA_KINDS = ("duplicates", "out_of_order", "bad_ohlc", "off_grid", "short_page")
ARCHIVE_KINDS = ("not_found", "bad_checksum", "truncated_zip", "wrong_columns", "wrong_unit", "outside_period", "altered")
KINDS = TRANSPORT_KINDS + BODY_KINDS + DATA_KINDS + ARCHIVE_KINDS
CANDLE_ENDPOINTS = ("klines", "candles", "history-candles", "fapiKlines", "markPriceKlines")
"""Endpoints that answer candle rows: Binance's klines, OKX's candles and history-candles, Binance
USDⓈ-M futures' klines and mark-price klines."""
FUTURES_ENDPOINTS = ("fapiExchangeInfo", "fundingRate", "premiumIndex", "fapiTime", "fapiPing")
ENDPOINTS = (
    "any", *CANDLE_ENDPOINTS, "exchangeInfo", "ticker24hr", "ping", "time", "instruments", "tickers",
    *FUTURES_ENDPOINTS, "archive",
)


@dataclass(frozen=True)
class RowLayout:
    """Where a data fault finds a candle row's times: the open time at ``open_time``, a close time
    (open + timeframe - 1) at ``close_time`` if the API sends one, and whether times are sent as
    text (OKX: ``"1678928760000"``) or numbers (Binance)."""

    open_time: int = 0
    close_time: int | None = None
    text_times: bool = False


BINANCE_ROWS = RowLayout(open_time=0, close_time=6, text_times=False)
OKX_ROWS = RowLayout(open_time=0, close_time=None, text_times=True)


@dataclass(frozen=True)
class FaultRule:
    """One fault. ``retry_after`` (s) is sent as the rate limit's Retry-After (None: no such
    header); ``status`` overrides the HTTP status (rate_limit: 429 or 418; server_error: a 5xx,
    default 503); ``delay`` (s) is how long a
    ``timeout`` holds the reply, longer than the client's timeout (ccxt's default is 10 s);
    ``rows`` is how many rows a ``short_page`` keeps (None: half the page); ``file``: an archive
    fault fires only on files whose name contains it (None: any file)."""

    kind: str
    endpoint: str = "any"
    times: int | None = None
    after: int = 0
    retry_after: float | None = 1.0
    status: int | None = None
    delay: float = 15.0
    rows: int | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"unknown fault endpoint {self.endpoint!r}; known: {', '.join(ENDPOINTS)}")
        if self.kind in DATA_KINDS and self.endpoint not in ("any", *CANDLE_ENDPOINTS):
            raise ValueError(f"fault {self.kind!r} alters candle rows; it cannot watch {self.endpoint!r}")
        if self.kind in ARCHIVE_KINDS and self.endpoint not in ("any", "archive"):
            raise ValueError(f"fault {self.kind!r} acts on archive files; it cannot watch {self.endpoint!r}")
        if self.file is not None and self.kind not in ARCHIVE_KINDS + TRANSPORT_KINDS:
            raise ValueError(f"file applies to archive faults only: {self}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"fault times must be >= 0 or None (forever), got {self.times}")
        if self.rows is not None and (self.kind != "short_page" or self.rows < 1):
            raise ValueError(f"rows applies to short_page only and must be >= 1: {self}")
        if self.after < 0 or (self.retry_after or 0) < 0 or self.delay < 0:
            raise ValueError(f"fault after, retry_after and delay must be >= 0: {self}")
        allowed = {"rate_limit": (418, 429), "server_error": tuple(range(500, 600))}.get(self.kind, ())
        if self.status is not None and self.status not in allowed:
            raise ValueError(f"status {self.status} does not fit fault kind {self.kind!r}")

    @property
    def http_status(self) -> int:
        return self.status or {"rate_limit": 429, "server_error": 503}.get(self.kind, 200)

    def watches(self, endpoint: str, name: str | None = None) -> bool:
        candles = endpoint in CANDLE_ENDPOINTS
        if self.kind in DATA_KINDS and not candles:
            return False
        if (self.kind in ARCHIVE_KINDS or self.file is not None) and endpoint != "archive":
            return False
        if self.file is not None and (name is None or self.file not in name):
            return False
        return self.endpoint in ("any", endpoint) or (self.endpoint == "klines" and candles)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_value(cls, value: FaultRule | str | Mapping[str, Any]) -> FaultRule:
        """A rule from a rule, a CLI spec string or a JSON object (as POSTed to the server)."""
        if isinstance(value, FaultRule):
            return value
        if isinstance(value, str):
            return parse_fault_spec(value)
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"unknown fault fields {sorted(unknown)}")
            return cls(**{k: _coerce(k, v) for k, v in value.items()})
        raise ValueError(f"a fault is a spec string or an object, got {value!r}")


_INT_FIELDS = {"times", "after", "status", "rows"}
_FLOAT_FIELDS = {"retry_after", "delay"}


def _coerce(name: str, value: Any) -> Any:
    if isinstance(value, str) and name in _INT_FIELDS | _FLOAT_FIELDS:
        if value.lower() in ("none", "null", "forever", "inf"):
            return None
        try:
            return int(value) if name in _INT_FIELDS else float(value)
        except ValueError:
            raise ValueError(f"fault {name}={value!r} is not a number") from None
    if name in _FLOAT_FIELDS and isinstance(value, int):
        return float(value)
    return value


def parse_fault_spec(spec: str) -> FaultRule:
    """``kind[:key=value,...]``, e.g. ``rate_limit:times=3,retry_after=1`` or
    ``server_error:endpoint=klines,status=502,after=2``; ``times=none`` means forever."""
    kind, _, rest = spec.strip().partition(":")
    fields: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"fault spec {spec!r}: expected key=value, got {item!r}")
        fields[name.strip()] = value.strip()
    try:
        return FaultRule.from_value({"kind": kind.strip(), **fields})
    except (TypeError, ValueError) as error:
        raise ValueError(f"fault spec {spec!r}: {error}") from None


@dataclass
class _RuleState:
    rule: FaultRule
    seen: int = 0
    fired: int = 0

    def active(self) -> bool:
        return self.seen > self.rule.after and (self.rule.times is None or self.fired < self.rule.times)


@dataclass(frozen=True)
class FaultDecision:
    """The rules that fire on one request: at most one transport and one body fault, any data faults."""

    transport: FaultRule | None = None
    body: FaultRule | None = None
    data: tuple[FaultRule, ...] = ()
    archive: tuple[FaultRule, ...] = ()


class FaultPlan:
    """The current rules and their counters; thread-safe."""

    def __init__(self, rules: Iterable[FaultRule | str | Mapping[str, Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._states: list[_RuleState] = []
        self.set(rules)

    def set(self, rules: Iterable[FaultRule | str | Mapping[str, Any]]) -> None:
        states = [_RuleState(FaultRule.from_value(rule)) for rule in rules]
        with self._lock:
            self._states = states

    def clear(self) -> None:
        self.set(())

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**s.rule.to_dict(), "seen": s.seen, "fired": s.fired} for s in self._states]

    def decide(self, endpoint: str, rows: int = 0, name: str | None = None) -> FaultDecision:
        """Count this request against every rule watching ``endpoint`` and pick the ones that fire.

        ``rows``: the number of rows in a successful candle reply (0 otherwise); a data fault fires
        only where it can be seen (``out_of_order`` needs two rows, ``short_page`` more than it keeps).
        ``name``: the archive file asked for (archive faults with ``file`` fire on matching names).
        """
        transport: _RuleState | None = None
        body: _RuleState | None = None
        data: list[_RuleState] = []
        archive: list[_RuleState] = []
        with self._lock:
            for state in self._states:
                rule = state.rule
                if not rule.watches(endpoint, name):
                    continue
                state.seen += 1
                if not state.active():
                    continue
                if rule.kind in TRANSPORT_KINDS and transport is None:
                    transport = state
                elif rule.kind in BODY_KINDS and body is None:
                    body = state
                elif rule.kind in DATA_KINDS and rows >= _rows_to_show(rule):
                    data.append(state)
                elif rule.kind in ARCHIVE_KINDS:
                    archive.append(state)
            if transport is not None and transport.rule.kind != "timeout":
                body, data, archive = None, [], []  # an error reply replaces the body: nothing else can act
            fired = [s for s in (transport, body, *data, *archive) if s is not None]
            for state in fired:
                state.fired += 1
        return FaultDecision(
            transport.rule if transport else None,
            body.rule if body else None,
            tuple(s.rule for s in data),
            tuple(s.rule for s in archive),
        )


def _rows_to_show(rule: FaultRule) -> int:
    """Rows a klines reply needs for the data fault to show in it."""
    if rule.kind == "short_page":
        return (rule.rows or 1) + 1  # something to cut
    return 2 if rule.kind == "out_of_order" else 1


def corrupt_rows(
    kind: str,
    rows: list[list[Any]],
    keep: int | None = None,
    layout: RowLayout = BINANCE_ROWS,
    tf_ms: int | None = None,
) -> list[list[Any]]:
    """A data fault applied to candle rows ``[openTime, "o", "h", "l", "c", "v", ...]`` laid out
    as ``layout`` (default Binance klines: ``closeTime`` at 6); single-row faults hit the middle
    row, away from a client's page edges. ``keep``: the rows a ``short_page`` keeps (None: half);
    ``tf_ms``: the candles' timeframe, which ``off_grid`` needs when rows carry no close time."""
    if kind == "short_page":
        return [list(row) for row in rows[: keep if keep is not None else len(rows) // 2]]
    rows = [list(row) for row in rows]
    middle = rows[len(rows) // 2]
    if kind == "duplicates":
        return [copy for row in rows for copy in (row, list(row))]
    if kind == "out_of_order":
        return rows[::-1]
    if kind == "bad_ohlc":
        middle[2] = repr(float(middle[3]) * 0.99)  # high below low
        return rows
    if kind == "off_grid":
        if tf_ms is None:
            if layout.close_time is None:
                raise ValueError("off_grid on rows without a close time needs tf_ms")
            tf_ms = int(middle[layout.close_time]) - int(middle[layout.open_time]) + 1
        shift = max(tf_ms // 2, 1)
        for column in (layout.open_time, layout.close_time):
            if column is not None:
                moved = int(middle[column]) + shift
                middle[column] = str(moved) if layout.text_times else moved
        return rows
    raise ValueError(f"{kind!r} is not a data fault")
