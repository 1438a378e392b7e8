"""The offline demo: the real pipeline against the exchange emulator, into the local store.

It starts the emulator with seeded synthetic Binance markets, writes a config that points ccxt at
it, and materializes the last N days of every market and timeframe through the Dagster assets
(one run per market, as a backfill would), in the instance the Dagster UI will show.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

DEMO_SEED = 7
DEMO_PORT = 8765
DEMO_MARKETS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
DEMO_TIMEFRAMES = ["1h", "1d"]


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def write_demo_config(folder: Path, api_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "exchanges": {
            "binance": {
                "timeframes": DEMO_TIMEFRAMES,
                "markets": DEMO_MARKETS,
                "history_start": "2017-01-01",
                "api_url": api_url,
                "min_request_interval_ms": 0,
            }
        }
    }
    path = folder / "exchanges.yaml"
    path.write_text("# Written by `atlas demo`: ccxt talks to the local exchange emulator.\n" + yaml.safe_dump(config))
    return folder


def run_demo(days: int = 90) -> None:
    from atlas_pipeline.cli import CommandFailed, dagster_instance
    from atlas_pipeline.defs.market_data.launch import materialize_ohlcv_range
    from atlas_pipeline.defs.definitions import build_definitions
    from atlas_pipeline.market_data.emulator import build_emulator
    from atlas_pipeline.market_data.store import CandleStore

    store = CandleStore()
    instance = dagster_instance()
    port = DEMO_PORT if _port_free(DEMO_PORT) else 0
    with build_emulator(synthetic_seed=DEMO_SEED, port=port) as emulator:
        config_dir = write_demo_config(Path(store.root) / "demo" / "config", emulator.base_url)
        os.environ["ATLAS_CONFIG"] = str(config_dir)
        today = dt.datetime.now(dt.UTC).date()
        start, end = today - dt.timedelta(days=days), today + dt.timedelta(days=1)
        print(f"atlas demo: emulator at {emulator.base_url}; materializing {start}..{today} "
              f"for {', '.join(DEMO_MARKETS)} at {', '.join(DEMO_TIMEFRAMES)}", file=sys.stderr)
        runs = materialize_ohlcv_range(
            build_definitions(config_dir), instance, "binance", DEMO_TIMEFRAMES, DEMO_MARKETS, start, end
        )
    failed = [run for run in runs if not run.success]
    if failed:
        raise CommandFailed(f"{failed[0].symbol}: {failed[0].failure_reason()}")
    print("\nStored candles:")
    for series in store.series("binance"):
        coverage = store.coverage(*series)
        print(f"  {series.exchange} {series.symbol:9} {series.timeframe:3}: {int(coverage['rows'].sum()):>6,} candles "
              f"over {len(coverage)} days")
    print(f"\nData:            {store.root}/ohlcv")
    print(f"Dagster runs:    {os.environ['DAGSTER_HOME']} ({len(runs)} runs)")
    bin_dir = Path(sys.executable).parent
    print("Open the UI:     "
          f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} ATLAS_CONFIG={config_dir} {bin_dir / 'dagster'} dev -w workspace.yaml")
    print(f"Fetch more:      {bin_dir / 'atlas'} emulator --synthetic {DEMO_SEED} --port {urlsplit(emulator.base_url).port}   "
          "(then materialize or backfill from the UI)")
