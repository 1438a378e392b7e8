"""``atlas portfolio <name>``: materialize ``<name>/portfolio`` in-process (so the run shows in the
UI), print its metrics and attribution, and write its HTML report. Kept beside ``cli.py``, which
only registers it."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_portfolio_command(
    commands: argparse._SubParsersAction,
    usage_error: type[Exception],
    command_failed: type[Exception],
    dagster_instance: Callable[[], Any],
) -> None:
    """Register the command; the error types and the instance come from ``cli.py`` (which may run
    as ``__main__``, so importing them from ``atlas_pipeline.cli`` would give other classes)."""
    portfolio = commands.add_parser("portfolio", help="run a portfolio from config/backtests.yaml, print its metrics, write its report")
    portfolio.add_argument("name", help="portfolio name from the portfolios: section of config/backtests.yaml")
    portfolio.add_argument("--output", help="HTML report (default: $ATLAS_HOME/reports/portfolio_<name>.html)")
    handler = functools.partial(
        cmd_portfolio, usage_error=usage_error, command_failed=command_failed, dagster_instance=dagster_instance
    )
    portfolio.set_defaults(handler=handler)


def cmd_portfolio(
    args: argparse.Namespace,
    usage_error: type[Exception],
    command_failed: type[Exception],
    dagster_instance: Callable[[], Any],
) -> None:
    import dagster as dg

    from atlas_pipeline.config import load_exchanges_config
    from atlas_pipeline.config.portfolios import load_portfolios_config
    from atlas_pipeline.defs.definitions import build_definitions
    from atlas_pipeline.defs.research.portfolios import portfolio_asset_key
    from atlas_pipeline.defs.run_hygiene import process_tags
    from atlas_pipeline.defs.run_results import LaunchedRun
    from atlas_pipeline.market_data.store import CandleStore
    from atlas_pipeline.portfolio_runs import write_portfolio_report
    from atlas_pipeline.research.metrics import metrics_table_markdown
    from atlas_pipeline.research.result_store import ResultStore
    from atlas_pipeline.research_runs import table_markdown

    try:
        settings = load_portfolios_config(load_exchanges_config()).get(args.name)
    except KeyError as error:
        raise usage_error(str(error).strip('"')) from None
    instance = dagster_instance()
    print(f"atlas portfolio: {args.name} on {', '.join(settings.symbols)}; Dagster instance {os.environ['DAGSTER_HOME']}", file=sys.stderr)
    key = portfolio_asset_key(args.name)
    result = dg.materialize(
        [build_definitions().resolve_assets_def(key)], instance=instance, tags=process_tags(), raise_on_error=False
    )
    run = LaunchedRun(f"{args.name}/portfolio", result)
    run.raise_if_interrupted()
    if not run.success or not run.materialized(key):  # stored results would be an older run's
        raise command_failed(f"{run.label}: {run.failure_reason()}")
    root = CandleStore().root
    results = ResultStore(root)
    summary, frames = results.load_portfolio(args.name, ("attribution",))
    print(f"\n## portfolio {args.name} ({settings.timeframe}, {settings.allocation} weights)\n")
    print(metrics_table_markdown(summary["metrics"]))
    print("\n### contribution per market\n")
    print(table_markdown(frames["attribution"]))
    reports = Path(root) / "reports" if "://" not in root else Path.cwd() / "reports"
    path = write_portfolio_report(settings, results, Path(args.output) if args.output else reports / f"portfolio_{args.name}.html")
    print(f"\nresults: {results.url(results.portfolio_folder(args.name))}\nreport: {path}")
