"""Config layer: typed settings from ``config/*.yaml``; every error names file, key and value."""

from atlas_pipeline.config.errors import ConfigError
from atlas_pipeline.config.exchanges import ExchangeSettings, ExchangesConfig, load_exchanges_config
from atlas_pipeline.config.paths import config_dir

__all__ = ["ConfigError", "ExchangeSettings", "ExchangesConfig", "config_dir", "load_exchanges_config"]
