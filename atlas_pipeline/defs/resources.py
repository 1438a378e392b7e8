"""Resources shared by Atlas assets."""

# No ``from __future__ import annotations``: Dagster reads ``ResourceDependency`` off the evaluated
# annotation (as a string it would become a config field that rejects a plain value).
import dagster as dg

from atlas_pipeline.market_data.store import CANDLES, CandleStore, Dataset


class CandleStoreResource(dg.ConfigurableResource):
    """The candle store under ``$ATLAS_HOME`` (a folder or an fsspec URL).

    Where data is written is deployment config (the environment, the instance), never run config:
    whoever can launch a run (the UI's launchpad) must not point writes at any path. So ``root``
    is a ``ResourceDependency``, which Dagster keeps out of the resource's config schema: only
    code sets it (``build_definitions(store_root=...)``, tests), and a run config that sets
    ``resources.candle_store.config.root`` fails Dagster's config validation. ``None``: ``$ATLAS_HOME``.
    """

    root: dg.ResourceDependency[str | None] = None

    def get_store(self, dataset: Dataset = CANDLES) -> CandleStore:
        """The store of ``dataset`` (default: trade candles; also mark prices, funding rates)."""
        return CandleStore(self.root, dataset)
