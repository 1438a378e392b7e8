"""Typed settings for ``config/backtests.yaml``: which strategies run on which candles.

Structure and references (exchange, timeframe, markets must be collected in ``exchanges.yaml``)
are checked at load time, naming the backtest, key and value. ``symbols`` defaults to every market
of the exchange entry. Whether the strategy exists and
accepts its params is checked when that backtest runs, so one broken strategy file fails only its
own backtest and the others still run.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Any, Literal

import ccxt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atlas_pipeline.config.errors import MISSING, ConfigError, FieldError
from atlas_pipeline.config.exchanges import ExchangesConfig
from atlas_pipeline.config.loading import read_section, validation_error_to_config_error
from atlas_pipeline.config.paths import config_dir
from atlas_pipeline.research.engine.exits import EXIT_KEYS, EXIT_PREFIX, Exits
from atlas_pipeline.market_data.candles import timeframe_ms
from atlas_pipeline.market_data.funding import FUNDING_INTERVALS
from atlas_pipeline.research.stats.overfitting import OverfittingLimits
from atlas_pipeline.research.sweep import CONFIRM_TOP, OBJECTIVE_METRICS, Objective, SweepFilters, expand_grid
from atlas_pipeline.research.walkforward import WalkForwardPlan

BACKTESTS_FILE = "backtests.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_CANDIDATES = 1_000
"""A grid larger than this is almost surely a typo (and hours of compute per market)."""


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


class ExitSettings(BaseModel):
    """Protective exits, fractions of the entry price (docs/trading-model.md); any subset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stop_loss: float | None = Field(default=None, gt=0, lt=1)
    take_profit: float | None = Field(default=None, gt=0, lt=1)
    trailing_stop: float | None = Field(default=None, gt=0, lt=1)

    def exits(self) -> Exits | None:
        values = self.model_dump(exclude_none=True)
        return Exits(**values) if values else None


def _check_exit_grid(name: str, values: list[Any]) -> None:
    """A swept ``exits.<key>``: a known exit, every value a fraction in (0, 1)."""
    key = name.removeprefix(EXIT_PREFIX)
    if key not in EXIT_KEYS:
        raise FieldError(f"grid.{name}", values, f"unknown exit; exits are {', '.join(EXIT_KEYS)}")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise FieldError(f"grid.{name}[{i}]", value, "an exit is a fraction of the entry price, 0 < value < 1")


class Fees(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    maker: float | None = Field(default=None, ge=0, lt=0.1)
    taker: float | None = Field(default=None, ge=0, lt=0.1)


class GridRange(BaseModel):
    """``{start, stop, step}``: start, start + step, ... up to and including stop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int | float
    stop: int | float
    step: int | float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> GridRange:
        if self.stop < self.start:
            raise ValueError(f"stop {self.stop} is below start {self.start}")
        if (self.stop - self.start) / self.step >= MAX_CANDIDATES:
            raise ValueError(f"gives more than {MAX_CANDIDATES} values; raise step")
        return self

    def values(self) -> list[int | float]:
        count = math.floor((self.stop - self.start) / self.step + 1e-9) + 1
        if all(isinstance(v, int) for v in (self.start, self.stop, self.step)):
            return [self.start + i * self.step for i in range(count)]
        return [round(self.start + i * self.step, 10) for i in range(count)]


class ObjectiveSettings(BaseModel):
    """What a sweep maximizes (or minimizes): a metric name, or ``{metric, maximize}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = "sharpe"
    maximize: bool | None = None
    """Default: maximize, except drawdown, drawdown duration and volatility."""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"metric": value} if isinstance(value, str) else value

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown metric; one of {', '.join(OBJECTIVE_METRICS)} (docs/metrics.md)")
        return value


class FilterSettings(BaseModel):
    """Candidates a sweep rejects before choosing: too few trades to mean anything, or too deep a
    drawdown to live with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_trades: int = Field(default=0, ge=0)
    max_drawdown: float | None = Field(default=None, gt=0, le=1)


class OverfittingSettings(BaseModel):
    """Limits of the ``overfitting`` check (research/stats): a result whose PBO is above
    ``max_pbo`` or whose deflated Sharpe is below ``min_dsr`` is flagged (WARN); with ``block``
    the check fails blocking and the leaderboard leaves the result out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pbo: float = Field(default=0.5, ge=0, le=1)
    min_dsr: float = Field(default=0.95, ge=0, le=1)
    block: bool = False


class WalkForwardSettings(BaseModel):
    """Windows in whole UTC days: optimize on train, test the winner on the following test days."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_days: int = Field(gt=0)
    test_days: int = Field(gt=0)
    step_days: int | None = Field(default=None, gt=0)
    """Default: test_days (test windows follow each other with no gap)."""
    anchored: bool = False
    """True: every train window starts at the period start (expanding); False: rolling."""

    @model_validator(mode="after")
    def _no_overlap(self) -> WalkForwardSettings:
        if self.step_days is not None and self.step_days < self.test_days:
            raise ValueError(
                f"step_days {self.step_days} < test_days {self.test_days}: test windows would overlap, "
                "and the out-of-sample equity is stitched from non-overlapping ones"
            )
        return self


def _grid_values(name: str, value: Any) -> list[Any] | GridRange:
    """One grid entry: a non-empty list, or a ``{start, stop, step}`` range (errors name the param)."""
    if isinstance(value, dict):
        try:
            return GridRange(**value)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in (name, *first["loc"]))
            raise FieldError(f"grid.{where}", value, first["msg"].removeprefix("Value error, ")) from None
    if isinstance(value, list) and value:
        return value
    raise FieldError(f"grid.{name}", value, "needs a non-empty list of values or a range {start, stop, step}")


class RunSettings(BaseModel):
    """What a backtest and a portfolio share: the strategy, its markets and period, the account (cash,
    sizing, costs) and, for perpetual swaps, isolated margin (docs/trading-model.md). The subclasses
    add ``name`` (their asset keys) and what only they have."""

    strategy: str
    params: dict[str, Any] = Field(default_factory=dict)
    exchange: str
    timeframe: str
    symbols: list[str] = Field(min_length=1)
    """The markets traded (a backtest: each on its own; a portfolio: together, on one account)."""
    period: Period
    cash: float = Field(default=10_000.0, gt=0)
    sizing: Sizing = Field(default_factory=Sizing)
    fees: Fees = Field(default_factory=Fees)
    slippage: float = Field(default=0.0, ge=0, lt=0.1)
    market_type: Literal["spot", "swap"] = "spot"
    """``swap``: perpetual swaps (``BTC/USDT:USDT``) on isolated margin (docs/trading-model.md)."""
    leverage: float = Field(default=1.0, ge=1, le=125)
    maintenance_margin: float = Field(default=0.004, ge=0, lt=1)
    """Maintenance margin rate (Binance's first tier for BTCUSDT: 0.4 %)."""
    liquidation_fee: float = Field(default=0.0125, ge=0, lt=0.1)
    """Fee rate of a liquidation, at most the margin left (Binance: 1.25 %)."""

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

    @model_validator(mode="after")
    def _not_in_future(self) -> Any:
        tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
        if self.period.start >= tomorrow:
            raise FieldError(
                "period.start", self.period.start.isoformat(), f"is in the future (today is {tomorrow - dt.timedelta(days=1)} UTC)"
            )
        if self.period.end is not None and self.period.end > tomorrow:
            raise FieldError(
                "period.end", self.period.end.isoformat(),
                f"is in the future: at most {tomorrow} (exclusive), or leave end out to run through the newest candle",
            )
        return self

    @model_validator(mode="after")
    def _market_type(self) -> Any:
        swap = self.market_type == "swap"
        for i, symbol in enumerate(self.symbols):
            if (":" in symbol) != swap:
                kind = "a perpetual swap such as BTC/USDT:USDT" if swap else "a spot market (swaps need market_type: swap)"
                raise FieldError(f"symbols[{i}]", symbol, f"is not {kind}")
        if not swap:
            for key in ("leverage", "maintenance_margin", "liquidation_fee"):
                if key in self.model_fields_set:
                    raise FieldError(key, getattr(self, key), "applies to market_type: swap only")
            return self
        if self.maintenance_margin >= 1 / self.leverage:
            raise FieldError(
                "maintenance_margin", self.maintenance_margin,
                f"must be below 1/leverage = {1 / self.leverage:g} (else a position is liquidated as it opens)",
            )
        interval = FUNDING_INTERVALS.get(self.exchange)
        if interval is None:
            raise FieldError("market_type", "swap", f"perpetual swaps are backtested on {sorted(FUNDING_INTERVALS)} only")
        if timeframe_ms(interval) % timeframe_ms(self.timeframe):
            raise FieldError(
                "timeframe", self.timeframe,
                f"must divide {self.exchange}'s funding interval {interval}, so every funding time is a bar edge",
            )
        return self

    def taker_fee(self) -> float:
        """Commission per fill: every order Atlas sends is a market order, which pays taker."""
        if self.fees.taker is not None:
            return self.fees.taker
        return exchange_fees(self.exchange, self.market_type)["taker"]


class BacktestSettings(RunSettings):
    """One named backtest: a strategy with params on one exchange's candles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    exits: ExitSettings = Field(default_factory=ExitSettings)
    """Protective exits every position gets (docs/trading-model.md)."""
    grid: dict[str, Any] | None = None
    """Swept params: a list of values or a range each; the backtest then runs every combination
    and keeps the one the objective ranks first among those passing the filters."""
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)
    filters: FilterSettings = Field(default_factory=FilterSettings)
    walk_forward: WalkForwardSettings | None = None
    """Also build ``<name>/walkforward``: the grid optimized per train window, tested out of sample."""
    confirm_top: int = Field(default=CONFIRM_TOP, ge=0)
    """Screened candidates (best first) rerun through backtrader besides the chosen one (research/sweep.py)."""
    overfitting: OverfittingSettings = Field(default_factory=OverfittingSettings)

    @field_validator("name")
    @classmethod
    def _asset_key_safe(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lower_snake_case (it becomes the asset keys <name>/backtest, <name>/metrics)")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, value: dict[str, Any] | None) -> dict[str, list[Any] | GridRange] | None:
        return None if value is None else {name: _grid_values(name, values) for name, values in value.items()}

    @model_validator(mode="after")
    def _sweep_settings(self) -> BacktestSettings:
        if self.grid is None:
            for key in ("walk_forward", "objective", "filters", "confirm_top", "overfitting"):
                if key in self.model_fields_set:
                    raise ValueError(f"{key} needs a grid of params to sweep")
            return self
        if not self.grid:
            raise ValueError("grid is empty: give at least one param with its values")
        fixed = sorted(set(self.grid) & set(self.params))
        if fixed:
            raise ValueError(f"param {fixed[0]!r} is both fixed in params and swept in grid")
        for name in self.grid:
            if name.startswith(EXIT_PREFIX):
                _check_exit_grid(name, self.grid_values(name))
                if getattr(self.exits, name.removeprefix(EXIT_PREFIX)) is not None:
                    raise FieldError(f"grid.{name}", self.grid[name], "is both fixed in exits and swept in grid")
        size = math.prod(len(self.grid_values(name)) for name in self.grid)
        if size > MAX_CANDIDATES:
            raise ValueError(f"grid has {size:,} combinations; at most {MAX_CANDIDATES:,}")
        return self

    def grid_values(self, name: str) -> list[Any]:
        values = (self.grid or {})[name]
        return values.values() if isinstance(values, GridRange) else list(values)

    def candidates(self) -> list[dict[str, Any]]:
        """Every param combination of the grid (first param slowest); [] without a grid."""
        if self.grid is None:
            return []
        return expand_grid({name: self.grid_values(name) for name in self.grid})

    def sweep_objective(self) -> Objective:
        return Objective(self.objective.metric, self.objective.maximize)

    def sweep_filters(self) -> SweepFilters:
        return SweepFilters(self.filters.min_trades, self.filters.max_drawdown)

    def walk_forward_plan(self) -> WalkForwardPlan | None:
        if self.walk_forward is None:
            return None
        wf = self.walk_forward
        return WalkForwardPlan(wf.train_days, wf.test_days, wf.step_days, wf.anchored)

    def overfitting_limits(self) -> OverfittingLimits:
        o = self.overfitting
        return OverfittingLimits(o.max_pbo, o.min_dsr, o.block)


def exchange_fees(exchange_id: str, market_type: str = "spot") -> dict[str, float]:
    """Maker/taker fees from ccxt's offline metadata (Binance spot: 0.1% / 0.1%; USDⓈ-M swaps:
    0.02 % / 0.05 %)."""
    fees = getattr(ccxt, exchange_id)().fees
    trading = fees.get("linear", {}).get("trading", {}) if market_type == "swap" else fees.get("trading", {})
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
    for name, settings in read_section(path, "backtests", siblings=("portfolios",)).items():
        key = f"backtests.{name}"
        source = exchanges.exchanges.get(settings.get("exchange"))
        if "symbols" not in settings and source is not None:
            if source.universe is not None:
                raise ConfigError(
                    path, f"{key}.symbols", MISSING,
                    f"is required: {source.id} selects its markets by universe rules, so list the markets to backtest",
                )
            settings = {**settings, "symbols": list(source.markets)}
        try:
            backtest = BacktestSettings(name=str(name), **settings)
        except ValidationError as error:
            raise validation_error_to_config_error(error, path, key, {"name": name, **settings}) from None
        _check_references(path, key, backtest, exchanges)
        parsed[backtest.name] = backtest
    return BacktestsConfig(backtests=parsed)


def _check_references(path: Path, key: str, backtest: BacktestSettings, exchanges: ExchangesConfig) -> None:
    """A backtest (or portfolio: ``config/portfolios.py``) can only read candles that an OHLCV asset collects."""
    source = exchanges.exchanges.get(backtest.exchange)
    if source is None:
        raise ConfigError(path, f"{key}.exchange", backtest.exchange, f"not in exchanges.yaml (configured: {sorted(exchanges.exchanges)})")
    if backtest.timeframe not in source.timeframes:
        raise ConfigError(
            path, f"{key}.timeframe", backtest.timeframe, f"{backtest.exchange} collects only {source.timeframes} (exchanges.yaml)"
        )
    for i, symbol in enumerate(backtest.symbols):
        if source.universe is None and symbol not in source.markets:  # universe members are known at run time
            raise ConfigError(
                path, f"{key}.symbols[{i}]", symbol, f"{backtest.exchange} collects only {source.markets} (exchanges.yaml)"
            )
        if backtest.market_type == "swap" and symbol not in source.markets:
            raise ConfigError(
                path, f"{key}.symbols[{i}]", symbol,
                f"mark prices and funding are collected only for swaps listed under {backtest.exchange}'s markets (exchanges.yaml)",
            )
    if backtest.period.start < source.history_start:
        raise ConfigError(
            path, f"{key}.period.start", backtest.period.start.isoformat(),
            f"is before {backtest.exchange}'s history_start {source.history_start} (exchanges.yaml)",
        )
