"""Config checks that need more than the YAML: the strategy files, their params, the exchange's
market list. Each problem is a ``ConfigError`` naming the real config file, key and value.

``config.backtests`` checks a file's structure when it is loaded (Dagster definitions included)
and deliberately not the strategies, so one broken strategy file cannot take down the code
location. The ``atlas`` commands run these checks on what they are about to run before any
Dagster run starts, so such a mistake exits 2 at once instead of failing a run (exit 1) minutes
later; ``atlas ui`` runs them on every backtest and prints one warning line per problem.
(Top-level module: it joins config and research, which ``config`` must not import.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlas_pipeline.config.errors import ConfigError
from atlas_pipeline.config.exchanges import EXCHANGES_FILE, ExchangeSettings
from atlas_pipeline.market_data.exchange_metadata import NOT_LISTED, metadata_path, read_metadata

if TYPE_CHECKING:  # imported where used: `atlas fetch` checks markets without loading backtrader
    from atlas_pipeline.config.backtests import BacktestSettings


def check_backtest(settings: BacktestSettings, config_folder: Path, strategies_dir: Path | None = None) -> None:
    """The strategy file exists and imports; every param and grid value is one the strategy has,
    of its default's type (``strategy_loader.validate_params``)."""
    from atlas_pipeline.config.backtests import BACKTESTS_FILE
    from atlas_pipeline.research.strategy_loader import (
        StrategyError,
        available_strategies,
        load_strategy,
        strategy_file,
        strategy_params,
        validate_params,
    )

    path = config_folder / BACKTESTS_FILE
    key = f"backtests.{settings.name}"
    file = strategy_file(settings.strategy, strategies_dir)
    if not file.is_file():
        known = ", ".join(available_strategies(strategies_dir)) or "(none)"
        raise ConfigError(path, f"{key}.strategy", settings.strategy, f"no strategy file {file}; available: {known}")
    try:
        cls = load_strategy(settings.strategy, strategies_dir)
    except StrategyError as error:
        raise ConfigError(path, f"{key}.strategy", settings.strategy, error.detail.splitlines()[0]) from error
    known = strategy_params(cls)
    listing = ", ".join(f"{name}={default!r}" for name, default in known.items()) or "(none)"
    values: list[tuple[str, str, Any]] = [(f"{key}.params.{name}", name, value) for name, value in settings.params.items()]
    for name in settings.grid or {}:
        values += [(f"{key}.grid.{name}[{i}]", name, value) for i, value in enumerate(settings.grid_values(name))]
    for where, name, value in values:
        if name not in known:
            where = where.rsplit("[", 1)[0]
            raise ConfigError(path, where, value, f"strategy {settings.strategy} has no param {name!r}; its params: {listing}")
        try:
            validate_params(settings.strategy, cls, {name: value})
        except StrategyError as error:
            reason = error.detail.replace(f"param {name}={value!r} ", "")
            raise ConfigError(path, where, value, reason) from None


def backtest_problems(backtests: Iterable[BacktestSettings], config_folder: Path) -> list[ConfigError]:
    """``check_backtest`` of each, collecting the errors (for warnings that do not stop anything)."""
    problems = []
    for settings in backtests:
        try:
            check_backtest(settings, config_folder)
        except ConfigError as error:
            problems.append(error)
    return problems


def check_listed(settings: ExchangeSettings, symbols: Sequence[str], config_folder: Path) -> None:
    """Markets the cached exchange metadata (``exchange_metadata.yaml``) says the exchange does
    not list. Without the file, or for a market it has not seen, the first request checks
    (``ExchangeClient.check_market``, whose message names the same exchanges.yaml)."""
    metadata = read_metadata(metadata_path(config_folder), settings.id)
    if metadata is None:
        return
    gone = {market.symbol: market.reason for market in metadata.markets if market.status == NOT_LISTED}
    for symbol in symbols:
        if symbol in gone:
            where = f"exchanges.{settings.id}.markets"
            raise ConfigError(
                config_folder / EXCHANGES_FILE, where, symbol,
                f"{settings.id} does not list this market ({gone[symbol] or 'not listed'}; per exchange_metadata.yaml "
                f"of {metadata.collected_at})",
            )
