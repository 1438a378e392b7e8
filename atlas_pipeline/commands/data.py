"""``atlas data``: what the candle store holds, like freqtrade's ``list-data --show-timerange``."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser(
        "data",
        help="list stored candles: first/last candle, days, missing candles, incomplete days per market and timeframe",
        description="List what the candle store under $ATLAS_HOME holds, from file footers only (fast at any size).",
    )
    data.add_argument("--exchange", help="only this exchange")
    data.add_argument("--market", "--symbol", dest="market", action="extend", nargs="+", metavar="MARKET",
                      help="only these markets, e.g. BTC/USDT (repeatable)")
    data.add_argument("--timeframe", action="extend", nargs="+", help="only these timeframes, e.g. 1h (repeatable)")
    data.set_defaults(handler=cmd_data)


def cmd_data(args: argparse.Namespace) -> None:
    from atlas_pipeline.cli import UsageError
    from atlas_pipeline.market_data.inventory import inventory, inventory_text
    from atlas_pipeline.market_data.store import CandleStore

    store = CandleStore()
    try:
        table = inventory(store, args.exchange, args.market, args.timeframe)
    except ValueError as error:  # e.g. a timeframe that is not one, an exchange name with a slash
        raise UsageError(str(error)) from None
    if table.empty:
        chosen = " ".join(
            f"{flag} {', '.join(value) if isinstance(value, list) else value}"
            for flag, value in (("--exchange", args.exchange), ("--market", args.market), ("--timeframe", args.timeframe))
            if value
        )
        print(f"no candles stored under {store.root}/ohlcv" + (f" for {chosen}" if chosen else "") + " (atlas fetch stores some)")
        return
    print(inventory_text(table))
    print(
        f"\n{len(table)} series, {int(table['candles'].sum()):,} candles, {int(table['missing_candles'].sum()):,} missing, "
        f"{int(table['incomplete_days'].sum()):,} incomplete days; under {store.root}/ohlcv"
    )
