"""``atlas`` as a user runs it: a real process, exit codes, one-line reasons."""

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.emulator import FileCandleSource
from atlas_pipeline_tests.support import SHARED_CANDLES, between, shared_candles, write_exchange_config, needs_shared_candles

pytestmark = needs_shared_candles


def atlas(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atlas_pipeline.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def env(tmp_path: Path, emulator_factory) -> dict[str, str]:
    server = emulator_factory(FileCandleSource(SHARED_CANDLES))
    config = write_exchange_config(tmp_path / "config", server.base_url)
    return {
        "ATLAS_CONFIG": str(config),
        "ATLAS_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": "",  # the CLI then keeps Dagster's storage under ATLAS_HOME
    }


def _last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_fetch_materializes_the_range_through_dagster(env: dict[str, str], tmp_path: Path) -> None:
    result = atlas(
        "fetch", "--exchange", "binance", "--symbol", "ETH/BTC", "--timeframe", "5m",
        "--start", "2018-01-12", "--end", "2018-01-14", env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "range 1/1 2018-01-12..2018-01-13" in result.stderr  # progress through Dagster's logger
    assert "ETH/BTC: run" in result.stderr and "ok" in _last_line(result)
    stored = CandleStore(str(tmp_path / "home")).read("binance", "ETH/BTC", "5m", "2018-01-12", "2018-01-14")
    expected = between(shared_candles("binance_ETH-BTC_5m"), dt.date(2018, 1, 12), dt.date(2018, 1, 14))
    assert len(stored) == len(expected) == 576
    runs = list((tmp_path / "home" / "dagster_home").iterdir())
    assert runs, "the run is recorded in the instance under ATLAS_HOME"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbol", "XRP/BTC"], "market 'XRP/BTC' is not configured for binance"),
        (["--timeframe", "4h"], "timeframe '4h' is not configured for binance"),
        (["--start", "2017-06-01"], "is before binance's history_start 2018-01-01"),
        (["--start", "2018-01-05", "--end", "2018-01-05"], "must be after --start"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(env: dict[str, str], args: list[str], message: str) -> None:
    result = atlas("fetch", "--exchange", "binance", *args, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr


def test_bad_config_exits_2_naming_the_file(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "config" / "exchanges.yaml").write_text("exchanges:\n  binance:\n    timeframes: [7m]\n    markets: [ETH/BTC]\n")
    result = atlas("fetch", "--exchange", "binance", env=env, timeout=120)
    assert result.returncode == 2
    assert "exchanges.yaml: exchanges.binance.timeframes" in result.stderr and "7m" in result.stderr


def test_unreachable_exchange_exits_1_with_the_reason(env: dict[str, str], tmp_path: Path) -> None:
    write_exchange_config(tmp_path / "config", "http://127.0.0.1:9", max_retries=0)
    result = atlas(
        "fetch", "--exchange", "binance", "--symbol", "ETH/BTC", "--start", "2018-01-12", "--end", "2018-01-13", env=env,
    )
    assert result.returncode == 1
    last = _last_line(result)
    assert last.startswith("atlas: failed: ETH/BTC: ") and "load markets" in last, last


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_emulator_command_serves_binance_until_interrupted() -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "atlas_pipeline.cli", "emulator", "--port", str(port), "--synthetic", "5"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v3/exchangeInfo", timeout=2) as reply:
                    info = json.load(reply)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.2)
        assert any(s["symbol"] == "BTCUSDT" for s in info["symbols"])
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    assert f"http://127.0.0.1:{port}" in process.stderr.read()


def test_emulator_command_refuses_a_missing_data_folder(tmp_path: Path) -> None:
    result = atlas("emulator", "--data", str(tmp_path / "nope"), env={}, timeout=60)
    assert result.returncode == 2 and "not a folder" in result.stderr


def test_backtest_and_report_commands(env: dict[str, str], tmp_path: Path) -> None:
    fetched = atlas(
        "fetch", "--exchange", "binance", "--symbol", "ETH/BTC", "--timeframe", "5m",
        "--start", "2018-01-10", "--end", "2018-01-20", env=env,
    )
    assert fetched.returncode == 0, fetched.stderr
    (tmp_path / "config" / "backtests.yaml").write_text(
        "backtests:\n  sma:\n    strategy: sma_crossover\n    exchange: binance\n    timeframe: 5m\n"
        "    symbols: [ETH/BTC]\n    period: {start: 2018-01-10, end: 2018-01-20}\n"
    )
    result = atlas("backtest", "sma", env=env)
    assert result.returncode == 0, result.stderr
    assert "## sma ETH/BTC" in result.stdout and "Sharpe" in result.stdout and "|" in result.stdout

    report = atlas("report", "sma", env=env)
    assert report.returncode == 0, report.stderr
    path = Path(report.stdout.strip())
    assert path == tmp_path / "home" / "reports" / "sma.html"
    html = path.read_text()
    assert "ETH/BTC" in html and '"type":"candlestick"' in html  # the interactive price chart (test_report.py)

    unknown = atlas("backtest", "nope", env=env, timeout=120)
    assert unknown.returncode == 2 and "backtest 'nope' is not configured" in unknown.stderr


def test_backtest_without_candles_exits_1_saying_what_to_fetch(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "config" / "backtests.yaml").write_text(
        "backtests:\n  sma:\n    strategy: sma_crossover\n    exchange: binance\n    timeframe: 5m\n"
        "    symbols: [ADA/BTC]\n    period: {start: 2018-01-10}\n"
    )
    result = atlas("backtest", "sma", env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    assert _last_line(result).startswith("atlas: failed: sma ADA/BTC: "), result.stderr
