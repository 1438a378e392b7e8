"""Resources shared by Atlas assets."""

from __future__ import annotations

import dagster as dg

from atlas_pipeline.market_data.store import CandleStore


class CandleStoreResource(dg.ConfigurableResource):
    """The candle store; ``root`` is a folder or an fsspec URL (default: ``$ATLAS_HOME``)."""

    root: str | None = None

    def get_store(self) -> CandleStore:
        return CandleStore(self.root)
