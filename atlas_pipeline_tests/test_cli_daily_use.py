"""The daily-use commands: ``atlas data``, ``fetch --timerange``, ad-hoc ``backtest --strategy``,
``strategies``, ``new-strategy``, and progress reporting. Real processes, real Parquet, ccxt
against the emulator, a real Dagster instance under ``ATLAS_HOME``."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from atlas_pipeline import CandleStore
from atlas_pipeline.commands.timerange import TimeRange, chosen_range, parse_timerange
from atlas_pipeline.config.adhoc import adhoc_name
from atlas_pipeline.market_data.candles import DAY_MS, day_start_ms, split_by_day
from atlas_pipeline.market_data.emulator import FileCandleSource
from atlas_pipeline.market_data.inventory import inventory
from atlas_pipeline_tests.test_cli import atlas
from atlas_pipeline_tests.support import (
    SHARED_CANDLES,
    between,
    needs_shared_candles,
    shared_candles,
    write_exchange_config,
)

STRATEGIES = Path(__file__).resolve().parents[1] / "strategies"


# ---- --timerange / --days ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("20240101-20240301", dt.date(2024, 1, 1), dt.date(2024, 3, 1)),
        ("2022-2023", dt.date(2022, 1, 1), dt.date(2023, 1, 1)),
        ("202402-202403", dt.date(2024, 2, 1), dt.date(2024, 3, 1)),
        ("20240101-", dt.date(2024, 1, 1), None),
        ("-20240301", None, dt.date(2024, 3, 1)),
    ],
)
def test_timerange_forms(text: str, start: dt.date | None, end: dt.date | None) -> None:
    assert parse_timerange(text) == TimeRange(start, end)


@pytest.mark.parametrize("text", ["2024", "20240301-20240101", "2024013-", "20241301-", "2024-01-01", "-"])
def test_bad_timeranges_are_refused_naming_the_value(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
        parse_timerange(text)


def test_days_is_the_last_n_days_with_today_and_forms_do_not_mix() -> None:
    args = argparse.Namespace(timerange=None, days=3, start=None, end=None)
    assert chosen_range(args, today=dt.date(2024, 5, 10)) == TimeRange(dt.date(2024, 5, 8), dt.date(2024, 5, 11))
    mixed = argparse.Namespace(timerange=TimeRange(dt.date(2024, 1, 1), None), days=3, start=None, end=None)
    with pytest.raises(ValueError, match="give one of --timerange, --days or --start/--end"):
        chosen_range(mixed)


# ---- atlas data ---------------------------------------------------------------------------


def _expected_row(frame: pd.DataFrame, days: list[dt.date], incomplete: set[dt.date], listing_ms: int) -> dict:
    """Independent count: grid slots of complete stored days from the listing on with no candle."""
    present = set(frame["timestamp"].tolist())
    missing = 0
    for day in days:
        if day in incomplete:
            continue
        slot = max(day_start_ms(day), listing_ms)
        while slot < day_start_ms(day) + DAY_MS:
            missing += slot not in present
            slot += 300_000
    return {"missing_candles": missing, "incomplete_days": len(incomplete)}


@needs_shared_candles
def test_data_lists_what_is_stored_from_footers_only(tmp_path: Path) -> None:
    ada = shared_candles("binance_ADA-BTC_5m")
    eth = shared_candles("binance_ETH-BTC_5m")
    store = CandleStore(tmp_path / "home")
    days = [dt.date(2018, 1, 10) + dt.timedelta(days=i) for i in range(11) if i != 6]  # 01-16 never stored
    by_day = split_by_day(between(ada, days[0], days[-1] + dt.timedelta(days=1)))
    incomplete = {days[-1]}
    store.write_days("binance", "ADA/BTC", "5m", {d: by_day[d] for d in days}, complete={d: d not in incomplete for d in days})
    store.set_first_candle("binance", "ADA/BTC", "5m", int(ada["timestamp"].iloc[0]))
    eth_days = {d: f for d, f in split_by_day(between(eth, dt.date(2018, 1, 12), dt.date(2018, 1, 14))).items()}
    store.write_days("binance", "ETH/BTC", "5m", eth_days, complete=True)

    stored_ada = between(ada, days[0], days[-1] + dt.timedelta(days=1))
    stored_ada = stored_ada[stored_ada["timestamp"] // DAY_MS != day_start_ms(dt.date(2018, 1, 16)) // DAY_MS]
    expected = _expected_row(stored_ada, days, incomplete, int(ada["timestamp"].iloc[0]))
    assert expected["missing_candles"] > 0, "the real ADA/BTC candles have outages"

    table = inventory(store)
    row = table.set_index("market").loc["ADA/BTC"]
    assert row["missing_candles"] == expected["missing_candles"]
    assert row["incomplete_days"] == 1 and row["unstored_days"] == 1 and row["days"] == len(days)
    assert row["candles"] == len(stored_ada)
    assert row["first_candle"] == pd.Timestamp(int(stored_ada["timestamp"].iloc[0]), unit="ms", tz="UTC")
    assert row["last_candle"] == pd.Timestamp(int(stored_ada["timestamp"].iloc[-1]), unit="ms", tz="UTC")

    # No candle is read: with a byte flipped in the candle data the listing is unchanged, while a read refuses.
    period = tmp_path / "home" / "ohlcv" / "binance" / "ADA-BTC" / "5m" / "2018.parquet"
    data = bytearray(period.read_bytes())
    data[100] ^= 0xFF
    period.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="2018.parquet"):
        store.read("binance", "ADA/BTC", "5m")

    env = {"ATLAS_HOME": str(tmp_path / "home"), "DAGSTER_HOME": ""}
    result = atlas("data", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ada_line = next(line for line in lines if "ADA/BTC" in line).split()
    # exchange market timeframe first(date time) last(date time) days candles missing incomplete unstored
    assert ada_line[0:3] == ["binance", "ADA/BTC", "5m"]
    assert ada_line[3:5] == ["2018-01-10", "04:55"]
    assert [int(v.replace(",", "")) for v in ada_line[7:]] == [
        len(days), len(stored_ada), expected["missing_candles"], 1, 1,
    ]
    assert "2 series" in lines[-1]

    only = atlas("data", "--market", "ETH-BTC", "--timeframe", "5m", env=env, timeout=120)
    assert only.returncode == 0 and "ETH/BTC" in only.stdout and "ADA/BTC" not in only.stdout, only.stdout
    none = atlas("data", "--timeframe", "1h", env=env, timeout=120)
    assert none.returncode == 0 and "no candles stored" in none.stdout and "--timeframe 1h" in none.stdout


# ---- fetch, ad-hoc backtests (one fetched store shared by the module) ----------------------


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory):
    """Two markets x 8 days of 5m fetched with ``--timerange`` and several ``--symbol`` in one call."""
    from atlas_pipeline.market_data.emulator import EmulatorServer

    if not SHARED_CANDLES.is_dir():
        pytest.skip(f"real exchange candles not found at {SHARED_CANDLES}")
    tmp = tmp_path_factory.mktemp("daily")
    server = EmulatorServer(FileCandleSource(SHARED_CANDLES)).start()
    env = {
        "ATLAS_CONFIG": str(write_exchange_config(tmp / "config", server.base_url)),
        "ATLAS_HOME": str(tmp / "home"),
        "ATLAS_STRATEGIES": str(STRATEGIES),
        "DAGSTER_HOME": "",
        "TTY_COMPATIBLE": "1",  # rich draws its bars although stderr is a pipe
    }
    result = atlas(
        "fetch", "--exchange", "binance", "--symbol", "ETH/BTC", "ADA/BTC", "--timeframe", "5m",
        "--timerange", "20180111-20180119", env=env,
    )
    yield tmp, env, result
    server.stop()


def test_fetch_takes_a_timerange_and_several_markets(fetched) -> None:
    tmp, _, result = fetched
    assert result.returncode == 0, result.stderr
    store = CandleStore(tmp / "home")
    total = 0
    for symbol, name in (("ETH/BTC", "binance_ETH-BTC_5m"), ("ADA/BTC", "binance_ADA-BTC_5m")):
        stored = store.read("binance", symbol, "5m", "2018-01-10", "2018-01-20")
        expected = between(shared_candles(name), dt.date(2018, 1, 11), dt.date(2018, 1, 19))
        assert stored["timestamp"].tolist() == expected["timestamp"].tolist(), symbol  # the end is exclusive
        total += len(expected)
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("atlas fetch: 2 market(s) x 1 timeframe(s), 2018-01-11..2018-01-18: 2 runs (2 ok, 0 failed)")
    assert f"{total:,} candles stored in the range (+{total:,})" in summary and "0 market-days not stored" in summary
    # the progress bars (forced on by TTY_COMPATIBLE): one per market, with its rate and ETA column
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)
    assert re.search(r"binance ETH/BTC 5m .*8/8 +[\d,.]+ days/s +ETA", plain), plain[-2000:]
    assert re.search(r"binance ADA/BTC 5m .*8/8 +[\d,.]+ days/s +ETA", plain)


def test_adhoc_backtests_run_through_dagster_and_compare(fetched) -> None:
    tmp, env, _ = fetched
    result = atlas(
        "backtest", "--strategy", "sma_crossover", "rsi_mean_reversion", "--params", "fast=10,slow=40",
        "--params", "period=10", "--exchange", "binance", "--symbol", "ETH/BTC", "--timeframe", "5m",
        "--timerange", "20180111-20180119", env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = [
        adhoc_name("sma_crossover", {"fast": 10, "slow": 40}, "binance", "5m", dt.date(2018, 1, 11), dt.date(2018, 1, 19)),
        adhoc_name("rsi_mean_reversion", {"period": 10}, "binance", "5m", dt.date(2018, 1, 11), dt.date(2018, 1, 19)),
    ]
    assert names[0] == "adhoc_sma_crossover_fast10_slow40_binance_5m_20180111_20180119"

    # the entries the definitions load, in config/backtests.yaml's format
    entries = yaml.safe_load((tmp / "home" / "adhoc" / "backtests.yaml").read_text())["backtests"]
    assert entries[names[0]]["params"] == {"fast": 10, "slow": 40} and entries[names[0]]["symbols"] == ["ETH/BTC"]
    assert entries[names[1]]["period"] == {"start": "2018-01-11", "end": "2018-01-19"}

    # materialized in the CLI's instance, as assets of the definitions with lineage to the candles
    with _environment(env):
        from atlas_pipeline.defs.definitions import build_definitions
        from atlas_pipeline.defs.market_data.assets import ohlcv_asset_key
        from atlas_pipeline.defs.research.assets import LEADERBOARD_KEY, backtest_asset_key, metrics_asset_key

        defs = build_definitions()
        graph = defs.resolve_asset_graph()
        instance = dg.DagsterInstance.from_config(str(tmp / "home" / "dagster_home"))
        for name in names:
            assert graph.get(backtest_asset_key(name)).parent_keys == {ohlcv_asset_key("binance", "5m")}
            event = instance.get_latest_materialization_event(metrics_asset_key(name))
            assert event is not None and event.dagster_event.partition == "ETH-BTC"
        assert metrics_asset_key(names[0]) in graph.get(LEADERBOARD_KEY).parent_keys
        instance.dispose()

    # the comparison table: one row per strategy, best Sharpe first, values as stored
    table = result.stdout.split("## Comparison", 1)[1].strip().splitlines()
    rows = [line.strip("| ").split(" | ") for line in table[2:]]
    assert sorted(row[0] for row in rows) == ["rsi_mean_reversion", "sma_crossover"]
    sharpes = [float(row[3]) for row in rows]
    assert sharpes == sorted(sharpes, reverse=True)
    from atlas_pipeline.research.result_store import ResultStore

    results = ResultStore(str(tmp / "home"))
    for row, name in ((r, names[0] if r[0] == "sma_crossover" else names[1]) for r in rows):
        stored = results.load_metrics(name, "ETH/BTC")
        assert abs(float(row[3]) - stored["sharpe"]) < 5e-4 * max(1, abs(stored["sharpe"]))
        result_frame = results.load_result(name, "ETH/BTC")
        equity = result_frame.equity
        final = float(equity.iloc[-1] if isinstance(equity, pd.Series) else equity["equity"].iloc[-1])
        assert row[4] == f"{(final / 10_000 - 1) * 100:.2f} %"  # total return from the stored equity


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--params", "fast=10,slw=40"], "strategy 'sma_crossover': unknown param(s) slw"),
        (["--params", "fast=x"], "param fast='x' must be int like its default 20"),
        (["--params", "fast"], "is not NAME=VALUE"),
        (["--symbol", "XRP/BTC"], "market 'XRP/BTC' is not collected for binance"),
        (["--timerange", "2017-"], "before binance's history_start 2018-01-01"),
        (["--days", "3", "--timerange", "2018-"], "give one of --timerange, --days or --start/--end"),
    ],
)
def test_adhoc_usage_errors_exit_2_with_one_line(
    fetched, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from atlas_pipeline.cli import main

    _, env, _ = fetched
    with _environment(env):  # in-process: the same main() the atlas script runs, without a start-up per case
        code = main(["backtest", "--strategy", "sma_crossover", "--timeframe", "5m", *args])
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", capsys.readouterr().err)  # the fixture's env forces rich's bars on
    assert code == 2, err
    reason, *rest = err.strip().splitlines()
    assert message in reason, err  # one line saying why, then (cli_console) only where the full log is
    assert len(rest) <= 1 and all(line.startswith("atlas: full log: ") for line in rest), err


# ---- strategies, new-strategy -------------------------------------------------------------


def test_strategies_lists_params_with_defaults_and_docstrings() -> None:
    result = atlas("strategies", env={"ATLAS_STRATEGIES": str(STRATEGIES)}, timeout=120)
    assert result.returncode == 0, result.stderr
    for path in sorted(STRATEGIES.glob("[!_]*.py")):
        source = path.read_text()
        own = re.search(r"params = \((.*)\)", source).group(1)  # the file's own params tuple
        for key, default in re.findall(r"\(\"(\w+)\", ([^)]+)\)", own):
            assert f"{key}={default}" in result.stdout, (path.name, key)
        first_doc_line = re.search(r'class \w+\(.*\):\n    """(.*)', source).group(1).strip()
        assert first_doc_line in result.stdout, path.name
    assert "allow_short=False" in result.stdout  # inherited params are listed too


def test_new_strategy_writes_a_template_that_passes_the_lookahead_check(tmp_path: Path) -> None:
    from atlas_pipeline.research.engine import BacktestSpec
    from atlas_pipeline.research.lookahead import check_lookahead
    from atlas_pipeline.research.strategy_loader import load_strategy, strategy_params

    env = {"ATLAS_STRATEGIES": str(tmp_path)}
    result = atlas("new-strategy", "my_trend", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "my_trend.py"
    assert result.stdout.strip() == str(path)
    cls = load_strategy("my_trend", tmp_path)
    for key, default in strategy_params(cls).items():  # documented as the shipped strategies are
        assert f"{key} ({type(default).__name__}, default {default!r})" in cls.__doc__, key

    candles = _trending_candles()
    spec = BacktestSpec(strategy="my_trend", params={"period": 10, "slope_bars": 3})
    report = check_lookahead(candles, spec, "1h", strategies_dir=tmp_path, cuts=6, max_bars=600)
    assert not report.biased and report.cuts > 0, report.message
    # the same check fails the template once it peeks at the next bar, so passing means something
    peeking = tmp_path / "peeking.py"
    peeking.write_text(path.read_text().replace("class MyTrend", "class Peeking").replace(
        "bt.ind.SMA(self.data.close, period=self.p.period)", "bt.ind.SMA(self.data.close(1), period=self.p.period)"))
    biased = check_lookahead(candles, BacktestSpec(strategy="peeking", params={"period": 10, "slope_bars": 3}), "1h",
                             strategies_dir=tmp_path, cuts=6, max_bars=600)
    assert biased.biased

    again = atlas("new-strategy", "my_trend", env=env, timeout=60)
    assert again.returncode == 2 and "exists already" in again.stderr
    bad = atlas("new-strategy", "My-Trend", env=env, timeout=60)
    assert bad.returncode == 2 and "lower_snake_case" in bad.stderr
    listed = atlas("strategies", env=env, timeout=60)
    assert listed.returncode == 0 and "my_trend" in listed.stdout and "slope_bars=5" in listed.stdout


def _trending_candles(bars: int = 600) -> pd.DataFrame:
    """Seeded random-walk hourly candles with trends both ways (deterministic)."""
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, bars) + 0.004 * np.sin(np.arange(bars) / 40)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    return pd.DataFrame({
        "timestamp": day_start_ms(dt.date(2024, 1, 1)) + np.arange(bars, dtype=np.int64) * 3_600_000,
        "open": open_, "high": np.maximum(open_, close) * 1.002, "low": np.minimum(open_, close) * 0.998,
        "close": close, "volume": np.full(bars, 10.0),
    })


# ---- progress ------------------------------------------------------------------------------


def test_progress_bars_show_rate_and_eta(capsys: pytest.CaptureFixture[str]) -> None:
    from atlas_pipeline import progress
    from atlas_pipeline.commands.progress_bars import progress_bars

    with progress_bars(force=True):
        for done in range(0, 11):
            progress.report("binance BTC/USDT 1h", done, 10, "days")
        progress.report("sweep x", 4, 4, "backtests")
    err = capsys.readouterr().err
    assert re.search(r"binance BTC/USDT 1h .*10/10", err) and "days/s" in err and "sweep x" in err
    with progress_bars(force=False) as bars:  # not a terminal: no bars, and reports cost nothing
        progress.report("x", 1, 2, "days")
    assert bars is None and capsys.readouterr().err == ""


class _environment:
    """Set environment variables for a block (the CLI's, to build its definitions in-process)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.saved = env, dict(os.environ)

    def __enter__(self) -> None:
        os.environ.update({k: v for k, v in self.env.items() if v})
        for key in (k for k, v in self.env.items() if not v):
            os.environ.pop(key, None)

    def __exit__(self, *exc: object) -> None:
        os.environ.clear()
        os.environ.update(self.saved)
