"""``atlas backtest --strategy S [--strategy T] --params k=v,...``: backtests without editing YAML.

Each strategy becomes an ad-hoc backtest (``config.adhoc``): its entry is written to
``$ATLAS_HOME/adhoc/backtests.yaml`` under a name derived from the arguments, then materialized
through Dagster like a configured one (``atlas backtest <name>``), so it shows in the UI with its
lineage. Several strategies run one after the other and end with a table comparing them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import yaml

from atlas_pipeline.commands.timerange import add_range_arguments

ADHOC_SIZING = {"fraction": 0.95}
ADHOC_SLIPPAGE = 0.0005
"""An ad-hoc backtest's sizing and slippage (README's example values); cash and fees as configured
backtests default (10,000; the exchange's taker fee). Edit the entry in the ad-hoc file to change them."""
COMPARED_METRICS = ("sharpe", "total_return", "cagr", "max_drawdown", "trade_count", "win_rate", "buy_and_hold_return")


def add_arguments(backtest: argparse.ArgumentParser) -> None:
    adhoc = backtest.add_argument_group("ad-hoc backtest (instead of a NAME from config/backtests.yaml)")
    adhoc.add_argument("--strategy", action="extend", nargs="+", metavar="STRATEGY",
                       help="strategy module in strategies/ (several: run each and compare them in a table)")
    adhoc.add_argument("--params", action="append", metavar="K=V,...",
                       help="params, e.g. fast=10,slow=40: once for every strategy, or once per --strategy in order")
    adhoc.add_argument("--exchange", help="exchange id (default: the only configured one)")
    adhoc.add_argument("--timeframe", help="timeframe, e.g. 1h (default: the exchange's only one)")
    add_range_arguments(
        adhoc,
        start_help="first day of the period (default: the exchange's history_start)",
        end_help="day after the last (default: through the newest candle)",
    )


def dispatch(args: argparse.Namespace) -> None:
    """A configured backtest by name, or ad-hoc ones with ``--strategy``."""
    from atlas_pipeline.cli import UsageError, cmd_backtest
    from atlas_pipeline.commands.progress_bars import progress_bars

    adhoc_flags = [flag for flag in ("strategy", "params", "exchange", "timeframe", "timerange", "days", "start", "end")
                   if getattr(args, flag) is not None]
    if args.name is not None and adhoc_flags:
        extra = "" if adhoc_flags[0] == "strategy" else f"; --{adhoc_flags[0]} is for ad-hoc backtests"
        raise UsageError(f"give a backtest NAME or --strategy, not both{extra}")
    if args.name is None and not args.strategy:
        raise UsageError("give a backtest NAME from config/backtests.yaml, or --strategy STRATEGY for an ad-hoc backtest")
    with progress_bars():
        if args.name is not None:
            cmd_backtest(args)
        else:
            run_adhoc(args)


def parse_params(text: str) -> dict[str, Any]:
    """``fast=10,slow=40,allow_short=true`` -> ``{"fast": 10, "slow": 40, "allow_short": True}``
    (values read as YAML scalars: ints, floats, booleans, else strings)."""
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--params {text!r}: {item!r} is not NAME=VALUE (e.g. fast=10,slow=40)")
        try:
            parsed = yaml.safe_load(value.strip())
        except yaml.YAMLError:
            parsed = value.strip()
        if not isinstance(parsed, (int, float, bool, str)):
            parsed = value.strip()
        params[key.strip()] = parsed
    return params


def _params_per_strategy(args: argparse.Namespace) -> list[dict[str, Any]]:
    given = args.params or []
    if len(given) > 1 and len(given) != len(args.strategy):
        raise ValueError(f"--params given {len(given)} times for {len(args.strategy)} --strategy: give it once, or once per strategy")
    parsed = [parse_params(text) for text in given]
    if len(parsed) <= 1:
        return [parsed[0] if parsed else {} for _ in args.strategy]
    return parsed


def adhoc_entries(args: argparse.Namespace) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """``[(name, entry)]`` for the ad-hoc backtests the arguments ask for, and their markets,
    checked against the config and the strategies (``ValueError`` / ``StrategyError``: exit 2)."""
    from atlas_pipeline.cli import _entry_markets, _few
    from atlas_pipeline.commands.timerange import chosen_range
    from atlas_pipeline.config import load_exchanges_config
    from atlas_pipeline.config.adhoc import adhoc_name
    from atlas_pipeline.research.strategy_loader import load_strategy, validate_params

    exchanges = load_exchanges_config()
    exchange = args.exchange or (next(iter(exchanges.exchanges)) if len(exchanges.exchanges) == 1 else None)
    if exchange is None:
        raise ValueError(f"--exchange is needed: several are configured ({', '.join(sorted(exchanges.exchanges))})")
    try:
        source = exchanges.get(exchange)
    except KeyError as error:
        raise ValueError(str(error).strip('"')) from None
    timeframe = args.timeframe or (source.timeframes[0] if len(source.timeframes) == 1 else None)
    if timeframe is None:
        raise ValueError(f"--timeframe is needed: {exchange} collects {', '.join(source.timeframes)}")
    if timeframe not in source.timeframes:
        raise ValueError(f"timeframe {timeframe!r} is not collected for {exchange} (configured: {source.timeframes})")
    known, default = _entry_markets(source)
    symbols = list(dict.fromkeys(args.symbol or default))
    for symbol in symbols:
        if symbol not in known:
            raise ValueError(f"market {symbol!r} is not collected for {exchange} (configured: {_few(known)})")
    if not symbols:
        raise ValueError(f"--symbol is needed: {exchange}'s universe members are not known yet")
    window = chosen_range(args)
    if args.days is not None:  # the last N days: through the newest candle, not a fixed end
        window = dataclasses.replace(window, end=None)
    start = window.start or source.history_start
    if start < source.history_start:
        raise ValueError(f"the period starts {start}, before {exchange}'s history_start {source.history_start}")
    if window.end is not None and window.end <= start:
        raise ValueError(f"the period's end {window.end} must be after its start {start}")
    entries = []
    for strategy, params in zip(args.strategy, _params_per_strategy(args), strict=True):
        params = validate_params(strategy, load_strategy(strategy), params)
        name = adhoc_name(strategy, params, exchange, timeframe, start, window.end)
        period = {"start": start.isoformat(), **({"end": window.end.isoformat()} if window.end else {})}
        entry = {
            "strategy": strategy, "params": params, "exchange": exchange, "timeframe": timeframe,
            "symbols": symbols, "period": period, "sizing": dict(ADHOC_SIZING), "slippage": ADHOC_SLIPPAGE,
        }
        entries.append((name, entry))
    return entries, symbols


def run_adhoc(args: argparse.Namespace) -> None:
    from atlas_pipeline.cli import CommandFailed, UsageError, cmd_backtest
    from atlas_pipeline.config.adhoc import adhoc_backtests_file, save_adhoc_backtest
    from atlas_pipeline.market_data.store import CandleStore
    from atlas_pipeline.research.strategy_loader import StrategyError

    try:
        entries, symbols = adhoc_entries(args)
    except (ValueError, StrategyError) as error:
        raise UsageError(str(error).splitlines()[0]) from None
    path = adhoc_backtests_file(CandleStore().root)
    if path is None:
        raise UsageError("ad-hoc backtests need a local ATLAS_HOME (it is a URL): add the backtest to config/backtests.yaml")
    failures: list[str] = []
    for name, entry in entries:
        save_adhoc_backtest(path, name, entry)
        print(f"atlas backtest: ad-hoc {name} ({entry['strategy']} {entry['params']}) in {path}", file=sys.stderr)
        try:
            cmd_backtest(argparse.Namespace(**{**vars(args), "name": name, "symbol": symbols}))  # as `atlas backtest <name>`
        except CommandFailed as error:
            if len(entries) == 1:
                raise
            print(f"atlas backtest: {name} failed: {error}", file=sys.stderr)
            failures.append(f"{name}: {error}")
    if len(entries) > 1:
        print("\n## Comparison\n")
        print(comparison_markdown([name for name, _ in entries], symbols))
    if failures:
        raise CommandFailed(failures[0] + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))


def comparison_markdown(names: list[str], symbols: list[str]) -> str:
    """One row per (backtest, market) with stored metrics, best Sharpe first, as a markdown table."""
    from atlas_pipeline.cli import _backtest_settings
    from atlas_pipeline.market_data.store import CandleStore
    from atlas_pipeline.research.metrics import format_metric, metric_label
    from atlas_pipeline.research.result_store import ResultStore

    results = ResultStore(CandleStore().root)
    rows = []
    for name in names:
        settings = _backtest_settings(name)
        for symbol in symbols:
            metrics = results.load_metrics(name, symbol)
            if metrics is not None:
                rows.append((float(metrics.get("sharpe", float("nan"))), settings, symbol, metrics))
    rows.sort(key=lambda row: -row[0] if row[0] == row[0] else float("inf"))  # NaN last
    header = ["strategy", "params", "market", *(metric_label(key) for key in COMPARED_METRICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * len(COMPARED_METRICS)]
    for _, settings, symbol, metrics in rows:
        params = ", ".join(f"{k}={v}" for k, v in settings.params.items()) or "defaults"
        values = [format_metric(key, metrics[key]) if key in metrics else "-" for key in COMPARED_METRICS]
        lines.append("| " + " | ".join([settings.strategy, params, symbol, *values]) + " |")
    return "\n".join(lines) if rows else "no metrics stored for these backtests"


def find_backtest(name: str):
    """A configured backtest, else an ad-hoc one of ``$ATLAS_HOME`` (``UsageError`` naming both)."""
    from atlas_pipeline.cli import UsageError
    from atlas_pipeline.config import load_exchanges_config
    from atlas_pipeline.config.adhoc import adhoc_backtests_file, load_adhoc_backtests
    from atlas_pipeline.config.backtests import load_backtests_config
    from atlas_pipeline.market_data.store import CandleStore

    exchanges = load_exchanges_config()
    configured = load_backtests_config(exchanges).backtests
    if name in configured:
        return configured[name]
    adhoc = load_adhoc_backtests(adhoc_backtests_file(CandleStore().root), exchanges, set(configured))
    if name in adhoc:
        return adhoc[name]
    listing = f"configured: {sorted(configured)}" + (f"; ad-hoc: {len(adhoc)} (atlas strategies, atlas backtest --strategy)" if adhoc else "")
    raise UsageError(f"backtest {name!r} is not configured; {listing}")
