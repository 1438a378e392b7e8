"""Typed settings for ``config/exchanges.yaml``: which candles Atlas collects, and from where.

Validation happens here, at load time, so a typo fails ``dagster definitions validate`` with the
file, key and value instead of failing a run hours into a backfill. ccxt is consulted for its
offline metadata (exchange ids, supported timeframes, request limits); no request is made.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

import ccxt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atlas_pipeline.config.errors import MISSING, ConfigError, FieldError
from atlas_pipeline.config.loading import read_section, validation_error_to_config_error
from atlas_pipeline.config.paths import config_dir
from atlas_pipeline.market_data.candles import timeframe_ms
from atlas_pipeline.market_data.sources.binance_archive import ARCHIVE_URLS

EXCHANGES_FILE = "exchanges.yaml"
DEFAULT_HISTORY_START = dt.date(2017, 1, 1)
_MARKET = re.compile(r"^[A-Z0-9]+/[A-Z0-9]+(:[A-Z0-9]+)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UniverseRules(BaseModel):
    """Which markets an exchange entry collects, decided by the exchange's own data instead of a
    list: resolved by the ``<exchange>/exchange_metadata`` asset (``market_data/universe.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quote: list[str] = Field(default_factory=list)
    """Quote currencies (``[USDT, BTC]``); empty: any."""
    type: str = "spot"
    """Market type; ``spot`` (perpetual swaps come with the trading model's futures data)."""
    top: int | None = Field(default=None, ge=1)
    """Keep the ``top`` markets by 24h quote volume (after the other rules); None: all that qualify."""
    min_listing_days: int = Field(default=0, ge=0)
    """Days a market must have traded (since its first 1d candle) to qualify."""
    include: list[str] = Field(default_factory=list)
    """Markets always in, while the exchange lists them as active."""
    exclude: list[str] = Field(default_factory=list)
    """Markets never in (stablecoin pairs, say)."""

    @field_validator("type")
    @classmethod
    def _spot_only(cls, value: str) -> str:
        if value != "spot":
            raise ValueError("only 'spot' markets can be collected so far")
        return value

    @field_validator("quote")
    @classmethod
    def _currencies(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.match(r"^[A-Z0-9]+$", value):
                raise ValueError(f"quote currency {value!r} is not a currency code such as 'USDT'")
        return values

    @field_validator("include", "exclude")
    @classmethod
    def _symbols(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _MARKET.match(value):
                raise ValueError(f"market {value!r} is not a ccxt symbol such as 'BTC/USDT'")
        return values


class EmulatorSettings(BaseModel):
    """Serve the exchange from Atlas's emulator, started inside each process that fetches (no
    server to keep running): seeded synthetic markets, the same candles in every process. What
    ``atlas demo`` configures; remove the key (or point ``ATLAS_CONFIG`` elsewhere) for the real
    exchange."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    synthetic: int = Field(ge=0)
    """The seed of the synthetic markets (``atlas emulator --synthetic SEED`` serves the same)."""


EMULATED_EXCHANGES = ("binance", "okx")


class ExchangeSettings(BaseModel):
    """One exchange: its markets (a list, or universe rules) and timeframes, and how to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    timeframes: list[str] = Field(min_length=1)
    markets: list[str] = Field(default_factory=list)
    """An explicit list of markets; empty when ``universe`` rules decide them."""
    universe: UniverseRules | None = None
    history_start: dt.date = DEFAULT_HISTORY_START
    request_limit: int | None = Field(default=None, ge=1)
    api_url: str | None = None
    emulator: EmulatorSettings | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)
    min_request_interval_ms: int | None = Field(default=None, ge=0)
    max_retries: int = Field(default=5, ge=0)
    api_key_env: str | None = None
    api_secret_env: str | None = None
    metadata_top_n: int = Field(default=20, ge=1)
    """How many markets the ``<exchange>/exchange_metadata`` asset ranks by 24h quote volume."""
    history_source: Literal["archive", "rest"] | None = None
    """Where closed history comes from: ``archive`` (the exchange's public data archive, checksummed
    files; REST only for the tail it lacks) or ``rest``. Default: archive where the exchange has one
    and its address is known (see ``archive_url``), else rest."""
    archive_url: str | None = None
    """Scheme and host of the public archive (default: the exchange's own, e.g.
    https://data.binance.vision). With ``api_url`` set, the archive is used only if this is set too
    (the emulator serves both at one URL)."""

    @field_validator("id")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        if value not in ccxt.exchanges:
            raise ValueError("not an exchange id ccxt knows (see ccxt.exchanges)")
        return value

    @field_validator("timeframes")
    @classmethod
    def _valid_timeframes(cls, values: list[str]) -> list[str]:
        for value in values:
            timeframe_ms(value)
        if len(set(values)) != len(values):
            raise ValueError("lists a timeframe twice")
        return values

    @field_validator("markets")
    @classmethod
    def _valid_markets(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _MARKET.match(value):
                raise ValueError(f"market {value!r} is not a ccxt symbol such as 'BTC/USDT'")
        if len(set(values)) != len(values):
            raise ValueError("lists a market twice")
        # No cap: universes of hundreds of markets are the point (DESIGN.md section 2). Dagster's
        # advice of < 100,000 partitions per asset is about recurring costs, which Atlas keeps
        # proportional to what changed (measured in bench/universe.py), not to partitions.
        return values

    @field_validator("history_start")
    @classmethod
    def _not_in_future(cls, value: dt.date) -> dt.date:
        if value > dt.datetime.now(dt.UTC).date():
            raise ValueError("is in the future")
        return value

    @field_validator("api_url", "archive_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError("must be a scheme and host such as 'http://127.0.0.1:8765'")
        return value.rstrip("/") if value else value

    @field_validator("api_key_env", "api_secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError("must be the name of an environment variable, not a key")
        return value

    @model_validator(mode="after")
    def _markets_or_universe(self) -> ExchangeSettings:
        if bool(self.markets) == (self.universe is not None):
            raise FieldError(
                "markets", self.markets or MISSING, "give either a list of markets or universe rules (exactly one)"
            )
        return self

    @model_validator(mode="after")
    def _swaps_on_binance(self) -> ExchangeSettings:
        swaps = [m for m in self.markets if ":" in m]
        if swaps and self.id != "binance":
            raise FieldError("markets", swaps[0], "perpetual swaps are collected from binance only (so far)")
        for market in swaps:
            base_quote, settle = market.split(":")
            if base_quote.split("/")[1] != settle:
                raise FieldError("markets", market, "only linear swaps (settled in the quote currency, e.g. BTC/USDT:USDT)")
        return self

    @model_validator(mode="after")
    def _emulator_or_url(self) -> ExchangeSettings:
        if self.emulator is not None and self.api_url is not None:
            raise FieldError("emulator", {"synthetic": self.emulator.synthetic}, "give either emulator or api_url, not both")
        if self.emulator is not None and self.id not in EMULATED_EXCHANGES:
            raise FieldError("emulator", {"synthetic": self.emulator.synthetic}, f"the emulator speaks {', '.join(EMULATED_EXCHANGES)} only")
        return self

    @model_validator(mode="after")
    def _supported_by_exchange(self) -> ExchangeSettings:
        exchange = _ccxt_class(self.id)()
        offered = exchange.timeframes or {}
        for i, tf in enumerate(self.timeframes):
            if offered and tf not in offered:
                raise FieldError(f"timeframes[{i}]", tf, f"{self.id} offers {sorted(offered)}")
        maximum = _max_request_limit(exchange)
        if self.request_limit is not None and maximum and self.request_limit > maximum:
            raise FieldError("request_limit", self.request_limit, f"{self.id} returns at most {maximum}")
        return self

    @model_validator(mode="after")
    def _archive_reachable(self) -> ExchangeSettings:
        if self.history_source == "archive":
            if self.id not in ARCHIVE_URLS:
                raise FieldError("history_source", "archive", f"{self.id} has no public archive Atlas reads (archives: {sorted(ARCHIVE_URLS)})")
            if (self.api_url or self.emulator is not None) and not self.archive_url:
                raise FieldError(
                    "history_source", "archive",
                    "api_url points REST at another host: set archive_url too (the emulator serves the archive at its own URL)",
                )
        return self

    @property
    def effective_archive_url(self) -> str | None:
        """The archive closed history is taken from; None: REST only (``history_source``)."""
        if self.history_source == "rest" or self.id not in ARCHIVE_URLS:
            return None
        if self.archive_url:
            return self.archive_url
        # REST pointed elsewhere (api_url, or the in-process emulator) and no archive_url: REST only
        return None if (self.api_url or self.emulator is not None) else ARCHIVE_URLS[self.id]

    @cached_property
    def effective_request_limit(self) -> int:
        """The configured limit, else what ccxt documents as the exchange's maximum, else 500."""
        return self.request_limit or _max_request_limit(_ccxt_class(self.id)()) or 500

    def credentials(self) -> dict[str, str]:
        """API key and secret from the environment; the config only names the variables."""
        found: dict[str, str] = {}
        for field, ccxt_name in (("api_key_env", "apiKey"), ("api_secret_env", "secret")):
            name = getattr(self, field)
            if name is None:
                continue
            value = os.environ.get(name)
            if not value:
                raise ValueError(f"exchange {self.id}: {field} names ${name}, which is not set")
            found[ccxt_name] = value
        return found


class ExchangesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exchanges: dict[str, ExchangeSettings] = Field(min_length=1)

    def get(self, exchange_id: str) -> ExchangeSettings:
        try:
            return self.exchanges[exchange_id]
        except KeyError:
            raise KeyError(f"exchange {exchange_id!r} is not configured; configured: {sorted(self.exchanges)}") from None


def _ccxt_class(exchange_id: str) -> type[ccxt.Exchange]:
    return getattr(ccxt, exchange_id)


def _max_request_limit(exchange: ccxt.Exchange) -> int | None:
    try:
        return int(exchange.features["spot"]["fetchOHLCV"]["limit"])
    except (KeyError, TypeError, ValueError):
        return None


def load_exchanges_config(directory: Path | str | None = None) -> ExchangesConfig:
    """Load and validate ``exchanges.yaml`` from ``directory`` (default: ``config_dir()``)."""
    path = Path(directory or config_dir()) / EXCHANGES_FILE
    entries = read_section(path, "exchanges")
    if not entries:
        raise ConfigError(path, "exchanges", entries, "needs at least one exchange")
    parsed: dict[str, ExchangeSettings] = {}
    for exchange_id, settings in entries.items():
        key = f"exchanges.{exchange_id}"
        if "id" in settings:
            raise ConfigError(path, f"{key}.id", settings["id"], "the exchange id is the key itself")
        try:
            parsed[exchange_id] = ExchangeSettings(id=exchange_id, **settings)
        except ValidationError as error:
            raise validation_error_to_config_error(error, path, key, {"id": exchange_id, **settings}) from None
    return ExchangesConfig(exchanges=parsed)
