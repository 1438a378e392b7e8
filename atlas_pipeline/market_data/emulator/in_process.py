"""The emulator an ``emulator:`` exchange entry is served from: one per process, started on first use.

Why in-process rather than a server the user keeps running: after ``atlas demo`` every command
(``atlas fetch``, runs the UI or the daemon launch, schedules) must find the demo's exchange
without a second terminal. Synthetic markets are seeded, so every process serves the same
candles; the server listens on a free loopback port and dies with its process (daemon thread).
"""

from __future__ import annotations

import os
import threading

from atlas_pipeline.market_data.emulator.server import EmulatorServer, build_emulator

_LOCK = threading.Lock()
_RUNNING: dict[tuple[str, int], tuple[int, EmulatorServer]] = {}
"""(exchange, seed) -> (pid that started it, server); a forked child starts its own."""


def in_process_emulator(exchange: str, seed: int) -> str:
    """Base URL of this process's emulator of ``exchange`` with synthetic markets ``seed``."""
    key = (exchange, seed)
    with _LOCK:
        owner, server = _RUNNING.get(key, (None, None))
        if server is None or owner != os.getpid():
            server = build_emulator(synthetic_seed=seed, exchange=exchange).start()
            _RUNNING[key] = (os.getpid(), server)
        return server.base_url
