"""Config layer: typed settings from ``config/*.yaml``; every error names file, key and value.

The names below are imported on first use: ``config.exchanges`` imports ccxt (~0.5 s), which
``config.paths`` users such as the strategy loader in every backtest worker process do not need.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atlas_pipeline.config.errors import ConfigError
    from atlas_pipeline.config.exchanges import ExchangeSettings, ExchangesConfig, load_exchanges_config
    from atlas_pipeline.config.paths import config_dir

__all__ = ["ConfigError", "ExchangeSettings", "ExchangesConfig", "config_dir", "load_exchanges_config"]

_MODULES = {
    "ConfigError": "errors",
    "ExchangeSettings": "exchanges",
    "ExchangesConfig": "exchanges",
    "load_exchanges_config": "exchanges",
    "config_dir": "paths",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(f"atlas_pipeline.config.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'atlas_pipeline.config' has no attribute {name!r}")
