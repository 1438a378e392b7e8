"""Where backtest outputs live: ``<root>/backtests/<name>/<SYMBOL-KEY>/``.

- ``equity.parquet``: the equity curve with the close price of each bar (``EQUITY_COLUMNS`` + close)
- ``indicators.parquet``: the strategy's plotted indicator lines over the same bars (their chart
  panels are in ``result.json``; results saved before indicators were recorded have none)
- ``trades.parquet``, ``orders.parquet``: closed trades and every order
- ``funding.parquet``, ``liquidations.parquet``: perp backtests only (docs/trading-model.md)
- ``result.json``: warm-up bars and the parameters the run used
- ``metrics.json`` and ``charts/<name>.png``: written by the metrics step
- ``sweep.parquet``: every candidate of a swept backtest, its metrics and why it was rejected

Portfolio results live in ``<root>/portfolios/<name>/``: ``equity``, ``positions``, ``orders``,
``trades`` and ``attribution`` (``.parquet``), ``charts/equity_drawdown.png`` and ``summary.json``
(metrics and parameters, written last).

Walk-forward results live in ``<root>/walkforward/<name>/<SYMBOL-KEY>/``: ``windows.parquet`` (per
window: bounds, winner, in- and out-of-sample metrics), ``oos_equity.parquet`` (the stitched
out-of-sample equity), ``sweeps.parquet`` (every window's candidates), ``summary.json`` and
``charts/walkforward.png``.

The trials registry lives in ``<root>/trials/<exchange>/<timeframe>/<SYMBOL-KEY>/``: one
``<backtest>-<time>-<id>.parquet`` per sweep or walk-forward run, a row per candidate it evaluated
(``research/trials.py`` has the columns), so the trials on a dataset are known across runs.
A backtest's or walk-forward's ``overfitting.json`` holds its DSR, PBO and bootstrap bands.

Every file is written to a temp name beside it and renamed, so readers (the metrics step, the
leaderboard, a notebook) never see half a result. The root is the candle store's root, so one
``ATLAS_HOME`` (folder or fsspec URL) holds everything.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd

from atlas_pipeline.market_data.candles import symbol_key
from atlas_pipeline.market_data.store import replace_file
from atlas_pipeline.research.results import EQUITY_COLUMNS, BacktestResult
from atlas_pipeline.research.walkforward import WalkForwardResult


@dataclass
class StoredWalkForward:
    """What a report needs of a saved walk-forward (``WalkForwardResult`` without the per-window
    sweeps and segment results): its ``windows``, ``oos_equity`` and ``summary``."""

    windows: pd.DataFrame
    oos_equity: pd.DataFrame
    summary: dict[str, Any]


class ResultStore:
    def __init__(self, root: str) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(str(root))
        self.root = self.root.rstrip("/")

    def folder(self, name: str, symbol: str) -> str:
        return f"{self.root}/backtests/{name}/{symbol_key(symbol)}"

    def url(self, path: str) -> str:
        """A path a user can open: plain for local roots, with the protocol otherwise."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    def save_result(self, name: str, symbol: str, result: BacktestResult) -> str:
        folder = self.folder(name, symbol)
        equity = result.equity.assign(close=result.close)
        self._write(f"{folder}/equity.parquet", _parquet(equity))
        self._write(f"{folder}/trades.parquet", _parquet(result.trades))
        self._write(f"{folder}/orders.parquet", _parquet(result.orders))
        self._write(f"{folder}/indicators.parquet", _parquet(result.indicators))
        for part in _PERP_PARTS:  # perp backtests only (docs/trading-model.md)
            if getattr(result, part) is not None:
                self._write(f"{folder}/{part}.parquet", _parquet(getattr(result, part)))
        meta = {"symbol": symbol, "warmup_bars": result.warmup_bars, "parameters": result.parameters,
                "indicator_panels": result.indicator_panels}
        self._write(f"{folder}/result.json", json.dumps(meta, indent=2, default=str).encode())
        return folder

    def load_result(self, name: str, symbol: str) -> BacktestResult:
        folder = self.folder(name, symbol)
        if not self.fs.exists(f"{folder}/result.json"):
            raise FileNotFoundError(f"no stored result for backtest {name!r} {symbol} (materialize {name}/backtest first)")
        meta = json.loads(self.fs.cat_file(f"{folder}/result.json"))
        equity = self._read(f"{folder}/equity.parquet")
        indicators = self._read(f"{folder}/indicators.parquet") if self.fs.exists(f"{folder}/indicators.parquet") else None
        return BacktestResult(
            equity=equity.loc[:, list(EQUITY_COLUMNS)],
            trades=self._read(f"{folder}/trades.parquet"),
            orders=self._read(f"{folder}/orders.parquet"),
            close=equity["close"],
            warmup_bars=int(meta["warmup_bars"]),
            parameters=dict(meta.get("parameters", {})),
            indicators=indicators if indicators is not None else pd.DataFrame(index=equity.index),
            indicator_panels=dict(meta.get("indicator_panels", {})),
            **{
                part: self._read(f"{folder}/{part}.parquet")
                for part in _PERP_PARTS
                if self.fs.exists(f"{folder}/{part}.parquet")
            },
        )

    def save_metrics(self, name: str, symbol: str, metrics: Mapping[str, Any]) -> str:
        path = f"{self.folder(name, symbol)}/metrics.json"
        self._write(path, json.dumps(dict(metrics), indent=2, default=_json_value).encode())
        return path

    def load_metrics(self, name: str, symbol: str) -> dict[str, Any] | None:
        path = f"{self.folder(name, symbol)}/metrics.json"
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else None

    def save_coverage(self, name: str, symbol: str, coverage: Mapping[str, Any]) -> str:
        """How much of the period the candles the backtest ran on cover (``data_coverage``)."""
        path = f"{self.folder(name, symbol)}/coverage.json"
        self._write(path, json.dumps(dict(coverage), indent=2).encode())
        return path

    def load_coverage(self, name: str, symbol: str) -> dict[str, Any] | None:
        path = f"{self.folder(name, symbol)}/coverage.json"
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else None

    def save_portfolio_chart(self, name: str, chart: str, png: bytes) -> str:
        path = f"{self.portfolio_folder(name)}/charts/{chart}.png"
        self._write(path, png)
        return path

    def save_chart(self, name: str, symbol: str, chart: str, png: bytes) -> str:
        path = self._chart_path(name, symbol, chart)
        self._write(path, png)
        return path

    def load_chart(self, name: str, symbol: str, chart: str) -> bytes | None:
        path = self._chart_path(name, symbol, chart)
        return self.fs.cat_file(path) if self.fs.exists(path) else None

    def _chart_path(self, name: str, symbol: str, chart: str) -> str:
        return f"{self.folder(name, symbol)}/charts/{chart}.png"

    def save_sweep(self, name: str, symbol: str, table: pd.DataFrame) -> str:
        path = f"{self.folder(name, symbol)}/sweep.parquet"
        self._write(path, _parquet(table))
        return path

    def load_sweep(self, name: str, symbol: str) -> pd.DataFrame | None:
        """The stored sweep table (``sweep.SweepResult.table``), None when the backtest never swept."""
        path = f"{self.folder(name, symbol)}/sweep.parquet"
        return self._read(path) if self.fs.exists(path) else None

    def walkforward_folder(self, name: str, symbol: str) -> str:
        return f"{self.root}/walkforward/{name}/{symbol_key(symbol)}"

    def save_walk_forward(self, name: str, symbol: str, result: WalkForwardResult, chart: bytes) -> str:
        folder = self.walkforward_folder(name, symbol)
        sweeps = pd.concat(
            [sweep.table.assign(window=index) for index, sweep in enumerate(result.sweeps)], ignore_index=True
        )
        self._write(f"{folder}/windows.parquet", _parquet(result.windows))
        self._write(f"{folder}/oos_equity.parquet", _parquet(result.oos_equity))
        self._write(f"{folder}/sweeps.parquet", _parquet(sweeps))
        self._write(f"{folder}/summary.json", json.dumps(dict(result.summary), indent=2, default=_json_value).encode())
        self._write(f"{folder}/charts/walkforward.png", chart)
        return folder

    def load_walk_forward(self, name: str, symbol: str) -> StoredWalkForward | None:
        """The stored windows, stitched out-of-sample equity and summary; None when never run."""
        folder = self.walkforward_folder(name, symbol)
        summary = self.load_walk_forward_summary(name, symbol)
        if summary is None:
            return None
        return StoredWalkForward(
            self._read(f"{folder}/windows.parquet"), self._read(f"{folder}/oos_equity.parquet"), summary
        )

    def load_walk_forward_summary(self, name: str, symbol: str) -> dict[str, Any] | None:
        path = f"{self.walkforward_folder(name, symbol)}/summary.json"
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else None

    def trials_folder(self, exchange: str, symbol: str, timeframe: str) -> str:
        return f"{self.root}/trials/{exchange}/{timeframe}/{symbol_key(symbol)}"

    def record_trials(self, exchange: str, symbol: str, timeframe: str, backtest: str, table: pd.DataFrame) -> str:
        """Add one run's trials (a new file: runs never rewrite each other's records)."""
        stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
        path = f"{self.trials_folder(exchange, symbol, timeframe)}/{backtest}-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
        self._write(path, _parquet(table))
        return path

    def trials(self, exchange: str, symbol: str, timeframe: str) -> pd.DataFrame:
        """Every recorded trial on this market and timeframe (empty frame when none)."""
        folder = self.trials_folder(exchange, symbol, timeframe)
        paths = sorted(self.fs.glob(f"{folder}/*.parquet")) if self.fs.exists(folder) else []
        frames = [self._read(p) for p in paths]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def save_overfitting(self, folder: str, stats: Mapping[str, Any]) -> str:
        path = f"{folder}/overfitting.json"
        self._write(path, json.dumps(dict(stats), indent=2, default=_json_value).encode())
        return path

    def load_overfitting(self, folder: str) -> dict[str, Any] | None:
        path = f"{folder}/overfitting.json"
        if not self.fs.exists(path):
            return None
        return {k: _float(v) for k, v in json.loads(self.fs.cat_file(path)).items()}
    def portfolio_folder(self, name: str) -> str:
        return f"{self.root}/portfolios/{name}"

    def save_portfolio(self, name: str, frames: Mapping[str, pd.DataFrame], summary: Mapping[str, Any]) -> str:
        """A portfolio's frames (``<frame>.parquet``) and ``summary.json`` (metrics, parameters);
        the summary is written last, so its presence means the rest is complete."""
        folder = self.portfolio_folder(name)
        for frame_name, frame in frames.items():
            self._write(f"{folder}/{frame_name}.parquet", _parquet(frame))
        self._write(f"{folder}/summary.json", json.dumps(dict(summary), indent=2, default=_json_value).encode())
        return folder

    def load_portfolio(self, name: str, frame_names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
        folder = self.portfolio_folder(name)
        if not self.fs.exists(f"{folder}/summary.json"):
            raise FileNotFoundError(f"no stored result for portfolio {name!r} (materialize {name}/portfolio first)")
        summary = json.loads(self.fs.cat_file(f"{folder}/summary.json"))
        return summary, {frame_name: self._read(f"{folder}/{frame_name}.parquet") for frame_name in frame_names}

    def save_leaderboard(self, table: pd.DataFrame) -> str:
        path = f"{self.root}/backtests/leaderboard.csv"
        self._write(path, table.to_csv(index=False).encode())
        return path

    def _write(self, path: str, data: bytes) -> None:
        replace_file(self.fs, path, data)

    def _read(self, path: str) -> pd.DataFrame:
        with self.fs.open(path, "rb") as handle:
            return pd.read_parquet(handle)


_PERP_PARTS = ("funding", "liquidations")


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def _float(value: Any) -> Any:
    """A number saved by ``_json_value`` as a string ("nan", "inf") back as a float."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _json_value(value: Any) -> Any:
    """NaN/inf metrics stay readable JSON (as strings), timestamps become ISO strings."""
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)
