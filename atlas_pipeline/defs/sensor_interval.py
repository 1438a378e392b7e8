"""How often the daemon ticks Atlas's sensors: one setting for all of them.

30 s by default (Dagster's own default). ``ATLAS_SENSOR_INTERVAL_SECONDS`` shortens it where reruns
and queue healing should follow sooner (Dagster's daemon looks at sensors every 5 s at most), or
lengthens it on a busy instance; each tick's cost grows with what changed, not with the interval.
"""

from __future__ import annotations

import os

SENSOR_INTERVAL_ENV = "ATLAS_SENSOR_INTERVAL_SECONDS"
DEFAULT_SENSOR_INTERVAL_SECONDS = 30


def sensor_interval_seconds() -> int:
    """``ATLAS_SENSOR_INTERVAL_SECONDS`` if set (a whole number of seconds >= 1), else 30."""
    value = os.environ.get(SENSOR_INTERVAL_ENV, "").strip()
    if not value:
        return DEFAULT_SENSOR_INTERVAL_SECONDS
    try:
        seconds = int(value)
    except ValueError:
        raise ValueError(f"{SENSOR_INTERVAL_ENV}={value!r}: must be a whole number of seconds") from None
    if seconds < 1:
        raise ValueError(f"{SENSOR_INTERVAL_ENV}={value!r}: must be at least 1 second")
    return seconds
