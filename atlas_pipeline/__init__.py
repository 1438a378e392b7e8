"""Atlas: crypto candles from ccxt into validated Parquet, backtests on top, orchestrated by Dagster.

The stable cache API shared by data collection and research is ``CandleStore``. It is imported on
first use so that light entry points (config loading, the CLI's argument parsing) stay fast.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atlas_pipeline.market_data.store import CandleStore

__all__ = ["CandleStore"]


def __getattr__(name: str) -> Any:
    if name == "CandleStore":
        from atlas_pipeline.market_data.store import CandleStore

        return CandleStore
    raise AttributeError(f"module 'atlas_pipeline' has no attribute {name!r}")
