"""What the HTML report costs: the engine's indicator recording, then building, writing and the
size of a one-market report, at a short and a long backtest.

For each size (seeded synthetic candles, ``sma_crossover`` 20/50): the backtest's time and the
part of it spent recording indicators (``engine.indicators.record_indicators``: bar <= 1 % of
the backtest), then the report's figures (price with merged candles past ``plots.MAX_CANDLES``,
equity) built and written through ``report.write_html_report``: seconds and MB (plotly.js alone
is about 4.8 MB of every report).

    python bench/report.py [--days 30,365] [--timeframe 1h]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

from atlas_pipeline.research import engine
from atlas_pipeline.research.engine import BacktestSpec, run_backtest
from atlas_pipeline.research.metrics import compute_metrics
from atlas_pipeline.research.plots import equity_figure, price_figure
from atlas_pipeline.research.report import ReportChart, ReportSection, write_html_report

sys.path.insert(0, str(Path(__file__).parent))
from store_read import synthetic_candles  # noqa: E402

BAR = 0.01
SPEC = BacktestSpec("sma_crossover", {"fast": 20, "slow": 50})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", default="30,365", help="backtest lengths in days, comma-separated")
    parser.add_argument("--timeframe", default="5m")
    args = parser.parse_args()
    recorded: list[float] = []
    original = engine.record_indicators

    def timed(*call_args):
        began = time.perf_counter()
        out = original(*call_args)
        recorded.append(time.perf_counter() - began)
        return out

    engine.record_indicators = timed
    worst = 0.0
    for days in (int(d) for d in args.days.split(",")):
        start = dt.date(2025, 1, 1)
        candles = synthetic_candles(args.timeframe, start, start + dt.timedelta(days=days))
        began = time.perf_counter()
        result = run_backtest(candles, SPEC, args.timeframe)
        backtest = time.perf_counter() - began
        share = recorded[-1] / backtest
        worst = max(worst, share)
        began = time.perf_counter()
        shown = candles.iloc[result.warmup_bars :]
        title = f"bench {days}d {args.timeframe}"
        sections = [ReportSection("BENCH/USDT", compute_metrics(result.equity, result.trades, result.close), [
            ReportChart("price", price_figure(shown, result.close, result.indicators, result.indicator_panels,
                                              result.orders, result.trades, title)),
            ReportChart("equity", equity_figure(result.equity, result.close, title)),
        ])]
        with tempfile.TemporaryDirectory() as folder:
            path = write_html_report(Path(folder) / "report.html", title, sections)
            size = path.stat().st_size
        report = time.perf_counter() - began
        print(f"{days:>4} days {args.timeframe} ({len(candles):,} bars, {len(result.orders):,} orders): backtest "
              f"{backtest:.2f} s, indicators recorded in {recorded[-1] * 1000:.1f} ms ({share:.3%}); "
              f"report built and written in {report:.2f} s, {size / 1e6:.1f} MB")
    print(f"indicator recording, worst share of a backtest: {worst:.3%} (bar <= {BAR:.0%})")
    return 0 if worst <= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
