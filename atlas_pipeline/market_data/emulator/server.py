"""The emulator's HTTP layer: a loopback server that answers one exchange's paths (Binance spot and
USDⓈ-M futures, or OKX v5; one module per API: ``binance_api``, ``binance_futures_api``,
``okx_api``), applies faults, counts.

Stdlib only (``ThreadingHTTPServer``, HTTP/1.1 keep-alive like the real API), so the offline demo
needs nothing beyond Atlas. Control endpoints under ``/_emulator/`` let a process that does not
own the server (a test driving ``dagster dev``) switch faults and read counters:
``GET|POST|DELETE /_emulator/faults`` and ``GET|DELETE /_emulator/stats``. A Binance emulator
also serves Binance's public data archive under ``/data/`` (``binance_archive``) from the same
candles.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from atlas_pipeline.market_data.emulator.binance_archive import BinanceArchiveApi
from atlas_pipeline.market_data.emulator.binance_futures_api import BinanceSpotAndFutures
from atlas_pipeline.market_data.emulator.faults import FaultPlan, FaultRule, corrupt_rows
from atlas_pipeline.market_data.emulator.okx_api import OkxApi
from atlas_pipeline.market_data.emulator.sources import CandleSource, FileCandleSource
from atlas_pipeline.market_data.emulator.synthetic import SyntheticCandleSource, wall_clock_ms

logger = logging.getLogger(__name__)

FaultLike = FaultRule | str | Mapping[str, Any]
APIS: dict[str, Callable[..., Any]] = {"binance": BinanceSpotAndFutures, "okx": OkxApi}
"""The emulated APIs by ccxt exchange id. Each answers ``answer(endpoint, params, now)`` for its
``paths``, finds candle rows for data faults (``candle_page``) laid out as ``row_layout``, and
has its own ``rate_limit_body`` and ``system_error`` reply."""
EXCHANGES = tuple(APIS)
_JSON = "application/json;charset=UTF-8"
_SERVER_ERROR_PAGES = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MALFORMED_BODY = b"<html><head><title>Maintenance</title></head><body>Back soon.</body></html>"


class _Stats:
    """Request counters; thread-safe, copied out on read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests: Counter[str] = Counter()
            self._statuses: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()

    def request(self, endpoint: str, faults: Iterable[FaultRule]) -> None:
        """Counted on arrival, so a reply held by a timeout fault is already visible."""
        with self._lock:
            self._requests[endpoint] += 1
            self._faults.update(rule.kind for rule in faults)

    def status(self, status: int) -> None:
        """Counted when the reply goes out."""
        with self._lock:
            self._statuses[str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": sum(self._requests.values()),
                "requests": dict(self._requests),
                "statuses": dict(self._statuses),
                "faults_fired": dict(self._faults),
            }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a reply held back by a timeout fault

    def __init__(self, address: tuple[str, int], emulator: EmulatorServer) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End kept-alive connections, whose threads would otherwise still answer after a stop."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AtlasEmulator/1.0"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without TCP_NODELAY the second waits for the
        # client's delayed ACK (40 ms a reply on Linux). Real API servers set it too.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self.server.emulator._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.emulator._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.emulator._handle(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def reply(self, status: int, body: bytes, content_type: str = _JSON, headers: Mapping[str, str] = {}, declared_length: int | None = None) -> None:
        """Send a reply; ``declared_length`` larger than the body models a connection cut mid-body."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body) if declared_length is None else declared_length))
            for name, value in headers.items():
                self.send_header(name, value)
            if declared_length is not None:
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True

    def reply_json(self, status: int, payload: Any) -> None:
        self.reply(status, json.dumps(payload, separators=(",", ":")).encode())


class EmulatorServer:
    """An exchange's REST emulator serving ``source`` on ``http://host:port`` (port 0: a free one):
    ``exchange`` ``"binance"`` (spot and USDⓈ-M perpetuals, the default) or ``"okx"`` (v5);
    ``api_options`` go to that API (OKX: ``history_limit``; Binance: ``funding_seed``).

    The socket is bound on construction, so ``base_url`` is known before serving. ``start()``
    serves from a background thread, ``serve_forever()`` in the foreground (the CLI);
    ``stop()`` is final. The clock ("now" for open candles and ``serverTime``) is ``clock`` if
    given, else the source's ``now()`` if it has one (synthetic), else the wall clock.
    Markets in ``delisted`` are listed as halted (Binance status BREAK, OKX state suspend; ccxt
    ``active: False``); markets in ``removed`` are no longer listed at all (as after a delisting's
    cleanup). ``archive``: options of the Binance archive served under ``/data/``
    (``BinanceArchiveApi``: lags, missing periods, header rows); ``self.archive`` is None for OKX.
    """

    def __init__(
        self,
        source: CandleSource,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Iterable[FaultLike] = (),
        clock: Callable[[], int] | None = None,
        delisted: Iterable[str] = (),
        removed: Iterable[str] = (),
        exchange: str = "binance",
        archive: Mapping[str, Any] | None = None,
        **api_options: Any,
    ) -> None:
        if exchange not in APIS:
            raise ValueError(f"the emulator speaks {', '.join(EXCHANGES)}; not {exchange!r}")
        self.source = source
        self.exchange = exchange
        self.api = APIS[exchange](source, frozenset(delisted), frozenset(removed), **api_options)
        self.archive = (
            BinanceArchiveApi(source, self.api.symbols, getattr(self.api, "futures", None), **(archive or {}))
            if exchange == "binance"
            else None
        )
        self._clock = clock or getattr(source, "now", None) or wall_clock_ms
        self._plan = FaultPlan(faults)
        self._stats = _Stats()
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()
        self._serving = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._httpd = _HTTPServer((host, port), self)
        self.host, self.port = self._httpd.server_address[:2]

    # lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmulatorServer:
        self._claim_serving()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"emulator:{self.port}", daemon=True)
        self._thread.start()
        logger.info("emulator serving %s as %s at %s", type(self.source).__name__, self.exchange, self.base_url)
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C or ``stop()`` from another thread."""
        self._claim_serving()
        try:
            self._httpd.serve_forever(poll_interval=0.1)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving, end open connections and wake replies held by timeout faults. Final."""
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        if self._serving:
            self._httpd.shutdown()  # returns once the serve loop has exited (at once if it has)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd.server_close()
        self._httpd.close_connections()

    def _claim_serving(self) -> None:
        with self._lifecycle:
            if self._serving or self._closed:
                raise RuntimeError("an emulator serves once: it is already serving or stopped")
            self._serving = True

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # faults and stats

    @property
    def faults(self) -> list[dict[str, Any]]:
        """The current rules with how many matching requests each has seen and fired on."""
        return self._plan.snapshot()

    def set_faults(self, faults: Iterable[FaultLike]) -> None:
        """Replace all fault rules (counters start afresh)."""
        self._plan.set(faults)
        if self.archive is not None:
            self.archive.forget()

    def clear_faults(self) -> None:
        self.set_faults(())

    @property
    def stats(self) -> dict[str, Any]:
        """``{"total", "requests": {endpoint: n}, "statuses": {"200": n}, "faults_fired": {kind: n}}``."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    # request handling

    def _handle(self, handler: _Handler, method: str) -> None:
        url = urlsplit(handler.path)
        if url.path.startswith("/_emulator/"):
            self._control(handler, method, url.path)
            return
        if self.archive is not None and url.path.startswith("/data/") and method == "GET":
            self._archive_file(handler, url.path)
            return
        endpoint = self.api.paths.get(url.path)
        if endpoint is None or method != "GET":
            self._stats.request("other", ())
            self._reply(handler, 404, b"Not Found", "text/plain")
            return
        now = int(self._clock())
        params = parse_qs(url.query, keep_blank_values=True)
        try:
            status, payload = self.api.answer(endpoint, params, now)
        except Exception:  # a broken source file, say: answer like the exchange's unknown error, and log it
            logger.exception("emulator failed to answer %s", handler.path)
            status, payload = self.api.system_error
        page = self.api.candle_page(endpoint, params, status, payload)
        decision = self._plan.decide(endpoint, len(page[0]) if page else 0)
        transport = decision.transport
        self._stats.request(endpoint, [r for r in (transport, decision.body, *decision.data) if r is not None])
        if transport is not None and transport.kind == "rate_limit":
            body = json.dumps(self.api.rate_limit_body, separators=(",", ":")).encode()
            retry_after = {} if transport.retry_after is None else {"Retry-After": f"{transport.retry_after:g}"}
            self._reply(handler, transport.http_status, body, headers=retry_after)
            return
        if transport is not None and transport.kind == "server_error":
            page = f"<html><body><h1>{transport.http_status} {_SERVER_ERROR_PAGES.get(transport.http_status, 'Server Error')}</h1></body></html>"
            self._reply(handler, transport.http_status, page.encode(), "text/html")
            return
        if transport is not None:  # timeout: hold the reply past the client's patience
            self._stopping.wait(transport.delay)
        if page is not None and decision.data:
            rows, tf_ms, rebuild = page
            for rule in decision.data:
                rows = corrupt_rows(rule.kind, rows, rule.rows, self.api.row_layout, tf_ms)
            payload = rebuild(rows)
        body = json.dumps(payload, separators=(",", ":")).encode()
        if decision.body is not None and decision.body.kind == "truncated":
            self._reply(handler, status, body[: len(body) // 2], declared_length=len(body))
        elif decision.body is not None:  # malformed
            self._reply(handler, status, _MALFORMED_BODY, "text/html")
        else:
            self._reply(handler, status, body)

    def _archive_file(self, handler: _Handler, path: str) -> None:
        """One archive request; a fetch's faults are decided on its ``.CHECKSUM`` and applied to
        its zip (see ``binance_archive``); transport faults act on the zip."""
        name = path.rsplit("/", 1)[-1].removesuffix(".CHECKSUM")
        checksum = path.endswith(".CHECKSUM")
        endpoint = "archive_checksum" if checksum else "archive"
        carried = None if checksum else self.archive.recall(name)
        transport = None
        if carried is None:
            decision = self._plan.decide("archive", name=name)
            fired = [r for r in (decision.transport, *decision.archive) if r is not None]
            self._stats.request(endpoint, fired)
            carried = (*decision.archive, *([decision.transport] if decision.transport else []))
            if checksum:
                self.archive.remember(name, carried)
        else:
            self._stats.request(endpoint, ())
        if not checksum:
            transport = next((r for r in carried if r.kind in ("rate_limit", "server_error", "timeout")), None)
        if transport is not None and transport.kind == "timeout":
            self._stopping.wait(transport.delay)
        elif transport is not None:
            self._reply(handler, transport.http_status, b"<html><body>error</body></html>", "text/html")
            return
        reply = self.archive.answer(path, carried, int(self._clock()))
        self._reply(handler, reply.status, reply.body, reply.content_type)

    def _reply(self, handler: _Handler, status: int, body: bytes, content_type: str = _JSON, **kwargs: Any) -> None:
        self._stats.status(status)
        handler.reply(status, body, content_type, **kwargs)

    def _control(self, handler: _Handler, method: str, path: str) -> None:
        if path == "/_emulator/stats" and method in ("GET", "DELETE"):
            if method == "DELETE":
                self.reset_stats()
            handler.reply_json(200, self.stats)
        elif path == "/_emulator/faults" and method in ("GET", "POST", "DELETE"):
            if method == "POST":
                try:
                    length = int(handler.headers.get("Content-Length") or 0)
                    document = json.loads(handler.rfile.read(length) or b"[]")
                    if isinstance(document, Mapping) and "faults" in document:
                        document = document["faults"]
                    self.set_faults([document] if isinstance(document, (str, Mapping)) else document)
                except (ValueError, TypeError) as error:
                    handler.reply_json(400, {"error": str(error)})
                    return
            elif method == "DELETE":
                self.clear_faults()
            handler.reply_json(200, {"faults": self.faults})
        else:
            handler.reply(404, b"Not Found", "text/plain")


def build_emulator(
    data_dir: str | Path | None = None,
    synthetic_seed: int | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Iterable[FaultLike] = (),
    exchange: str = "binance",
    data_exchange: str | None = None,
) -> EmulatorServer:
    """An (unstarted) emulator of ``exchange``'s API over a candle directory or a seeded synthetic
    market: exactly one. From a directory it serves the files named for ``data_exchange``
    (default: ``exchange``; e.g. ``binance`` files served as OKX)."""
    if (data_dir is None) == (synthetic_seed is None):
        raise ValueError("give exactly one of data_dir (a candle directory) or synthetic_seed")
    if exchange not in APIS:
        raise ValueError(f"the emulator speaks {', '.join(EXCHANGES)}; not {exchange!r}")
    source: CandleSource
    if data_dir is not None:
        files_of = data_exchange or exchange
        source = FileCandleSource(data_dir, exchange=files_of)
        if not source.markets():
            raise ValueError(f"{data_dir} has no {files_of}_<BASE>-<QUOTE>_<timeframe>.parquet|csv candle files")
    else:
        source = SyntheticCandleSource(synthetic_seed)
    return EmulatorServer(source, host=host, port=port, faults=faults, exchange=exchange)
