"""Typed settings for ``config/backtests.yaml``: which strategies run on which candles.

Structure and references (exchange, timeframe, markets must be collected in ``exchanges.yaml``)
are checked at load time, naming the backtest, key and value. ``symbols`` defaults to every market
of the exchange entry. Whether the strategy exists and
accepts its params is checked when that backtest runs, so one broken strategy file fails only its
own backtest and the others still run.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import ccxt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atlas_pipeline.config.errors import ConfigError
from atlas_pipeline.config.exchanges import ExchangesConfig
from atlas_pipeline.config.loading import read_section, validation_error_to_config_error
from atlas_pipeline.config.paths import config_dir

BACKTESTS_FILE = "backtests.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class Period(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: dt.date
    end: dt.date | None = None
    """Exclusive; None means through the newest stored candle."""

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


class Sizing(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(default=1.0, gt=0, le=1)
    """Fraction of current equity committed to each entry."""


class Fees(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    maker: float | None = Field(default=None, ge=0, lt=0.1)
    taker: float | None = Field(default=None, ge=0, lt=0.1)


class BacktestSettings(BaseModel):
    """One named backtest: a strategy with params on one exchange's candles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    strategy: str
    params: dict[str, Any] = Field(default_factory=dict)
    exchange: str
    timeframe: str
    symbols: list[str] = Field(min_length=1)
    """The markets this backtest is run and kept current on (default: all of the exchange entry's)."""
    period: Period
    cash: float = Field(default=10_000.0, gt=0)
    sizing: Sizing = Field(default_factory=Sizing)
    fees: Fees = Field(default_factory=Fees)
    slippage: float = Field(default=0.0, ge=0, lt=0.1)

    @field_validator("name")
    @classmethod
    def _asset_key_safe(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lower_snake_case (it becomes the asset keys backtest/<name>, metrics/<name>)")
        return value

    @field_validator("strategy")
    @classmethod
    def _module_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
            raise ValueError("must be a module name in the strategies folder, e.g. sma_crossover")
        return value

    @field_validator("symbols")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("lists a market twice")
        return values

    def taker_fee(self) -> float:
        """Commission per fill: every order Atlas sends is a market order, which pays taker."""
        if self.fees.taker is not None:
            return self.fees.taker
        return exchange_fees(self.exchange)["taker"]


def exchange_fees(exchange_id: str) -> dict[str, float]:
    """Maker/taker fees from ccxt's offline metadata (Binance spot: 0.1% / 0.1%)."""
    trading = getattr(ccxt, exchange_id)().fees.get("trading", {})
    return {"maker": float(trading.get("maker", 0.001)), "taker": float(trading.get("taker", 0.001))}


class BacktestsConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    backtests: dict[str, BacktestSettings] = Field(default_factory=dict)

    def get(self, name: str) -> BacktestSettings:
        try:
            return self.backtests[name]
        except KeyError:
            raise KeyError(f"backtest {name!r} is not configured; configured: {sorted(self.backtests)}") from None


def load_backtests_config(exchanges: ExchangesConfig, directory: Path | str | None = None) -> BacktestsConfig:
    """Load ``backtests.yaml`` (absent file: no backtests) and check it against ``exchanges``."""
    path = Path(directory or config_dir()) / BACKTESTS_FILE
    if not path.is_file():
        return BacktestsConfig()
    parsed: dict[str, BacktestSettings] = {}
    for name, settings in read_section(path, "backtests").items():
        key = f"backtests.{name}"
        source = exchanges.exchanges.get(settings.get("exchange"))
        if "symbols" not in settings and source is not None:
            settings = {**settings, "symbols": list(source.markets)}
        try:
            backtest = BacktestSettings(name=str(name), **settings)
        except ValidationError as error:
            raise validation_error_to_config_error(error, path, key, {"name": name, **settings}) from None
        _check_references(path, key, backtest, exchanges)
        parsed[backtest.name] = backtest
    return BacktestsConfig(backtests=parsed)


def _check_references(path: Path, key: str, backtest: BacktestSettings, exchanges: ExchangesConfig) -> None:
    """A backtest can only read candles that an OHLCV asset collects."""
    source = exchanges.exchanges.get(backtest.exchange)
    if source is None:
        raise ConfigError(path, f"{key}.exchange", backtest.exchange, f"not in exchanges.yaml (configured: {sorted(exchanges.exchanges)})")
    if backtest.timeframe not in source.timeframes:
        raise ConfigError(
            path, f"{key}.timeframe", backtest.timeframe, f"{backtest.exchange} collects only {source.timeframes} (exchanges.yaml)"
        )
    for i, symbol in enumerate(backtest.symbols):
        if symbol not in source.markets:
            raise ConfigError(
                path, f"{key}.symbols[{i}]", symbol, f"{backtest.exchange} collects only {source.markets} (exchanges.yaml)"
            )
    if backtest.period.start < source.history_start:
        raise ConfigError(
            path, f"{key}.period.start", backtest.period.start.isoformat(),
            f"is before {backtest.exchange}'s history_start {source.history_start} (exchanges.yaml)",
        )
