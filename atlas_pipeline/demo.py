"""The offline demo: the real pipeline against the exchange emulator, into the local store.

It writes its config into the data home (``$ATLAS_HOME/config``, which every later ``atlas``
command and ``atlas ui`` then read): a Binance entry served by the exchange emulator with seeded
synthetic markets (``emulator: {synthetic: 7}``, started inside each process that fetches) and
three backtests. Then it materializes the last N days of every market and timeframe through the
Dagster assets (one run per market, as a backfill would), in the instance the Dagster UI will show.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import yaml

DEMO_SEED = 7
DEMO_MARKETS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
DEMO_TIMEFRAMES = ["1h", "1d"]


def demo_backtests(start: dt.date, days: int = 90) -> dict[str, dict]:
    """Two strategies and one walk-forward sweep on every demo market's 1h candles from ``start``."""
    common = {
        "exchange": "binance",
        "timeframe": "1h",
        "symbols": DEMO_MARKETS,
        "period": {"start": start.isoformat()},
        "cash": 10_000,
        "sizing": {"fraction": 0.95},
        "slippage": 0.0005,
    }
    return {
        "sma_crossover_1h": {"strategy": "sma_crossover", "params": {"fast": 20, "slow": 50}, **common},
        "rsi_long_short_1h": {"strategy": "rsi_mean_reversion", "params": {"period": 14, "allow_short": True}, **common},
        "sma_walkforward_1h": {
            "strategy": "sma_crossover",
            "grid": {"fast": [5, 10, 20, 30], "slow": {"start": 40, "stop": 100, "step": 20}},
            "objective": "sharpe",
            "filters": {"min_trades": 3, "max_drawdown": 0.5},
            "walk_forward": {"train_days": max(days // 3, 2), "test_days": max(days // 9, 1)},
            **common,
        },
    }


DEMO_MARKER = "# Written by `atlas demo`"
"""First line of the config files the demo writes; it overwrites only files that carry it."""


def write_demo_config(
    folder: Path, api_url: str | None = None, backtests_from: dt.date | None = None, days: int = 90
) -> Path:
    """The demo's ``exchanges.yaml`` and, with ``backtests_from``, ``backtests.yaml``.

    Without ``api_url`` the exchange entry is ``emulator: {synthetic: DEMO_SEED}``: every process
    that fetches serves the demo's markets itself, so later commands need no emulator running.
    """
    folder.mkdir(parents=True, exist_ok=True)
    source = {"api_url": api_url} if api_url else {"emulator": {"synthetic": DEMO_SEED}}
    config = {
        "exchanges": {
            "binance": {
                "timeframes": DEMO_TIMEFRAMES,
                "markets": DEMO_MARKETS,
                "history_start": "2017-01-01",
                **source,
                "min_request_interval_ms": 0,
            }
        }
    }
    path = folder / "exchanges.yaml"
    _write(path, f"{DEMO_MARKER}: ccxt talks to Atlas's exchange emulator (synthetic Binance markets).\n"
                 "# For the real exchange use a data home without this folder, or ATLAS_CONFIG (README, Configuration).\n"
                 + yaml.safe_dump(config, sort_keys=False))
    backtests = folder / "backtests.yaml"
    if backtests_from is not None:
        _write(backtests, f"{DEMO_MARKER}.\n" + yaml.safe_dump({"backtests": demo_backtests(backtests_from, days)}, sort_keys=False))
    elif backtests.exists():
        backtests.unlink()
    return folder


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def demo_config_dir() -> Path:
    """Where the demo writes its config: the data home's own ``config/`` (``config.paths``), which
    every later command and ``atlas ui`` then use. A folder there that the demo did not write is
    the user's: the demo refuses to overwrite it."""
    from atlas_pipeline.cli import UsageError
    from atlas_pipeline.config.paths import home_config_dir

    folder = home_config_dir()
    if folder is None:
        raise UsageError("atlas demo needs a local ATLAS_HOME (a folder, not a URL)")
    for name in ("exchanges.yaml", "backtests.yaml"):
        file = folder / name
        if file.exists() and not file.read_text(errors="replace").startswith(DEMO_MARKER):
            raise UsageError(f"{file} was not written by atlas demo; run the demo with another ATLAS_HOME")
    return folder


def run_demo(days: int = 90) -> None:
    from atlas_pipeline.cli import CommandFailed, UsageError, dagster_instance
    from atlas_pipeline.config import load_exchanges_config
    from atlas_pipeline.config.backtests import load_backtests_config
    from atlas_pipeline.defs.definitions import build_definitions
    from atlas_pipeline.defs.market_data.launch import materialize_ohlcv_range
    from atlas_pipeline.defs.research.launch import materialize_backtests
    from atlas_pipeline.market_data.store import CandleStore
    from atlas_pipeline.research.result_store import ResultStore
    from atlas_pipeline.research_runs import leaderboard, leaderboard_markdown, write_backtest_report

    if os.environ.get("ATLAS_CONFIG"):
        raise UsageError("ATLAS_CONFIG is set: the demo writes its own config into the data home; unset it")
    store = CandleStore()
    config_dir = demo_config_dir()
    instance = dagster_instance()
    today = dt.datetime.now(dt.UTC).date()
    start, end = today - dt.timedelta(days=days), today + dt.timedelta(days=1)
    write_demo_config(config_dir, backtests_from=start, days=days)
    defs = build_definitions(config_dir)
    print(f"atlas demo: config {config_dir} (emulated Binance, seed {DEMO_SEED}); materializing {start}..{today} "
          f"for {', '.join(DEMO_MARKETS)} at {', '.join(DEMO_TIMEFRAMES)}", file=sys.stderr)
    runs = materialize_ohlcv_range(defs, instance, "binance", DEMO_TIMEFRAMES, DEMO_MARKETS, start, end)
    failed = [run for run in runs if not run.success]
    if failed:
        raise CommandFailed(f"{failed[0].label}: {failed[0].failure_reason()}")

    backtests = list(load_backtests_config(load_exchanges_config(config_dir), config_dir).backtests.values())
    print(f"atlas demo: backtests {', '.join(b.name for b in backtests)}", file=sys.stderr)
    research_runs = materialize_backtests(defs, instance, backtests)
    failed_research = [run for run in research_runs if not run.success]
    if failed_research:
        raise CommandFailed(f"{failed_research[0].label}: {failed_research[0].failure_reason()}")
    results = ResultStore(store.root)
    reports = [write_backtest_report(b, results, Path(store.root) / "reports" / f"{b.name}.html") for b in backtests]

    print("\nStored candles:")
    for series in store.series("binance"):
        coverage = store.coverage(*series)
        print(f"  {series.exchange} {series.symbol:9} {series.timeframe:3}: {int(coverage['rows'].sum()):>6,} candles "
              f"over {len(coverage)} days")
    print("\nLeaderboard:\n" + leaderboard_markdown(leaderboard(backtests, results)))
    for settings in (b for b in backtests if b.walk_forward is not None):
        for symbol in settings.symbols:
            summary = results.load_walk_forward_summary(settings.name, symbol) or {}
            print(f"Walk-forward {settings.name} {symbol}: {summary.get('windows')} windows, out-of-sample return "
                  f"{summary.get('oos_total_return', float('nan')):.2%}, efficiency {summary.get('efficiency', float('nan')):.2f}, "
                  f"latest winner {summary.get('latest_params')}  ({results.walkforward_folder(settings.name, symbol)})")
    print(f"\nData:            {store.root}/ohlcv, backtests in {store.root}/backtests")
    print("Reports:         " + "\n                 ".join(str(path) for path in reports))
    print(f"Dagster runs:    {os.environ['DAGSTER_HOME']} ({len(runs) + len(research_runs)} runs)")
    print(f"Config:          {config_dir} (every atlas command and atlas ui now use it)")
    print("Open the UI:     atlas ui")
    print("Fetch more:      atlas fetch --exchange binance --symbol BTC/USDT --timeframe 1h --start <date>   "
          "(the emulated exchange starts inside each run)")
