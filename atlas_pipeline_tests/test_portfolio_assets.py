"""``<name>/portfolio`` in a real Dagster instance: lineage to the candles, materialization on
candles fetched through ccxt from the emulator, and reruns by the ``research_reruns`` sensor when
(and only when) the candles of one of its markets change."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.test_utils import create_run_for_test
import pytest
import yaml

from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.research.portfolios import portfolio_asset_key
from atlas_pipeline.defs.research.reruns import UNPARTITIONED_RESEARCH_JOB
from atlas_pipeline.market_data.emulator import FileCandleSource
from atlas_pipeline.portfolio_runs import write_portfolio_report
from atlas_pipeline.config import load_exchanges_config
from atlas_pipeline.config.portfolios import load_portfolios_config
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles, run_range, write_exchange_config
from atlas_pipeline_tests.test_research_assets import OHLCV, sensor_tick
from atlas_pipeline_tests.test_research_reruns import finish, report_candles

pytestmark = needs_shared_candles

D = dt.date
NAME = "basket"
PORTFOLIO = portfolio_asset_key(NAME)
SETTINGS = {
    "strategy": "sma_crossover",
    "params": {"fast": 10, "slow": 30},
    "exchange": "binance",
    "timeframe": "5m",
    "symbols": ["ETH/BTC", "ADA/BTC"],
    "period": {"start": "2018-01-10", "end": "2018-01-13"},
    "cash": 1000,
    "allocation": "inverse_volatility",
    "volatility_window": 48,
    "rebalance": {"every": "6h", "threshold": 0.02},
}


@pytest.fixture
def setup(tmp_path: Path, emulator_factory):
    """Two markets' candles materialized through the OHLCV asset (a third is configured), and a
    portfolio over the two."""
    server = emulator_factory(FileCandleSource(SHARED_CANDLES))
    config_dir = write_exchange_config(tmp_path / "config", server.base_url, markets=["ETH/BTC", "ADA/BTC", "LTC/BTC"])
    (config_dir / "backtests.yaml").write_text(yaml.safe_dump({"portfolios": {NAME: SETTINGS}}))
    store_root = tmp_path / "store"
    with dg.instance_for_test() as instance:
        for run in run_range(config_dir, store_root, instance, ["ETH/BTC", "ADA/BTC"], D(2018, 1, 10), D(2018, 1, 13)):
            assert run.success, run.failure_reason()
        yield config_dir, store_root, instance


def test_the_portfolio_materializes_and_reruns_when_one_of_its_markets_changes(setup, tmp_path: Path) -> None:
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    assert defs.resolve_asset_graph().get(PORTFOLIO).parent_keys == {OHLCV}  # lineage: its candles
    first = sensor_tick(defs, instance)
    candles_changed(instance, "ADA-BTC")
    never_run = sensor_tick(defs, instance, first.cursor)
    assert never_run.run_requests == []  # never materialized: not started by itself

    assert dg.materialize([defs.resolve_assets_def(PORTFOLIO)], instance=instance).success
    check_stored_portfolio(instance, config_dir, store_root, tmp_path)
    quiet = sensor_tick(defs, instance, never_run.cursor)
    assert quiet.run_requests == []

    # another market of the same candle asset: not the portfolio's
    candles_changed(instance, "LTC-BTC")
    other = sensor_tick(defs, instance, quiet.cursor)
    assert other.run_requests == []

    # one of its markets, while the candle run is still in progress: the change waits for it
    running = create_run_for_test(instance, job_name="ohlcv_binance", status=dg.DagsterRunStatus.STARTED).run_id
    report_candles(instance, running, market="ADA-BTC")
    waiting = sensor_tick(defs, instance, other.cursor)
    assert waiting.run_requests == [] and "waiting on 1 unfinished run" in waiting.skip_message
    finish(instance, running, DagsterEventType.RUN_SUCCESS)
    [request] = sensor_tick(defs, instance, waiting.cursor).run_requests
    assert request.asset_selection == [PORTFOLIO]
    assert dg.materialize([defs.resolve_assets_def(PORTFOLIO)], instance=instance).success  # as the rerun would
    settled = sensor_tick(defs, instance, waiting.cursor)
    assert settled.run_requests == []  # already rerun after the change

    # one of its markets: one run of the portfolio, in the unpartitioned research job
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 11), D(2018, 1, 12), full_refresh=True)
    assert run.success
    after = sensor_tick(defs, instance, settled.cursor)
    [request] = after.run_requests
    assert request.asset_selection == [PORTFOLIO] and request.partition_key is None
    assert request.job_name == UNPARTITIONED_RESEARCH_JOB
    assert sensor_tick(defs, instance, after.cursor).run_requests == []

    # the requested run materializes it (the job exists in the definitions)
    job = defs.resolve_job_def(UNPARTITIONED_RESEARCH_JOB)
    assert job.execute_in_process(instance=instance, asset_selection=[PORTFOLIO]).success


def candles_changed(instance: dg.DagsterInstance, market: str) -> None:
    """A finished candle run that materialized one day of ``market`` (events as a run writes them)."""
    run_id = create_run_for_test(instance, job_name="ohlcv_binance", status=dg.DagsterRunStatus.STARTED).run_id
    report_candles(instance, run_id, day="2018-01-12", market=market)
    finish(instance, run_id, DagsterEventType.RUN_SUCCESS)


def check_stored_portfolio(instance: dg.DagsterInstance, config_dir: Path, store_root: Path, tmp_path: Path) -> None:
    """Its metadata, stored frames and report agree (contributions add up to the return)."""
    [event] = instance.fetch_materializations(PORTFOLIO, limit=1).records
    metadata = event.asset_materialization.metadata
    assert metadata["bars"].value > 700 and metadata["orders"].value > 10
    assert "contribution_return" in metadata["attribution"].value

    results = ResultStore(str(store_root))
    summary, frames = results.load_portfolio(NAME, ("attribution", "equity", "orders"))
    table = frames["attribution"].set_index("symbol")
    assert list(table.index) == ["ETH/BTC", "ADA/BTC"]
    metrics = summary["metrics"]
    assert table["contribution_return"].sum() == pytest.approx(metrics["total_return"], rel=1e-9, abs=1e-12)
    assert metadata["total_return"].value == pytest.approx(metrics["total_return"])
    equity = frames["equity"]["equity"]
    assert equity.iloc[-1] == pytest.approx(metrics["final_equity"]) and frames["equity"]["cash"].min() >= 0
    assert set(frames["orders"]["symbol"]) == {"ETH/BTC", "ADA/BTC"}

    settings = load_portfolios_config(load_exchanges_config(config_dir), config_dir).get(NAME)
    report = write_portfolio_report(settings, results, tmp_path / "report.html").read_text()
    assert "contribution_return" in report and "ADA/BTC" in report and "Turnover" in report and "plotly-figure" in report
