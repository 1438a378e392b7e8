"""Where the emulator's candles come from: the source protocol, timeframe aggregation, and files.

A source only knows candles; the Binance semantics of a klines request (limit, startTime, endTime,
the latest candles) live in ``binance_api`` and work with any source through this protocol.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from atlas_pipeline.market_data.candles import CANDLE_COLUMNS, normalize_candles, timeframe_ms

VALUE_COLUMNS: tuple[str, ...] = CANDLE_COLUMNS[1:]


class UnknownSymbol(KeyError):
    """The source has no market with this ccxt symbol."""


class UnsupportedTimeframe(ValueError):
    """The source cannot build candles of this timeframe (finer than its data, or not a multiple)."""


@runtime_checkable
class CandleSource(Protocol):
    """What the server needs from a candle source. ``candles`` returns open times in [start, end)."""

    def markets(self) -> list[str]: ...

    def candles(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> pd.DataFrame: ...

    def first_candle(self, symbol: str, timeframe: str) -> int | None: ...


@dataclass(frozen=True)
class CandleArrays:
    """A candle frame as numpy arrays: slicing and aggregating these is much cheaper than frames."""

    timestamp: np.ndarray  # int64 ms, sorted, unique
    values: np.ndarray  # float64, shape (n, 5): open, high, low, close, volume

    def __len__(self) -> int:
        return len(self.timestamp)

    def window(self, start_ms: int, end_ms: int) -> CandleArrays:
        lo, hi = np.searchsorted(self.timestamp, [start_ms, end_ms], side="left")
        return CandleArrays(self.timestamp[lo:hi], self.values[lo:hi])

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.values, columns=list(VALUE_COLUMNS))
        frame.insert(0, "timestamp", self.timestamp.astype("int64"))
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CandleArrays:
        frame = normalize_candles(frame)
        return cls(frame["timestamp"].to_numpy(), frame.loc[:, list(VALUE_COLUMNS)].to_numpy())

    @classmethod
    def concat(cls, parts: list[CandleArrays]) -> CandleArrays:
        if not parts:
            return cls(np.empty(0, dtype="int64"), np.empty((0, 5)))
        return cls(np.concatenate([p.timestamp for p in parts]), np.concatenate([p.values for p in parts]))


def aggregate(arrays: CandleArrays, bucket_ms: int) -> CandleArrays:
    """Candles of ``bucket_ms`` from finer sorted candles: open first, high max, low min, close last,
    volume sum. Buckets sit on the epoch grid (so on UTC days) and only buckets with data exist:
    gaps stay gaps, as on the exchange."""
    ts = arrays.timestamp
    if len(ts) == 0:
        return arrays
    bucket = ts - ts % bucket_ms
    starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
    ends = np.concatenate((starts[1:], [len(ts)])) - 1
    v = arrays.values
    out = np.empty((len(starts), 5))
    out[:, 0] = v[starts, 0]
    out[:, 1] = np.maximum.reduceat(v[:, 1], starts)
    out[:, 2] = np.minimum.reduceat(v[:, 2], starts)
    out[:, 3] = v[ends, 3]
    out[:, 4] = np.add.reduceat(v[:, 4], starts)
    return CandleArrays(bucket[starts], out)


def check_multiple(timeframe: str, base_ms: int) -> int:
    """``timeframe`` in ms if it can be built from candles of ``base_ms``, else UnsupportedTimeframe."""
    try:
        ms = timeframe_ms(timeframe)
    except ValueError as error:
        raise UnsupportedTimeframe(str(error)) from error
    if ms % base_ms != 0:
        raise UnsupportedTimeframe(f"timeframe {timeframe!r} is not a multiple of the data's {base_ms} ms candles")
    return ms


def served_markets(
    source: CandleSource, delisted: frozenset[str], removed: frozenset[str], market_id: Callable[[str], str]
) -> dict[str, str]:
    """An emulated API's exchange ids -> symbols: every market of ``source`` but the ``removed``
    ones; ``delisted`` and ``removed`` must be markets of the source."""
    markets = source.markets()
    unknown = sorted((delisted | removed) - set(markets))
    if unknown:
        raise ValueError(f"delisted/removed markets {unknown} are not in the source ({sorted(markets)})")
    return {market_id(symbol): symbol for symbol in markets if symbol not in removed}


def symbol_from_key(key: str) -> str:
    """Inverse of ``candles.symbol_key``: ``ETH-BTC`` -> ``ETH/BTC``, ``BTC-USDT_USDT`` -> ``BTC/USDT:USDT``."""
    return key.replace("-", "/", 1).replace("_", ":", 1)


_FILE_NAME = re.compile(r"^(?P<exchange>[a-z0-9]+)_(?P<key>[A-Za-z0-9]+-[A-Za-z0-9_]+)_(?P<tf>[0-9]+[smhd])\.(?P<ext>parquet|csv)$")


@dataclass(frozen=True)
class _CandleFile:
    path: Path
    timeframe: str
    timeframe_ms: int


class FileCandleSource:
    """Markets from files named ``<exchange>_<BASE-QUOTE>_<timeframe>.parquet|csv`` in a directory.

    Files are read on first use and cached, with every aggregated timeframe. A requested timeframe
    is served from the coarsest file whose timeframe divides it (exactly the file when one
    matches); finer or incompatible timeframes raise ``UnsupportedTimeframe``.
    """

    def __init__(self, directory: str | Path, exchange: str | None = "binance") -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"candle directory {self.directory} does not exist")
        self._files: dict[str, list[_CandleFile]] = {}
        for path in sorted(self.directory.iterdir()):
            match = _FILE_NAME.match(path.name)
            if match is None or (exchange is not None and match["exchange"] != exchange):
                continue
            try:
                ms = timeframe_ms(match["tf"])
            except ValueError:
                continue
            self._files.setdefault(symbol_from_key(match["key"]), []).append(_CandleFile(path, match["tf"], ms))
        self._raw: dict[Path, CandleArrays] = {}
        self._cache: dict[tuple[str, int], CandleArrays] = {}
        self._lock = threading.Lock()

    def markets(self) -> list[str]:
        return sorted(self._files)

    def candles(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        return self._arrays(symbol, timeframe).window(start_ms, end_ms).to_frame()

    def first_candle(self, symbol: str, timeframe: str) -> int | None:
        arrays = self._arrays(symbol, timeframe)
        return int(arrays.timestamp[0]) if len(arrays) else None

    def _arrays(self, symbol: str, timeframe: str) -> CandleArrays:
        files = self._files.get(symbol)
        if files is None:
            raise UnknownSymbol(symbol)
        ms = check_multiple(timeframe, 1)
        usable = [f for f in files if ms % f.timeframe_ms == 0]
        if not usable:
            finest = min(files, key=lambda f: f.timeframe_ms).timeframe
            raise UnsupportedTimeframe(f"{symbol} has {finest} candles at the finest; cannot serve {timeframe!r}")
        source = max(usable, key=lambda f: f.timeframe_ms)
        with self._lock:
            if (symbol, ms) not in self._cache:
                if source.path not in self._raw:
                    self._raw[source.path] = CandleArrays.from_frame(read_candle_file(source.path))
                raw = self._raw[source.path]
                self._cache[(symbol, ms)] = raw if ms == source.timeframe_ms else aggregate(raw, ms)
            return self._cache[(symbol, ms)]


def read_candle_file(path: Path) -> pd.DataFrame:
    """A candle frame from a Parquet or CSV file whose ``timestamp`` is datetimes or int ms."""
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [c for c in CANDLE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing candle columns {missing}")
    stamps = frame["timestamp"]
    if not pd.api.types.is_numeric_dtype(stamps):
        parsed = pd.to_datetime(stamps, utc=True)
        frame = frame.assign(timestamp=parsed.dt.as_unit("ms").astype("int64"))
    return normalize_candles(frame)
