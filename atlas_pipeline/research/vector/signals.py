"""What a vectorized twin returns, and the bars (with an indicator cache) it reads.

A twin replaces a strategy's per-bar ``next`` by four boolean arrays over every candle, read by
the simulator on each bar ``t >= first`` in this order (the shape of every shipped strategy's
``next``)::

    if long_entry[t]:                        target(LONG)
    elif short_entry[t]:                     target(SHORT)   # FLAT unless allow_short
    elif held > 0 and long_exit[t]
      or held < 0 and short_exit[t]:         target(FLAT)
    (else no call)

``held`` is the position the simulator actually has on that bar, so a rule that depends on the
position (exit only what is held) stays exact through refused orders and ``trade_from``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Signals:
    first: int
    """Bar of the strategy's first ``next`` (backtrader's minimum period - 1): its warm-up."""
    long_entry: np.ndarray
    short_entry: np.ndarray
    long_exit: np.ndarray | None = None
    short_exit: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("long_entry", "short_entry", "long_exit", "short_exit"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, np.ndarray) and value.dtype == np.bool_
                                          and value.flags.c_contiguous):
                object.__setattr__(self, name, np.ascontiguousarray(np.nan_to_num(value) != 0, dtype=np.bool_))


@dataclass
class Bars:
    """One market's candles as float arrays, with a per-bars cache so candidates sharing an
    indicator (the same SMA period) compute it once."""

    timestamp: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    _cache: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_candles(cls, candles: pd.DataFrame) -> Bars:
        return cls(
            candles["timestamp"].to_numpy(np.int64),
            *(np.ascontiguousarray(candles[c].to_numpy(np.float64)) for c in ("open", "high", "low", "close")),
        )

    def __len__(self) -> int:
        return len(self.close)

    def cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key for these bars."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]
