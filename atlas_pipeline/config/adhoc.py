"""Ad-hoc backtests: the ones ``atlas backtest --strategy ...`` runs without editing YAML.

They live in a user-level file, ``$ATLAS_HOME/adhoc/backtests.yaml`` (beside the data they were
run on, never in the checkout's ``config/``), in the format of ``config/backtests.yaml``, so an
entry can be copied there to adopt it. The Dagster definitions load it next to the configured
backtests, so an ad-hoc backtest is an asset like any other (``<name>/backtest``,
``<name>/metrics``, in the leaderboard, with lineage to its candles) and shows in the UI. Its name
is derived from its arguments (``adhoc_name``): the same arguments reuse the same assets, and
running it on another market adds that market to the entry.

Unlike configured backtests, an entry that does not fit the current exchanges config (another
``ATLAS_CONFIG``, a market no longer collected) is left out with a warning instead of failing
the whole code location: the file is a scratch pad, not the project's config. Ad-hoc backtests
are not rerun automatically when candles change (no recurring cost for one-off experiments);
rerun one with the same command. Delete an entry (or the file) to drop it from the UI.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from atlas_pipeline.atomic_files import write_text_atomic
from atlas_pipeline.config.backtests import BacktestSettings, _check_references
from atlas_pipeline.config.errors import ConfigError
from atlas_pipeline.config.exchanges import ExchangesConfig
from atlas_pipeline.config.loading import read_section, validation_error_to_config_error

logger = logging.getLogger(__name__)

ADHOC_FOLDER = "adhoc"
ADHOC_FILE = "backtests.yaml"
ADHOC_PREFIX = "adhoc_"
_HEADER = (
    "# Ad-hoc backtests written by `atlas backtest --strategy ...` (format of config/backtests.yaml).\n"
    "# Loaded by the Dagster definitions beside config/backtests.yaml; delete an entry to drop it.\n"
)
_NAME_MAX = 63


def adhoc_backtests_file(data_root: str) -> Path | None:
    """``<data_root>/adhoc/backtests.yaml``; None for a URL root (object storage holds no such file)."""
    if "://" in data_root and not data_root.startswith("file://"):
        return None
    return Path(data_root.removeprefix("file://")) / ADHOC_FOLDER / ADHOC_FILE


def _token(value: Any) -> str:
    """A param value as name characters: 10 -> 10, 0.5 -> 0p5, -2 -> m2, True -> true."""
    text = str(value).lower() if not isinstance(value, float) or not value.is_integer() else str(int(value))
    return re.sub(r"[^a-z0-9]", "", text.replace(".", "p").replace("-", "m"))


def adhoc_name(strategy: str, params: Mapping[str, Any], exchange: str, timeframe: str, start: dt.date, end: dt.date | None) -> str:
    """``adhoc_<strategy>_<param><value>..._<exchange>_<timeframe>_<start>_<end|open>``, lower
    snake case; when that is too long for an asset key, ``adhoc_<strategy>_<hash of the arguments>``."""
    period = f"{start:%Y%m%d}_{end:%Y%m%d}" if end else f"{start:%Y%m%d}_open"
    parts = [strategy, *(f"{k}{_token(v)}" for k, v in sorted(params.items())), exchange, timeframe, period]
    name = ADHOC_PREFIX + "_".join(part.lower() for part in parts)
    if len(name) <= _NAME_MAX and re.fullmatch(r"[a-z][a-z0-9_]*", name):
        return name
    digest = hashlib.sha1(json.dumps([strategy, dict(sorted(params.items())), exchange, timeframe, str(start), str(end)],
                                     default=str).encode()).hexdigest()[:10]
    return f"{ADHOC_PREFIX}{re.sub(r'[^a-z0-9_]', '', strategy.lower())[: _NAME_MAX - 18]}_{digest}"


def load_adhoc_backtests(path: Path | None, exchanges: ExchangesConfig, taken: set[str]) -> dict[str, BacktestSettings]:
    """The ad-hoc backtests of ``path`` that fit ``exchanges``; others are left out with a warning.

    ``taken``: names of configured backtests, which win over an ad-hoc entry of the same name.
    """
    if path is None or not path.is_file():
        return {}
    try:
        entries = read_section(path, "backtests")
    except ConfigError as error:
        logger.warning("ad-hoc backtests left out: %s", error)
        return {}
    loaded: dict[str, BacktestSettings] = {}
    for name, settings in entries.items():
        try:
            if name in taken:
                raise ConfigError(path, f"backtests.{name}", name, "a configured backtest has this name; it wins")
            backtest = adhoc_settings(path, str(name), settings)
            _check_references(path, f"backtests.{name}", backtest, exchanges)
        except ConfigError as error:
            logger.warning("ad-hoc backtest left out: %s", error)
            continue
        loaded[backtest.name] = backtest
    return loaded


def adhoc_settings(path: Path, name: str, settings: Mapping[str, Any]) -> BacktestSettings:
    """One entry as ``BacktestSettings``; a bad one raises ``ConfigError`` naming ``path`` and key."""
    if not isinstance(settings, Mapping):
        raise ConfigError(path, f"backtests.{name}", settings, "must be a mapping of backtest settings")
    try:
        return BacktestSettings(name=name, **settings)
    except ValidationError as error:
        raise validation_error_to_config_error(error, path, f"backtests.{name}", {"name": name, **settings}) from None


def save_adhoc_backtest(path: Path, name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Add or update entry ``name`` (its ``symbols`` merged with the stored entry's); returns the
    entry as written. Under a file lock, written to a temp file and renamed: concurrent CLI calls
    and a crash leave a whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        entries: dict[str, Any] = {}
        if path.is_file():
            entries = dict((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("backtests") or {})
        old_symbols = list((entries.get(name) or {}).get("symbols") or [])
        entry = {**settings, "symbols": old_symbols + [s for s in settings["symbols"] if s not in old_symbols]}
        entries[name] = entry
        text = _HEADER + yaml.safe_dump({"backtests": entries}, sort_keys=False, default_flow_style=None)
        write_text_atomic(path, text)
    return entry


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
