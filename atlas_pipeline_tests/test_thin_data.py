"""Thin data (issue 11): a backtest whose stored candles cover less than its period, or miss days
inside it, says so in the CLI output, the metrics metadata and the HTML report.

Real candles (Binance ETH/BTC 5m) are written to a real store with a hole; the period starts
before them and ends after them. The expected coverage is counted here day by day from the
candles written, independently of ``data_coverage``.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import dagster as dg
import pytest
import yaml

from atlas_pipeline import CandleStore
from atlas_pipeline.cli import main
from atlas_pipeline.config.paths import REPO_ROOT
from atlas_pipeline.market_data.candles import DAY_MS
from atlas_pipeline.research.data_coverage import period_coverage
from atlas_pipeline_tests.support import needs_shared_candles, shared_candles, write_exchange_config

pytestmark = needs_shared_candles

D = dt.date
STORED = [D(2018, 1, 10), D(2018, 1, 11), D(2018, 1, 13), D(2018, 1, 14)]  # 2018-01-12 missing
PERIOD = (D(2018, 1, 5), D(2018, 1, 16))


def _write(store: CandleStore) -> None:
    candles = shared_candles("binance_ETH-BTC_5m")
    days = {}
    for day in STORED:
        start = (day - D(1970, 1, 1)).days * DAY_MS
        days[day] = candles[(candles["timestamp"] >= start) & (candles["timestamp"] < start + DAY_MS)]
    store.write_days("binance", "ETH/BTC", "5m", days, complete=True)


def _expected_warning(start: D, end: D) -> str:
    """The warning, from the days written (independent count)."""
    period = [start + dt.timedelta(days=i) for i in range((end - start).days)]
    have = [day for day in period if day in STORED]
    before = [day for day in period if day < have[0]]
    after = [day for day in period if day > have[-1]]
    inside = [day for day in period if have[0] < day < have[-1] and day not in have]
    plural = lambda n: f"{n} day" + ("" if n == 1 else "s")  # noqa: E731
    return (
        f"thin data: stored binance ETH/BTC 5m candles cover {len(have)} of the period's {len(period)} days "
        f"({start}..{end}, end exclusive); none before {have[0]} ({plural(len(before))}); "
        f"none after {have[-1]} ({plural(len(after))}); {plural(len(inside))} without candles inside "
        f"({', '.join(map(str, inside))}); fetch the rest with atlas fetch"
    )


def test_period_coverage_counts_days_before_after_and_inside(tmp_path: Path) -> None:
    store = CandleStore(str(tmp_path))
    _write(store)
    coverage = period_coverage(store, "binance", "ETH/BTC", "5m", *PERIOD)
    assert coverage.warning == _expected_warning(*PERIOD)
    assert coverage.numbers() == {"period_days": 11, "days_with_candles": 4, "days_without_candles": 7}

    full = period_coverage(store, "binance", "ETH/BTC", "5m", D(2018, 1, 13), D(2018, 1, 15))
    assert full.warning is None and full.period_days == 2
    # no end: through the newest stored day, so only the days before and inside count
    open_ended = period_coverage(store, "binance", "ETH/BTC", "5m", D(2018, 1, 10), None)
    assert open_ended.end == "2018-01-15" and open_ended.missing_inside == ["2018-01-12"]
    assert "none after" not in open_ended.warning and "none before" not in open_ended.warning


def test_a_thin_backtest_warns_in_the_cli_the_metadata_and_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    config = write_exchange_config(tmp_path / "config", "http://127.0.0.1:9", markets=["ETH/BTC"])
    (config / "backtests.yaml").write_text(yaml.safe_dump({"backtests": {"sma": {
        "strategy": "sma_crossover", "exchange": "binance", "timeframe": "5m", "symbols": ["ETH/BTC"],
        "period": {"start": str(PERIOD[0]), "end": str(PERIOD[1])},
    }}}))
    home = tmp_path / "home"
    for name, value in {"ATLAS_CONFIG": str(config), "ATLAS_HOME": str(home), "DAGSTER_HOME": "",
                        "ATLAS_STRATEGIES": str(REPO_ROOT / "strategies")}.items():
        monkeypatch.setenv(name, value)
    _write(CandleStore(str(home)))
    warning = _expected_warning(*PERIOD)

    assert main(["backtest", "sma"]) == 0
    out, err = capsys.readouterr()
    assert f"**Warning: {warning}**" in out
    assert f"atlas backtest: warning: sma ETH/BTC: {warning}" in err

    instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
    for key in (["sma", "metrics"], ["sma", "backtest"]):
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        metadata = event.asset_materialization.metadata
        assert metadata["data_warning"].value == warning, key
        assert metadata["days_with_candles"].value == 4 and metadata["period_days"].value == 11

    assert main(["report", "sma"]) == 0
    report = Path(capsys.readouterr().out.strip())
    assert html.escape(warning) in report.read_text()  # at the top of the report and of its market
