"""Quiet, precise CLI failures (issue 11): each error case exits with its code and prints at most
five lines without --verbose, ending with the exact one-line reason and the log file's path.

Config and usage errors are found before any Dagster run starts, so most cases call
``atlas_pipeline.cli.main`` in this process (an ``atlas`` process costs 5-20 s of imports on a busy
box); the exit code is ``main``'s return value, which ``python -m atlas_pipeline.cli`` passes to
``sys.exit``. The cases that need a run, and one of the others, run a real ``atlas`` process.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atlas_pipeline.cli import main
from atlas_pipeline.config.paths import REPO_ROOT
from atlas_pipeline.market_data.emulator import EmulatorServer, FileCandleSource
from atlas_pipeline.market_data.exchange_client import ExchangeClient, ExchangeConnection
from atlas_pipeline.market_data.exchange_metadata import collect_exchange_metadata, metadata_path, write_metadata_yaml
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles, write_exchange_config

pytestmark = needs_shared_candles

TODAY = dt.datetime.now(dt.UTC).date()
STRATEGIES = REPO_ROOT / "strategies"
SHIPPED = "bollinger_breakout, donchian_trend, rsi_mean_reversion, sma_crossover"
SMA_PARAMS = "allow_short=False, fast=20, slow=50"


@pytest.fixture(scope="module")
def emulator():
    server = EmulatorServer(FileCandleSource(SHARED_CANDLES)).start()
    yield server
    server.stop()


@pytest.fixture
def config(tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder whose binance entry lists ETH/BTC (served) and XRP/BTC (not listed)."""
    folder = write_exchange_config(tmp_path / "config", emulator.base_url, markets=["ETH/BTC", "XRP/BTC"], max_retries=0)
    monkeypatch.setenv("ATLAS_CONFIG", str(folder))
    monkeypatch.setenv("ATLAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATLAS_STRATEGIES", str(STRATEGIES))
    monkeypatch.setenv("DAGSTER_HOME", "")  # restored after the test: the CLI sets it
    return folder


def write_backtest(folder: Path, **overrides: object) -> None:
    entry = {
        "strategy": "sma_crossover",
        "exchange": "binance",
        "timeframe": "5m",
        "symbols": ["ETH/BTC"],
        "period": {"start": "2018-01-10", "end": "2018-01-20"},
        **overrides,
    }
    (folder / "backtests.yaml").write_text(yaml.safe_dump({"backtests": {"sma": entry}}))


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[str]]:
    code = main(list(args))
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines


def assert_quiet_failure(code: int, lines: list[str], expected_code: int, expected_line: str) -> None:
    """The exit code, at most 5 lines, the exact reason as the next-to-last line, then the log."""
    assert code == expected_code, lines
    assert len(lines) <= 5, "\n".join(lines)
    assert lines[-2] == expected_line, "\n".join(lines)
    assert lines[-1].startswith("atlas: full log: ") and lines[-1].endswith("; --verbose shows it here"), lines[-1]
    log = Path(lines[-1].removeprefix("atlas: full log: ").removesuffix("; --verbose shows it here"))
    assert expected_line in log.read_text(), "the log file holds the reason too"


def test_future_dates_are_refused(config: Path, capsys: pytest.CaptureFixture) -> None:
    code, lines = run_main(capsys, "fetch", "--exchange", "binance", "--start", "2030-01-01", "--end", "2030-01-03")
    assert_quiet_failure(code, lines, 2, f"atlas: error: --start 2030-01-01 is in the future (today is {TODAY} UTC)")
    code, lines = run_main(capsys, "fetch", "--exchange", "binance", "--start", "2018-01-12", "--end", "2030-01-03")
    tomorrow = TODAY + dt.timedelta(days=1)
    assert_quiet_failure(
        code, lines, 2, f"atlas: error: --end 2030-01-03 is in the future: at most {tomorrow} (exclusive, i.e. through today {TODAY} UTC)"
    )
    assert not (Path(os.environ["ATLAS_HOME"]) / "ohlcv").exists(), "nothing was fetched or stored"


def test_future_period_in_backtests_yaml_is_a_config_error(config: Path, capsys: pytest.CaptureFixture) -> None:
    write_backtest(config, period={"start": "2030-01-01"})
    code, lines = run_main(capsys, "backtest", "sma")
    assert_quiet_failure(
        code, lines, 2,
        f"atlas: error: {config}/backtests.yaml: backtests.sma.period.start = '2030-01-01': is in the future (today is {TODAY} UTC)",
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"strategy": "sma_crossoverr"},
            "backtests.sma.strategy = 'sma_crossoverr': no strategy file {strategies}/sma_crossoverr.py; available: " + SHIPPED,
        ),
        (
            {"params": {"fastt": 10}},
            f"backtests.sma.params.fastt = 10: strategy sma_crossover has no param 'fastt'; its params: {SMA_PARAMS}",
        ),
        (
            {"params": {"fast": "ten"}},
            "backtests.sma.params.fast = 'ten': must be int like its default 20",
        ),
        (
            {"params": {"allow_short": 1}},
            "backtests.sma.params.allow_short = 1: must be bool like its default False",
        ),
        (
            {"grid": {"fast": [5, 10.5], "slow": [50]}},
            "backtests.sma.grid.fast[1] = 10.5: must be int like its default 20",
        ),
        (
            {"grid": {"fast": [5], "slowww": [50, 60]}},
            f"backtests.sma.grid.slowww = 50: strategy sma_crossover has no param 'slowww'; its params: {SMA_PARAMS}",
        ),
    ],
)
def test_strategy_and_params_are_checked_before_any_run(
    config: Path, capsys: pytest.CaptureFixture, overrides: dict, expected: str
) -> None:
    write_backtest(config, **overrides)
    code, lines = run_main(capsys, "backtest", "sma")
    assert_quiet_failure(code, lines, 2, f"atlas: error: {config}/backtests.yaml: " + expected.format(strategies=STRATEGIES))
    assert not (Path(os.environ["ATLAS_HOME"]) / "dagster_home").exists(), "no Dagster run was started"


def test_market_flagged_in_cached_metadata_is_refused_before_a_request(
    config: Path, emulator: EmulatorServer, capsys: pytest.CaptureFixture
) -> None:
    client = ExchangeClient(ExchangeConnection("binance", api_url=emulator.base_url, min_request_interval_ms=0))
    write_metadata_yaml(metadata_path(config), collect_exchange_metadata(client, ["ETH/BTC", "XRP/BTC"], ["5m"], 3))
    collected = yaml.safe_load(metadata_path(config).read_text())["exchanges"]["binance"]["collected_at"]
    before = emulator.stats["total"]
    code, lines = run_main(capsys, "fetch", "--exchange", "binance", "--symbol", "XRP/BTC", "--start", "2018-01-12", "--end", "2018-01-13")
    listed = len(client.load_markets())
    assert_quiet_failure(
        code, lines, 2,
        f"atlas: error: {config}/exchanges.yaml: exchanges.binance.markets = 'XRP/BTC': binance does not list this market "
        f"(binance no longer lists XRP/BTC ({listed} markets listed); per exchange_metadata.yaml of {collected})",
    )
    assert emulator.stats["total"] == before, "refused from the cached metadata, without a request"


def atlas(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atlas_pipeline.cli", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


def test_unlisted_market_without_metadata_fails_at_the_first_request_naming_the_real_config(config: Path) -> None:
    """A real process: the run's first request finds the market unlisted; a config error (2)."""
    result = atlas("fetch", "--exchange", "binance", "--symbol", "XRP/BTC", "--start", "2018-01-12", "--end", "2018-01-13", env={})
    lines = result.stderr.strip().splitlines()
    assert_quiet_failure(
        result.returncode, lines, 2,
        "atlas: error: XRP/BTC: binance 5m: 1 of 1 markets failed: binance XRP/BTC 5m: request failed: binance does not list "
        f"market 'XRP/BTC' (5 markets listed; check {config}/exchanges.yaml); nothing written from 2018-01-12 on. "
        "0 partitions of what was stored are recorded",
    )
    assert lines[0].startswith("atlas fetch: binance XRP/BTC 5m 2018-01-12..2018-01-13 (end exclusive); ")
    assert f"; config {config} ($ATLAS_CONFIG); " in lines[0]
    assert not any(" - DEBUG - " in line or "Traceback" in line for line in lines)


def test_run_failure_exits_1_quietly_and_verbose_shows_the_traceback(config: Path, tmp_path: Path) -> None:
    write_exchange_config(config, "http://127.0.0.1:9", markets=["ETH/BTC"], max_retries=0)
    args = ("fetch", "--exchange", "binance", "--start", "2018-01-12", "--end", "2018-01-13")
    quiet = atlas(*args, env={})
    lines = quiet.stderr.strip().splitlines()
    assert quiet.returncode == 1 and len(lines) <= 5, quiet.stderr
    assert lines[-2].startswith("atlas: failed: ETH/BTC: ") and "load markets" in lines[-2], lines
    log = Path(lines[-1].removeprefix("atlas: full log: ").removesuffix("; --verbose shows it here"))
    assert "Traceback (most recent call last)" in log.read_text(), "the full log keeps Dagster's traceback"
    assert "Traceback" not in quiet.stderr and " - ERROR - " not in quiet.stderr

    verbose = atlas(*args, "--verbose", env={})
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr and " - ERROR - " in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-2] == lines[-2]
