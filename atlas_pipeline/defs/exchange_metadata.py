"""``<exchange>/exchange_metadata``: what each configured exchange says about itself.

One unpartitioned asset per exchange (group ``market_data``): it collects timeframes, markets
ranked by quote volume, fees, first candles and the configured markets' status through ccxt,
writes ``<config dir>/exchange_metadata.yaml`` atomically and shows all of it as metadata.
Markets the exchange no longer lists or marks inactive are logged as dropped from the active
universe; the OHLCV assets then skip them (see ``defs/market_data/assets.py``). Nothing is
requested when definitions load: the exchange is only contacted when the asset materializes.
"""


from pathlib import Path

import dagster as dg
import pandas as pd

from atlas_pipeline.config import ExchangeSettings
from atlas_pipeline.config.exchanges import EXCHANGES_FILE
from atlas_pipeline.defs.market_data.assets import MARKET_DATA_GROUP, exchange_connection
from atlas_pipeline.market_data.exchange_client import ExchangeClient
from atlas_pipeline.defs.market_data.partitions import universe_partitions_name
from atlas_pipeline.market_data.candles import symbol_key
from atlas_pipeline.market_data.exchange_metadata import (
    ExchangeMetadata,
    collect_exchange_metadata,
    read_metadata,
    write_metadata_yaml,
)


def exchange_metadata_asset_key(exchange: str) -> dg.AssetKey:
    """``<exchange>/exchange_metadata`` (the last part is the node's label in the UI graph)."""
    return dg.AssetKey([exchange, "exchange_metadata"])


def build_exchange_metadata_assets(
    settings_list: list[ExchangeSettings], metadata_file: Path
) -> list[dg.AssetsDefinition]:
    return [build_exchange_metadata_asset(settings, metadata_file) for settings in settings_list]


def build_exchange_metadata_asset(settings: ExchangeSettings, metadata_file: Path) -> dg.AssetsDefinition:
    @dg.asset(
        key=exchange_metadata_asset_key(settings.id),
        group_name=MARKET_DATA_GROUP,
        kinds={"ccxt", "yaml"},
        description=(
            f"{settings.id} via ccxt: supported timeframes, top {settings.metadata_top_n} markets by "
            "24h quote volume, maker/taker fees (ccxt's public defaults), each configured market's "
            f"first candle and status. Written to {metadata_file.name}; markets no longer listed "
            "or inactive are dropped from the active universe (their candles are kept)."
        ),
        metadata={"exchange": settings.id, "file": str(metadata_file)},
    )
    def exchange_metadata(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        client = ExchangeClient(exchange_connection(settings, metadata_file.parent / EXCHANGES_FILE), log=context.log)
        previous = read_metadata(metadata_file, settings.id) if settings.universe is not None else None
        metadata = collect_exchange_metadata(
            client, settings.markets, settings.timeframes, settings.metadata_top_n, settings.universe, previous
        )
        path = write_metadata_yaml(metadata_file, metadata)
        added = _add_universe_partitions(context.instance, settings, metadata) if settings.universe is not None else []
        if added:
            context.log.info(f"{settings.id}: {len(added)} markets joined the universe: {', '.join(added[:20])}")
        for market in metadata.flagged:
            context.log.warning(
                f"{settings.id} {market.symbol} dropped from the active universe: {market.reason} "
                "(its stored candles are kept; OHLCV runs skip it)"
            )
        return dg.MaterializeResult(
            metadata={
                **_asset_metadata(metadata),
                "path": dg.MetadataValue.path(str(path)),
                "requests": client.requests_made,
                **({"universe_size": len(metadata.universe), "joined_universe": ", ".join(added)} if metadata.universe is not None else {}),
            }
        )

    return exchange_metadata


def build_exchange_metadata_schedule(settings: ExchangeSettings) -> dg.ScheduleDefinition:
    """Daily at 00:05 UTC, before the candles' daily schedule: keeps market status (and a
    universe's members) current. Running by default for universe entries, whose markets depend on
    it; stopped for listed markets, where it only refreshes flags and rankings."""
    return dg.ScheduleDefinition(
        name=f"exchange_metadata_{settings.id}_daily",
        cron_schedule="5 0 * * *",
        execution_timezone="UTC",
        target=dg.AssetSelection.assets(exchange_metadata_asset_key(settings.id)),
        default_status=dg.DefaultScheduleStatus.RUNNING if settings.universe is not None else dg.DefaultScheduleStatus.STOPPED,
        description=f"Refreshes {exchange_metadata_asset_key(settings.id).to_user_string()}: market status, rankings, universe members.",
    )


def _add_universe_partitions(instance: dg.DagsterInstance, settings: ExchangeSettings, metadata: ExchangeMetadata) -> list[str]:
    """Every market the universe ever selected becomes a market partition (added, never removed:
    a market that left keeps its history); returns the symbols added now."""
    name = universe_partitions_name(settings)
    present = set(instance.get_dynamic_partitions(name))
    added = [m.symbol for m in metadata.markets if symbol_key(m.symbol) not in present]
    if added:
        instance.add_dynamic_partitions(name, [symbol_key(symbol) for symbol in added])
    return added


def _asset_metadata(metadata: ExchangeMetadata) -> dict[str, object]:
    top = ["| rank | market | quote volume (24h) | base volume (24h) | last |", "| ---: | --- | ---: | ---: | ---: |"]
    top += [
        f"| {m.rank} | {m.symbol} | {m.quote_volume:,.2f} | {m.base_volume:,.4f} | {'' if m.last_price is None else f'{m.last_price:g}'} |"
        for m in metadata.top_markets
    ]
    firsts = ["| market | timeframe | first candle |", "| --- | --- | --- |"]
    firsts += [
        f"| {symbol} | {tf} | {'' if ms is None else pd.Timestamp(ms, unit='ms', tz='UTC').isoformat()} |"
        for symbol, by_tf in metadata.first_candles.items()
        for tf, ms in by_tf.items()
    ]
    flagged = "\n".join(f"- {m.symbol}: {m.status} ({m.reason})" for m in metadata.flagged) or "none"
    return {
        "top_markets": dg.MetadataValue.md("\n".join(top)),
        "maker_fee": metadata.maker_fee,
        "taker_fee": metadata.taker_fee,
        "fees_source": metadata.fees_source,
        "timeframes": ", ".join(metadata.timeframes),
        "markets_listed": metadata.markets_listed,
        "first_candles": dg.MetadataValue.md("\n".join(firsts)),
        "flagged_markets": dg.MetadataValue.md(flagged),
        "flagged_count": len(metadata.flagged),
        "active_markets": ", ".join(m.symbol for m in metadata.markets if not m.flagged),
    }
