"""Atlas: crypto candles from ccxt into validated Parquet, backtests on top, orchestrated by Dagster.

The stable cache API shared by data collection and research is ``CandleStore``.
"""

from atlas_pipeline.market_data.store import CandleStore

__all__ = ["CandleStore"]
