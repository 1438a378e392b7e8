"""``atlas``: the command line. Each command calls the same functions the Dagster UI runs.

Exit codes: 0 success; 1 a run or request failed; 2 bad arguments or configuration; 130
interrupted. Failures end with one line on stderr that says why and a line naming the command's
full log (``cli_console``); ``--verbose`` shows tracebacks and Dagster's events on the terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


class UsageError(Exception):
    """Bad arguments or configuration: exit code 2."""


class CommandFailed(Exception):
    """A run or a request failed: exit code 1."""


CLI_DAGSTER_YAML_V1 = (
    "# Dagster instance created by the atlas CLI: SQLite storage in this folder.\n"
    "# Production storage (PostgreSQL) and run launchers: see README.md.\n"
    "telemetry:\n  enabled: false\n"
)
CLI_DAGSTER_YAML = CLI_DAGSTER_YAML_V1 + (
    "# Dagster's run monitoring (the daemon of `atlas ui`): runs stuck STARTING for 180 s fail, runs\n"
    "# stuck CANCELING are marked canceled. Runs of killed atlas processes are failed by Atlas itself\n"
    "# (docs/debugging.md, Run hygiene): DefaultRunLauncher cannot health-check runs.\n"
    "run_monitoring:\n  enabled: true\n  start_timeout_seconds: 180\n  cancel_timeout_seconds: 180\n"
)
"""The dagster.yaml the CLI writes into a new home (and over its own earlier version, V1)."""


PLANNED_EVENTS_ENV = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
"""One "materialization planned" event per asset of a range run instead of one per partition.
SQLite stores events one at a time (~9 ms each): a 1m backfill since 2017 (3,621 partitions) spent
33 s creating its run before its first line of progress. Dagster's trade-off, documented in its
code: the partitions of a failed range run show as missing rather than failed."""


def dagster_instance():
    """The instance at ``$DAGSTER_HOME``; without one, a persistent one under ``$ATLAS_HOME``.

    Runs launched from the CLI then show up in ``dagster dev`` started with the same home. Runs
    that killed atlas processes left unfinished on this host are marked failed first (run hygiene).
    """
    import dagster as dg

    from atlas_pipeline.defs.run_hygiene import fail_dead_runs
    from atlas_pipeline.market_data.store import CandleStore

    if not os.environ.get("DAGSTER_HOME"):
        root = CandleStore().root
        if "://" in root:
            raise UsageError("set DAGSTER_HOME: ATLAS_HOME is a URL, so Atlas cannot keep Dagster's storage under it")
        home = Path(root) / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        settings = home / "dagster.yaml"
        if not settings.exists() or settings.read_text() == CLI_DAGSTER_YAML_V1:
            settings.write_text(CLI_DAGSTER_YAML)
        os.environ["DAGSTER_HOME"] = str(home)
    os.environ.setdefault(PLANNED_EVENTS_ENV, "true")
    instance = dg.DagsterInstance.get()
    for dead in fail_dead_runs(instance, reporter=f"atlas (pid {os.getpid()})"):
        print(f"atlas: run {dead.run_id} ({dead.job_name}) marked failed: its process {dead.pid} is gone", file=sys.stderr)
    return instance


def cmd_fetch(args: argparse.Namespace) -> None:
    from atlas_pipeline.commands.fetch_summary import FetchSummary
    from atlas_pipeline.commands.progress_bars import progress_bars
    from atlas_pipeline.commands.timerange import chosen_range
    from atlas_pipeline.config import load_exchanges_config
    from atlas_pipeline.defs.market_data.launch import materialize_ohlcv_range
    from atlas_pipeline.config.paths import describe_config_dir
    from atlas_pipeline.market_data.exchange_client import NOT_LISTED_MESSAGE
    from atlas_pipeline.market_data.store import CandleStore

    try:
        settings = load_exchanges_config().get(args.exchange)
    except KeyError as error:
        raise UsageError(str(error).strip('"')) from None
    timeframes = args.timeframe or settings.timeframes
    known, default = _entry_markets(settings)
    symbols = args.symbol or default
    for tf in timeframes:
        if tf not in settings.timeframes:
            raise UsageError(f"timeframe {tf!r} is not configured for {args.exchange} (configured: {settings.timeframes})")
    for symbol in symbols:
        if symbol not in known:
            raise UsageError(f"market {symbol!r} is not configured for {args.exchange} (configured: {_few(known)})")
    if not symbols:
        raise UsageError(
            f"{args.exchange} selects its markets by universe rules and none are known yet: "
            f"materialize {args.exchange}/exchange_metadata first (Dagster UI, or `atlas ui`)"
        )
    try:
        window = chosen_range(args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    start = window.start or settings.history_start
    end = window.end or dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    if start < settings.history_start:
        raise UsageError(f"--start {start} is before {args.exchange}'s history_start {settings.history_start}")
    if end <= start:
        raise UsageError(f"--end {end} must be after --start {start}")
    _refuse_future(start, end)
    _check_listed(settings, args.symbol or [])
    instance = dagster_instance()
    print(
        f"atlas fetch: {args.exchange} {', '.join(symbols)} {', '.join(timeframes)} {start}..{end} (end exclusive); "
        f"config {describe_config_dir()}; Dagster instance {os.environ['DAGSTER_HOME']}",
        file=sys.stderr,
    )
    summary = FetchSummary(args.exchange, symbols, timeframes, start, end)
    with progress_bars():
        runs = materialize_ohlcv_range(
            _build_definitions,  # only when a run is needed: an up-to-date range needs neither it nor ccxt's exchange code
            instance,
            args.exchange,
            timeframes,
            symbols,
            start,
            end,
            full_refresh=args.full_refresh,
            only_needed=True,
            say=lambda line: print(line, file=sys.stderr),
            store=CandleStore(),  # the definitions' store: CandleStoreResource's default root, $ATLAS_HOME
        )
    for run in runs:
        if run.success:  # a failed one is the command's last line
            print(f"{run.label}: run {run.result.run_id} ok", file=sys.stderr)
    failed = [run for run in runs if not run.success]
    if not failed:  # a failure's last line says why instead (and stderr stays within five lines)
        print(summary.line(runs), file=sys.stderr)
    if failed:
        reason = f"{failed[0].label}: {failed[0].failure_reason()}"
        if NOT_LISTED_MESSAGE in reason:  # a configured market the exchange does not list: config
            raise UsageError(reason)
        raise CommandFailed(reason)


def _build_definitions():
    from atlas_pipeline.defs.definitions import build_definitions

    return build_definitions()


def _refuse_future(start: dt.date, end: dt.date) -> None:
    """No candle exists yet for a day after today (UTC); `--end` is exclusive, so tomorrow is its limit."""
    today = dt.datetime.now(dt.UTC).date()
    if start > today:
        raise UsageError(f"--start {start} is in the future (today is {today} UTC)")
    if end > today + dt.timedelta(days=1):
        raise UsageError(f"--end {end} is in the future: at most {today + dt.timedelta(days=1)} (exclusive, i.e. through today {today} UTC)")


def _check_listed(settings, symbols: list[str]) -> None:
    from atlas_pipeline.config import config_dir
    from atlas_pipeline.config_check import check_listed

    check_listed(settings, symbols, config_dir())


def _entry_markets(settings) -> tuple[list[str], list[str]]:
    """(every market the entry knows, the ones fetched by default): its list, or for universe
    rules every market the universe ever selected and the current members (exchange_metadata.yaml)."""
    if settings.universe is None:
        return settings.markets, settings.markets
    from atlas_pipeline.config import config_dir
    from atlas_pipeline.market_data.exchange_metadata import metadata_path, read_metadata

    metadata = read_metadata(metadata_path(config_dir()), settings.id)
    if metadata is None:
        return [], []
    return [m.symbol for m in metadata.markets], list(metadata.universe or [])


def _few(values: list[str], limit: int = 10) -> str:
    return ", ".join(values[:limit]) + (f" and {len(values) - limit} more" if len(values) > limit else "")


def cmd_verify(args: argparse.Namespace) -> None:
    """Check every candle file; with --repair quarantine bad ones and refetch their days."""
    from atlas_pipeline.commands.progress_bars import progress_bars
    from atlas_pipeline.market_data.store import CandleStore, CorruptStoreFile
    from atlas_pipeline.store_repair import verify_archive_days, verify_store

    check = verify_archive_days if args.archive else verify_store
    try:
        with progress_bars():  # a repair refetches through the OHLCV asset
            failure = check(
                CandleStore(), args.exchange, args.symbol, args.timeframe, repair=args.repair, instance=dagster_instance
            )
    except CorruptStoreFile as error:
        raise CommandFailed(str(error)) from None
    except ValueError as error:
        raise UsageError(str(error)) from None
    if failure:
        raise CommandFailed(failure)


def cmd_emulator(args: argparse.Namespace) -> None:
    from atlas_pipeline.market_data.emulator import build_emulator, parse_fault_spec

    try:
        faults = [parse_fault_spec(spec) for spec in args.fault]
    except ValueError as error:
        raise UsageError(f"--fault: {error}") from None
    if (args.data is None) == (args.synthetic is None):
        raise UsageError("give exactly one of --data DIR or --synthetic SEED")
    if args.data is not None and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: not a folder")
    try:
        server = build_emulator(
            data_dir=args.data,
            synthetic_seed=args.synthetic,
            host=args.host,
            port=args.port,
            faults=faults,
            exchange=args.exchange,
            data_exchange=args.data_exchange,
        )
    except ValueError as error:
        hint = "" if args.data_exchange else f" (to serve another exchange's files as {args.exchange}: --data-exchange ID)"
        raise UsageError(f"--data: {error}{hint}") from None
    api = {"binance": "Binance spot", "okx": "OKX v5"}.get(args.exchange, args.exchange)
    print(f"atlas emulator: {api} REST API at {server.base_url} (Ctrl-C stops)", file=sys.stderr)
    # Started in the background from a script, SIGINT arrives ignored; make Ctrl-C and TERM stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server.serve_forever()  # returns on Ctrl-C / TERM
    print("atlas emulator: stopped", file=sys.stderr)


def _backtest_settings(name: str):
    from atlas_pipeline.commands.adhoc_backtest import find_backtest

    return find_backtest(name)  # configured in config/backtests.yaml, or ad-hoc (atlas backtest --strategy)


def cmd_backtest(args: argparse.Namespace) -> None:
    """Materialize <name>/backtest and <name>/metrics (and the leaderboard) in-process, print metrics."""
    from atlas_pipeline.defs.definitions import build_definitions
    from atlas_pipeline.defs.research.assets import metrics_asset_key
    from atlas_pipeline.defs.research.launch import materialize_backtests
    from atlas_pipeline.market_data.store import CandleStore
    from atlas_pipeline.research.metrics import metrics_table_markdown
    from atlas_pipeline.research.result_store import ResultStore
    from atlas_pipeline.research_runs import stored_coverage
    from atlas_pipeline.config import config_dir
    from atlas_pipeline.config.paths import describe_config_dir
    from atlas_pipeline.config_check import check_backtest

    settings = _backtest_settings(args.name)
    symbols = args.symbol or settings.symbols
    for symbol in symbols:
        if symbol not in settings.symbols:
            raise UsageError(f"backtest {args.name!r} does not cover {symbol!r} (symbols: {settings.symbols})")
    check_backtest(settings, config_dir())  # strategy file and params: exit 2 now, not a failed run later
    instance = dagster_instance()
    print(
        f"atlas backtest: {args.name} on {', '.join(symbols)}; config {describe_config_dir()}; "
        f"Dagster instance {os.environ['DAGSTER_HOME']}",
        file=sys.stderr,
    )
    runs = materialize_backtests(build_definitions(), instance, [settings], symbols)
    results = ResultStore(CandleStore().root)
    reasons = []
    for symbol, run in zip(symbols, runs):
        if not run.success:
            reasons.append(f"{run.label}: {run.failure_reason()}")
            continue
        if not run.materialized(metrics_asset_key(args.name)):  # stored metrics would be an older run's
            reasons.append(f"{run.label}: run {run.result.run_id} ended without materializing {metrics_asset_key(args.name).to_user_string()}")
            continue
        result = results.load_result(args.name, symbol)
        print(f"\n## {args.name} {symbol} ({result.bars:,} bars after {result.warmup_bars} warm-up)\n")
        coverage = stored_coverage(settings, symbol, results)
        if coverage is not None and coverage.warning:
            print(f"**Warning: {coverage.warning}**\n")
            print(f"atlas backtest: warning: {args.name} {symbol}: {coverage.warning}", file=sys.stderr)
        metrics = results.load_metrics(args.name, symbol) or {}
        metrics.pop("warnings", None)  # printed above
        print(metrics_table_markdown(metrics))
        overfitting = results.load_overfitting(results.folder(args.name, symbol)) if settings.grid else None
        if overfitting:
            from atlas_pipeline.research_runs import overfitting_note

            print(f"\noverfitting: {overfitting_note(overfitting, settings)}")
        print(f"\nresults: {results.url(results.folder(args.name, symbol))}")
    reasons += [f"{run.label}: {run.failure_reason()}" for run in runs[len(symbols):] if not run.success]
    if reasons:
        raise CommandFailed(reasons[0])


def cmd_report(args: argparse.Namespace) -> None:
    from atlas_pipeline.market_data.store import CandleStore
    from atlas_pipeline.research.result_store import ResultStore
    from atlas_pipeline.research_runs import write_backtest_report

    settings = _backtest_settings(args.name)
    root = CandleStore().root
    results = ResultStore(root)
    reports = Path(root) / "reports" if "://" not in root else Path.cwd() / "reports"
    output = Path(args.output) if args.output else reports / f"{args.name}.html"
    try:
        path = write_backtest_report(settings, results, output)
    except FileNotFoundError as error:
        raise CommandFailed(str(error)) from None
    print(path)


def cmd_demo(args: argparse.Namespace) -> None:
    from atlas_pipeline.commands.progress_bars import progress_bars
    from atlas_pipeline.demo import run_demo

    with progress_bars():
        run_demo(days=args.days)


def ui_command(port: int | None = None, host: str | None = None) -> list[str]:
    """``dagster dev`` on Atlas's code location: the checkout's workspace.yaml when run from it,
    else the installed package's definitions module."""
    dagster = str(Path(sys.executable).parent / "dagster")
    target = ["-w", "workspace.yaml"] if Path("workspace.yaml").is_file() else ["-m", "atlas_pipeline.definitions"]
    options = [*(["-h", host] if host else []), *(["-p", str(port)] if port else [])]
    return [dagster, "dev", *target, *options]


def cmd_ui(args: argparse.Namespace) -> None:
    """The Dagster UI and daemon on the CLI's instance."""
    from atlas_pipeline.config import config_dir
    from atlas_pipeline.supervise import run_supervised

    _warn_about_backtests()
    dagster_instance()  # makes sure DAGSTER_HOME is set (and created) as the other commands do
    os.environ["ATLAS_CONFIG"] = str(config_dir())  # the UI reads exactly the config announced above
    command = ui_command(args.port, args.host)
    print(f"atlas ui: {' '.join(command)} (DAGSTER_HOME={os.environ['DAGSTER_HOME']}); SIGTERM or Ctrl-C stops it", file=sys.stderr)
    code = run_supervised(command)
    if code not in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGHUP):
        raise CommandFailed(f"{Path(command[0]).name} dev exited with code {code}")


def _warn_about_backtests() -> None:
    """One line per configured backtest whose strategy or params are wrong; the UI still starts
    (the others work), and materializing that one fails with the same reason."""
    from atlas_pipeline.config import config_dir, load_exchanges_config
    from atlas_pipeline.config.backtests import load_backtests_config
    from atlas_pipeline.config_check import backtest_problems

    folder = config_dir()
    backtests = load_backtests_config(load_exchanges_config(folder), folder).backtests.values()
    for problem in backtest_problems(backtests, folder):
        print(f"atlas: warning: {problem}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from atlas_pipeline.commands import adhoc_backtest, data, strategies
    from atlas_pipeline.commands.timerange import add_range_arguments

    parser = argparse.ArgumentParser(
        prog="atlas",
        description="Atlas crypto research pipeline",
        epilog="Exit codes: 0 success, 1 a run or request failed, 2 bad arguments or configuration, 130 interrupted. "
        "A failure prints one line and where the full log is; --verbose shows Dagster's events and tracebacks.",
    )
    parser.add_argument("--verbose", action="store_true", help="show every Dagster event and traceback (also after the command)")
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch", help="materialize OHLCV partitions through Dagster, in-process")
    fetch.add_argument("--exchange", required=True, help="exchange id from config/exchanges.yaml, e.g. binance")
    fetch.add_argument("--symbol", action="extend", nargs="+", help="markets such as BTC/USDT ETH/USDT (repeatable; default: all configured)")
    fetch.add_argument("--timeframe", action="extend", nargs="+", help="timeframes such as 1h 1d (repeatable; default: all configured)")
    add_range_arguments(
        fetch,
        start_help="first day, UTC (default: the exchange's history_start)",
        end_help="day after the last, UTC (default: tomorrow, i.e. through today)",
    )
    fetch.add_argument("--full-refresh", action="store_true", help="refetch days already stored complete")
    fetch.set_defaults(handler=cmd_fetch)

    verify = commands.add_parser("verify", help="check every stored candle file; --repair quarantines bad ones and refetches their days")
    verify.add_argument("--exchange", help="only this exchange")
    verify.add_argument("--symbol", help="only this market, e.g. BTC/USDT")
    verify.add_argument("--timeframe", help="only this timeframe, e.g. 1h")
    verify.add_argument("--repair", action="store_true", help="quarantine bad files, refetch their days through the OHLCV asset")
    verify.add_argument("--archive", action="store_true", help="instead: check days taken from the public archive against its current checksums (--repair refetches changed files' days)")
    verify.set_defaults(handler=cmd_verify)

    emulator = commands.add_parser("emulator", help="serve a Binance- or OKX-compatible REST API on loopback")
    emulator.add_argument("--exchange", choices=("binance", "okx"), default="binance", help="the API to speak (default binance)")
    emulator.add_argument("--port", type=int, default=8765)
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--data", help="folder of <exchange>_<BASE>-<QUOTE>_<timeframe>.parquet|csv candle files")
    emulator.add_argument("--data-exchange", metavar="ID", help="serve --data files named for this exchange (default: --exchange)")
    emulator.add_argument("--synthetic", type=int, metavar="SEED", help="serve seeded synthetic markets")
    emulator.add_argument("--fault", action="append", default=[], metavar="SPEC", help="e.g. rate_limit:times=3,retry_after=1")
    emulator.set_defaults(handler=cmd_emulator)

    backtest = commands.add_parser(
        "backtest", help="run a backtest from config/backtests.yaml, or an ad-hoc one (--strategy ...), and print its metrics"
    )
    backtest.add_argument("name", nargs="?", help="backtest name from config/backtests.yaml (or give --strategy)")
    backtest.add_argument("--symbol", action="extend", nargs="+", help="markets (repeatable; default: all of the backtest's)")
    adhoc_backtest.add_arguments(backtest)
    backtest.set_defaults(handler=adhoc_backtest.dispatch)

    report = commands.add_parser("report", help="write an HTML report of a backtest's stored results")
    report.add_argument("name", help="backtest name from config/backtests.yaml")
    report.add_argument("--output", help="HTML file (default: $ATLAS_HOME/reports/<name>.html)")
    report.set_defaults(handler=cmd_report)

    from atlas_pipeline.cli_portfolio import add_portfolio_command

    add_portfolio_command(commands, UsageError, CommandFailed, dagster_instance)

    demo = commands.add_parser("demo", help="offline demo: emulator + Dagster materialization into the local store")
    demo.add_argument("--days", type=int, default=90, help="how many days back from today to materialize")
    demo.set_defaults(handler=cmd_demo)

    ui = commands.add_parser("ui", help="the Dagster UI and daemon (dagster dev) on the same instance as the CLI")
    ui.add_argument("--port", type=int, help="webserver port (default: dagster's, 3000)")
    ui.add_argument("--host", help="webserver host (default: dagster's, 127.0.0.1)")
    ui.set_defaults(handler=cmd_ui)

    data.register(commands)
    strategies.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from atlas_pipeline.cli_console import CommandConsole
    from atlas_pipeline.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv  # accepted anywhere: `atlas fetch ... --verbose` too
    args = build_parser().parse_args([a for a in argv if a != "--verbose"])
    with CommandConsole(args.command, verbose) as console:
        try:
            if args.command not in NO_CONFIG_COMMANDS:
                announce_config(args.command)
            args.handler(args)
        except (UsageError, ConfigError) as error:
            console.fail(f"atlas: error: {error}", error)
            return 2
        except CommandFailed as error:
            console.fail(f"atlas: failed: {error}", error)
            return 1
        except KeyboardInterrupt as error:
            console.fail("atlas: interrupted", error)
            return 130
        except BaseException as error:  # noqa: BLE001 - a bug or Dagster's own Ctrl-C: one line, traceback in the log
            if type(error).__name__ == "DagsterExecutionInterruptedError":
                console.fail("atlas: interrupted", error)
                return 130
            if isinstance(error, SystemExit):
                raise
            console.fail(f"atlas: failed: unexpected {type(error).__name__}: {error}", error)
            return 1
    if args.command in FAST_EXIT_COMMANDS:
        _exit_now(0)
    return 0


FAST_EXIT_COMMANDS = frozenset({"ui"})
"""Commands that leave the process at once when done: after `atlas ui` stops, finalizing the
interpreter (Dagster's gRPC modules, in C) took another 5.5 s (measured), past the 10 s that
`docker stop` and process managers allow; there is nothing left to clean up by then."""


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


NO_CONFIG_COMMANDS = frozenset({"emulator", "demo", "fetch", "backtest"})
"""Commands that do not get the config line first: the emulator reads no config, the demo writes
its own and says where, fetch and backtest name it in their first line (every config error names
its file anyway), which keeps a failure within five lines."""


def announce_config(command: str) -> None:
    """The config folder this command reads, and why, so CLI and UI never silently disagree."""
    from atlas_pipeline.config.paths import describe_config_dir

    print(f"atlas {command}: config {describe_config_dir()}", file=sys.stderr)


if __name__ == "__main__":
    # `python -m atlas_pipeline.cli`: run the package module's main, so the command modules, which
    # import UsageError and CommandFailed from atlas_pipeline.cli, raise the classes main catches.
    from atlas_pipeline.cli import main as package_main

    sys.exit(package_main())
