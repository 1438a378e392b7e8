"""Progress of long work (fetches, sweeps) for whoever listens in this process, e.g. the CLI.

Domain code calls ``report(label, done, total)``; without a listener that costs one empty-list
check. The CLI runs Dagster materializations in-process, so a listener it registers with
``listening`` sees the work of the run's steps and draws progress bars with rate and ETA. The
Dagster UI's runs have no listener: there, progress goes through Dagster's logger as before.
Plain Python, no Dagster, so every layer may report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Listener = Callable[[str, float, float, str], None]
"""``(label, done, total, unit)``: ``label`` names one piece of work (e.g. ``binance BTC/USDT 1h``);
``done`` grows to ``total`` (in ``unit``, e.g. days or candidates)."""

_listeners: list[Listener] = []


def report(label: str, done: float, total: float, unit: str) -> None:
    for listener in _listeners:
        listener(label, done, total, unit)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
