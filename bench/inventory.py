"""``atlas data`` at scale: the store inventory of N markets x 9 years of 1h, from footers only.

Run: ``.venv/bin/python bench/inventory.py [MARKETS] [ROOT]`` (default 500 markets, a temp folder;
an existing ROOT built by an earlier run is reused). Writes the store once (one 9-year series
copied under every market name: ``write_days`` per year file, as a backfill writes), then prints
the inventory time (best of 3: ``store.series`` + ``coverage`` of every series, what ``atlas data``
does), the time to read every candle of the same store (what a listing built on ``read`` would
cost), and their ratio, plus the inventory time per series.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from store_read import END, START, _best_of, synthetic_candles  # bench/ beside this script

from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.candles import split_by_day
from atlas_pipeline.market_data.inventory import inventory

EXCHANGE, TIMEFRAME = "bench", "1h"


def build(store: CandleStore, markets: int) -> float:
    days = split_by_day(synthetic_candles(TIMEFRAME, START, END))
    by_year: dict[int, dict] = {}
    for day, frame in days.items():
        by_year.setdefault(day.year, {})[day] = frame
    began = time.perf_counter()
    for index in range(markets):
        symbol = f"M{index:03d}/USDT"
        if store.coverage(EXCHANGE, symbol, TIMEFRAME, END.replace(year=END.year - 1), END).shape[0]:
            continue  # reused from an earlier run
        for year_days in by_year.values():
            store.write_days(EXCHANGE, symbol, TIMEFRAME, year_days, complete=True)
    return time.perf_counter() - began


def main() -> None:
    markets = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    root = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="atlas-inventory-"))
    store = CandleStore(root)
    wrote = build(store, markets)
    print(f"store: {markets} markets x {START}..{END} {TIMEFRAME} under {root} (written in {wrote:.1f} s)")
    listed, table = _best_of(lambda: inventory(store, EXCHANGE))
    assert len(table) == markets and int(table["missing_candles"].sum()) == 0
    print(f"inventory (atlas data): {listed:.2f} s for {len(table)} series, {listed / len(table) * 1000:.2f} ms per series, "
          f"{int(table['candles'].sum()):,} candles listed")
    sample = min(markets, 50)
    began = time.perf_counter()
    for key in store.series(EXCHANGE)[:sample]:
        store.read(*key)
    read_all = (time.perf_counter() - began) / sample * markets
    print(f"reading every candle instead: {read_all:.2f} s (measured on {sample} series, scaled to {markets}); "
          f"ratio read / inventory = {read_all / listed:.1f}x")


if __name__ == "__main__":
    main()
