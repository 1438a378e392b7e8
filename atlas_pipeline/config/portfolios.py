"""Typed settings for the ``portfolios:`` section of ``config/backtests.yaml``: one strategy traded
on several markets with one account (``docs/trading-model.md``, "Portfolios").

Checked at load time like the backtests (every error names the file, ``portfolios.<name>.<key>``
and the value): the exchange entry, timeframe and markets must be collected in ``exchanges.yaml``,
``max_positions`` cannot exceed the markets, ``rebalance.every`` must be whole candles.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atlas_pipeline.config.backtests import _NAME, BACKTESTS_FILE, RunSettings
from atlas_pipeline.config.backtests import _check_references as check_references
from atlas_pipeline.config.errors import ConfigError
from atlas_pipeline.config.exchanges import ExchangesConfig
from atlas_pipeline.config.loading import read_section, read_yaml, validation_error_to_config_error
from atlas_pipeline.config.paths import config_dir
from atlas_pipeline.market_data.candles import timeframe_ms

SECTION = "portfolios"
_DURATION = re.compile(r"^([1-9][0-9]*)([mhdw])$")
_UNIT_MS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def duration_ms(text: str) -> int:
    """``30m``, ``4h``, ``1d``, ``1w`` in ms."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError("must be a whole number of minutes, hours, days or weeks such as '4h', '1d' or '1w'")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


class Rebalance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    every: str = "1d"
    """Scheduled rebalances: the first decision bar of each such period (aligned to 00:00 UTC)."""
    threshold: float = Field(default=0.05, ge=0, lt=1)
    """A held market is traded back to its target only when its weight is off by more than this."""

    @field_validator("every")
    @classmethod
    def _duration(cls, value: str) -> str:
        duration_ms(value)
        return value


class PortfolioSettings(RunSettings):
    """One named portfolio: a strategy's signals on several markets of one exchange entry, one
    account; spot, or perpetual swaps with ``market_type: swap`` (``RunSettings``). Its
    ``sizing.fraction`` is the sum of the target weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    allocation: Literal["equal", "inverse_volatility"] = "equal"
    volatility_window: int | None = Field(default=None, ge=2)
    """Bars of returns in ``inverse_volatility``'s trailing volatility (required there)."""
    max_positions: int | None = Field(default=None, ge=1)
    rebalance: Rebalance = Field(default_factory=Rebalance)

    @field_validator("name")
    @classmethod
    def _asset_key_safe(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lower_snake_case (it becomes the asset key <name>/portfolio)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PortfolioSettings:
        if self.allocation == "inverse_volatility" and self.volatility_window is None:
            raise ValueError("allocation inverse_volatility needs volatility_window (bars of returns)")
        if self.allocation == "equal" and self.volatility_window is not None:
            raise ValueError("volatility_window is only used by allocation inverse_volatility")
        if self.max_positions is not None and self.max_positions > len(self.symbols):
            raise ValueError(f"max_positions {self.max_positions} exceeds the {len(self.symbols)} market(s) in symbols")
        return self

    def rebalance_every_ms(self) -> int:
        return duration_ms(self.rebalance.every)


class PortfoliosConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    portfolios: dict[str, PortfolioSettings] = Field(default_factory=dict)

    def get(self, name: str) -> PortfolioSettings:
        try:
            return self.portfolios[name]
        except KeyError:
            raise KeyError(f"portfolio {name!r} is not configured; configured: {sorted(self.portfolios)}") from None


def load_portfolios_config(exchanges: ExchangesConfig, directory: Path | str | None = None) -> PortfoliosConfig:
    """The ``portfolios:`` section of ``backtests.yaml`` (absent file or section: none), checked
    against ``exchanges``."""
    path = Path(directory or config_dir()) / BACKTESTS_FILE
    if not path.is_file():
        return PortfoliosConfig()
    raw = read_yaml(path)
    if not isinstance(raw, dict) or SECTION not in raw:
        return PortfoliosConfig()  # the backtests loader reports a malformed file
    parsed: dict[str, PortfolioSettings] = {}
    for name, settings in read_section(path, SECTION, siblings=("backtests",)).items():
        key = f"{SECTION}.{name}"
        try:
            portfolio = PortfolioSettings(name=str(name), **settings)
        except ValidationError as error:
            raise validation_error_to_config_error(error, path, key, {"name": name, **settings}) from None
        _check_references(path, key, portfolio, exchanges)
        parsed[portfolio.name] = portfolio
    return PortfoliosConfig(portfolios=parsed)


def _check_references(path: Path, key: str, portfolio: PortfolioSettings, exchanges: ExchangesConfig) -> None:
    """As a backtest's (collected exchange, timeframe, markets, history), and whole-candle rebalances."""
    check_references(path, key, portfolio, exchanges)
    if portfolio.rebalance_every_ms() % timeframe_ms(portfolio.timeframe):
        raise ConfigError(
            path, f"{key}.rebalance.every", portfolio.rebalance.every, f"must be a whole number of {portfolio.timeframe} candles"
        )
