"""How often the daemon ticks Atlas's sensors: one setting for all of them.

30 s by default (Dagster's own default). ``ATLAS_SENSOR_INTERVAL_SECONDS`` shortens it where reruns
and queue healing should follow sooner (Dagster's daemon looks at sensors every 5 s at most), or
lengthens it on a busy instance; each tick's cost grows with what changed, not with the interval.
"""

from __future__ import annotations

import os

SENSOR_INTERVAL_ENV = "ATLAS_SENSOR_INTERVAL_SECONDS"
DEFAULT_SENSOR_INTERVAL_SECONDS = 30


def env_seconds(name: str, kind: type[int] | type[float], minimum: float) -> int | float | None:
    """The number of seconds in environment variable ``name`` (``None`` when unset or blank); a value
    that is not a ``kind`` at least ``minimum`` raises, naming the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    what = "a whole number of seconds" if kind is int else "a number of seconds"
    try:
        seconds = kind(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: must be {what}") from None
    if seconds < minimum:
        raise ValueError(f"{name}={value!r}: must be at least {minimum:g}")
    return seconds


def sensor_interval_seconds() -> int:
    """``ATLAS_SENSOR_INTERVAL_SECONDS`` if set (a whole number of seconds >= 1), else 30."""
    seconds = env_seconds(SENSOR_INTERVAL_ENV, int, 1)
    return DEFAULT_SENSOR_INTERVAL_SECONDS if seconds is None else int(seconds)
