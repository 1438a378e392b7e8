"""Backtest -> metrics -> leaderboard and walk-forward in a real Dagster instance, the lookahead
check, and reruns on new candles."""

import datetime as dt
import json
import shutil
from pathlib import Path

from dataclasses import replace

import dagster as dg
import pandas as pd
import pytest
import yaml

from atlas_pipeline.config import load_exchanges_config
from atlas_pipeline.config.backtests import load_backtests_config
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.research.launch import materialize_backtests
from atlas_pipeline.defs.research.automation import RESEARCH_AUTOMATION_SENSOR
from atlas_pipeline.defs.research.assets import (
    LEADERBOARD_KEY,
    LOOKAHEAD_CHECK,
    backtest_asset_key,
    metrics_asset_key,
    walkforward_asset_key,
)
from atlas_pipeline.market_data.emulator import EmulatorServer, FileCandleSource
from atlas_pipeline.market_data.store import CandleStore
from atlas_pipeline.research.engine import run_backtest as engine_run_backtest
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research_runs import backtest_spec, stored_candles
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles, run_range, write_exchange_config

pytestmark = needs_shared_candles

D = dt.date
OHLCV = dg.AssetKey(["binance", "ohlcv_5m"])
SMA = "sma_5m"


def write_backtests(config_dir: Path, backtests: dict) -> None:
    (config_dir / "backtests.yaml").write_text(yaml.safe_dump({"backtests": backtests}))


SMA_SETTINGS = {
    "strategy": "sma_crossover",
    "exchange": "binance",
    "timeframe": "5m",
    "symbols": ["ETH/BTC", "ADA/BTC"],
    "period": {"start": "2018-01-10", "end": "2018-01-30"},
    "cash": 1000,
    "sizing": {"fraction": 0.5},
}


@pytest.fixture(scope="module")
def candles_template(tmp_path_factory: pytest.TempPathFactory):
    """Built once per module, copied by ``setup``: an emulator (alive for the module), its config
    with one backtest, and the candles of two markets materialized through the OHLCV asset into a
    store and a SQLite Dagster instance."""
    root = tmp_path_factory.mktemp("research_template")
    server = EmulatorServer(FileCandleSource(SHARED_CANDLES)).start()
    try:
        config_dir = write_exchange_config(root / "config", server.base_url)
        write_backtests(config_dir, {SMA: SMA_SETTINGS})
        (root / "dagster_home").mkdir()
        with dg.instance_for_test(temp_dir=str(root / "dagster_home")) as instance:
            for symbol in ("ETH/BTC", "ADA/BTC"):
                [run] = run_range(config_dir, root / "store", instance, [symbol], D(2018, 1, 10), D(2018, 1, 30))
                assert run.success, run.failure_reason()
        yield root
    finally:
        server.stop()


@pytest.fixture
def setup(tmp_path: Path, candles_template: Path):
    """A copy of ``candles_template`` of this test's own: config, store and instance."""
    for part in ("config", "store", "dagster_home"):
        shutil.copytree(candles_template / part, tmp_path / part)
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield tmp_path / "config", tmp_path / "store", instance


def materialize_research(defs: dg.Definitions, instance, name: str, partition: str) -> dg.ExecuteInProcessResult:
    assets = [defs.resolve_assets_def(backtest_asset_key(name)), defs.resolve_assets_def(metrics_asset_key(name))]
    return dg.materialize(assets, instance=instance, partition_key=partition, raise_on_error=False)


def test_lineage_backtest_depends_on_every_day_of_its_market(setup) -> None:
    config_dir, store_root, _ = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    graph = defs.resolve_asset_graph()
    assert OHLCV in graph.get(backtest_asset_key(SMA)).parent_keys
    assert backtest_asset_key(SMA) in graph.get(metrics_asset_key(SMA)).parent_keys
    assert metrics_asset_key(SMA) in graph.get(LEADERBOARD_KEY).parent_keys
    mapping = defs.resolve_assets_def(backtest_asset_key(SMA)).get_partition_mapping(OHLCV)
    assert isinstance(mapping, dg.MultiToSingleDimensionPartitionMapping)


def test_materializing_backtest_metrics_and_leaderboard(setup) -> None:
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    for partition in ("ETH-BTC", "ADA-BTC"):
        result = materialize_research(defs, instance, SMA, partition)
        assert result.success

    results = ResultStore(str(store_root))
    stored = results.load_result(SMA, "ETH/BTC")
    assert len(stored.trades) > 0 and stored.bars > 0
    assert stored.equity.index[0] >= stored.close.index[0]

    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=metrics_asset_key(SMA), asset_partitions=["ETH-BTC"]), limit=1
    ).records
    metadata = record.asset_materialization.metadata
    metrics = results.load_metrics(SMA, "ETH/BTC")
    assert metadata["sharpe"].value == pytest.approx(metrics["sharpe"], nan_ok=True)
    assert metadata["trade_count"].value == len(stored.trades)
    assert "data:image/png;base64," in metadata["equity_drawdown_chart"].value
    assert "data:image/png;base64," in metadata["trades_chart"].value
    assert Path(metadata["equity_drawdown_png"].value).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    board = dg.materialize([defs.resolve_assets_def(LEADERBOARD_KEY)], instance=instance)
    assert board.success
    [event] = board.get_asset_materialization_events()
    assert event.materialization.metadata["entries"].value == 2
    assert "ETH/BTC" in event.materialization.metadata["leaderboard"].value


def sensor_tick(defs: dg.Definitions, instance, cursor: str | None = None):
    """One tick of the ``research_reruns`` sensor, as the daemon evaluates it (run requests resolved)."""
    sensor = defs.resolve_sensor_def(RESEARCH_AUTOMATION_SENSOR)
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))


def requested(tick, key: dg.AssetKey) -> set[str]:
    """The partitions of ``key`` a tick requested."""
    return {request.partition_key for request in tick.run_requests if key in (request.asset_selection or ())}


def test_new_candles_rerun_exactly_the_affected_backtest_partitions(setup) -> None:
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    for partition in ("ETH-BTC", "ADA-BTC"):
        assert materialize_research(defs, instance, SMA, partition).success
    assert dg.materialize([defs.resolve_assets_def(LEADERBOARD_KEY)], instance=instance).success

    quiet = sensor_tick(defs, instance)
    assert quiet.run_requests == []

    # one day of ETH/BTC candles is re-materialized
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 20), D(2018, 1, 21), full_refresh=True)
    assert run.success
    after = sensor_tick(defs, instance, quiet.cursor)
    # one run for the market: the backtest and, as it was materialized before, its metrics
    [request] = after.run_requests
    assert request.partition_key == "ETH-BTC"
    assert set(request.asset_selection) == {backtest_asset_key(SMA), metrics_asset_key(SMA)}

    # and nothing more on the next tick
    again = sensor_tick(defs, instance, after.cursor)
    assert again.run_requests == []


def test_a_backtest_run_by_hand_after_its_candles_changed_is_not_rerun(setup) -> None:
    """Candles updated while a backtest partition was never run are handled by running it.

    The declarative condition this sensor replaced needed a reset for it (commit 0af572c): with the
    daemon's settle delay, a run that finished during the delay looked present and done to the tick
    but "handled" only on the next one. The sensor reads each candle event once: a tick that sees it
    while the partition was never run drops it; a tick that sees it only after the hand run (the
    race) finds the partition materialized by a run that started after the candles changed.
    """
    config_dir, store_root, instance = setup
    defs = build_definitions(config_dir, store_root=str(store_root))
    first = sensor_tick(defs, instance)
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 20), D(2018, 1, 21), full_refresh=True)
    assert run.success
    seen = sensor_tick(defs, instance, first.cursor)
    assert seen.run_requests == []  # never run: nothing to keep current
    assert materialize_research(defs, instance, SMA, "ETH-BTC").success
    assert sensor_tick(defs, instance, seen.cursor).run_requests == []

    # the race: candles change, the backtest is run by hand, and only then does a tick read the change
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 22), D(2018, 1, 23), full_refresh=True)
    assert run.success
    assert materialize_research(defs, instance, SMA, "ETH-BTC").success
    racing = sensor_tick(defs, instance, seen.cursor)
    assert racing.run_requests == []
    assert "1 already rerun" in racing.skip_message


def test_bad_strategy_fails_its_backtest_with_the_traceback_and_others_still_run(setup, tmp_path: Path) -> None:
    config_dir, store_root, instance = setup
    write_backtests(
        config_dir,
        {SMA: SMA_SETTINGS, "broken": {**SMA_SETTINGS, "strategy": "no_such_strategy"},
         "bad_param": {**SMA_SETTINGS, "params": {"no_such_param": 3}}},
    )
    defs = build_definitions(config_dir, store_root=str(store_root))
    broken = materialize_research(defs, instance, "broken", "ETH-BTC")
    assert not broken.success
    failure = next(e for e in broken.all_events if e.is_step_failure)
    assert "no_such_strategy" in failure.step_failure_data.error.message
    bad_param = materialize_research(defs, instance, "bad_param", "ETH-BTC")
    assert not bad_param.success
    assert "no_such_param" in next(e for e in bad_param.all_events if e.is_step_failure).step_failure_data.error.message
    assert materialize_research(defs, instance, SMA, "ETH-BTC").success


def test_a_subset_backtest_keeps_only_its_markets_current(setup) -> None:
    config_dir, store_root, instance = setup
    write_backtests(config_dir, {SMA: {**SMA_SETTINGS, "symbols": ["ETH/BTC"]}})
    defs = build_definitions(config_dir, store_root=str(store_root))
    # Dagster's lineage mapping needs the candles' whole market dimension as partitions
    assert defs.resolve_assets_def(backtest_asset_key(SMA)).partitions_def.get_partition_keys() == ["ETH-BTC", "ADA-BTC"]
    backtests = list(load_backtests_config(load_exchanges_config(config_dir), config_dir).backtests.values())
    runs = materialize_backtests(defs, instance, backtests)
    assert [run.label for run in runs] == [f"{SMA} ETH/BTC", "leaderboard"] and all(run.success for run in runs)
    quiet = sensor_tick(defs, instance)

    for symbol in ("ETH/BTC", "ADA/BTC"):
        [run] = run_range(config_dir, store_root, instance, [symbol], D(2018, 1, 20), D(2018, 1, 21), full_refresh=True)
        assert run.success
    after = sensor_tick(defs, instance, quiet.cursor)
    assert requested(after, backtest_asset_key(SMA)) == {"ETH-BTC"}  # ADA-BTC was never run


def test_strategy_raising_fails_with_its_traceback(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir, store_root, instance = setup
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    (strategies / "explodes.py").write_text(
        "import backtrader as bt\n\n\nclass Explodes(bt.Strategy):\n    def next(self):\n"
        "        raise RuntimeError('boom at bar')\n"
    )
    monkeypatch.setenv("ATLAS_STRATEGIES", str(strategies))
    write_backtests(config_dir, {"explodes": {**SMA_SETTINGS, "strategy": "explodes"}})
    defs = build_definitions(config_dir, store_root=str(store_root))
    result = materialize_research(defs, instance, "explodes", "ETH-BTC")
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "explodes" in message and "boom at bar" in message and "explodes.py" in message, message


def test_reruns_need_no_click_the_automation_sensor_runs_by_default(setup) -> None:
    config_dir, store_root, _ = setup
    sensor = build_definitions(config_dir, store_root=str(store_root)).resolve_sensor_def(RESEARCH_AUTOMATION_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


SWEPT = {
    **SMA_SETTINGS,
    "grid": {"fast": [5, 10], "slow": {"start": 20, "stop": 40, "step": 20}},
    "objective": "total_return",
    "filters": {"min_trades": 1},
    "walk_forward": {"train_days": 6, "test_days": 3},
}

PEEKING_STRATEGY = """
from atlas_pipeline.research.strategy_base import FLAT, LONG, AtlasStrategy


class Peeks(AtlasStrategy):
    def next(self):
        rises = len(self.data) < self.data.buflen() and self.data.close[1] > self.data.close[0]
        self.target(LONG if rises else FLAT)
"""


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_swept_backtest_keeps_the_chosen_candidate_and_passes_the_lookahead_check(setup) -> None:
    config_dir, store_root, instance = setup
    write_backtests(config_dir, {"swept": SWEPT})
    defs = build_definitions(config_dir, store_root=str(store_root))
    result = materialize_research(defs, instance, "swept", "ETH-BTC")
    assert result.success
    check = check_evaluations(result)[LOOKAHEAD_CHECK]
    assert check.passed and check.metadata["truncated_reruns"].value > 0

    results = ResultStore(str(store_root))
    table = pd.read_parquet(Path(results.folder("swept", "ETH/BTC")) / "sweep.parquet")
    assert len(table) == 4 and table["chosen"].sum() == 1
    passed = table[table["passed"]]
    best = passed.loc[passed["total_return"].idxmax()]
    chosen = {"fast": int(best["param_fast"]), "slow": int(best["param_slow"])}
    stored = results.load_result("swept", "ETH/BTC")
    assert {k: stored.parameters["params"][k] for k in chosen} == chosen
    # the stored result is the chosen candidate run on its own
    settings = load_backtests_config(load_exchanges_config(config_dir), config_dir).get("swept")
    candles = stored_candles(settings, "ETH/BTC", CandleStore(str(store_root)))
    alone = engine_run_backtest(candles, replace(backtest_spec(settings), params=chosen), "5m")
    pd.testing.assert_frame_equal(stored.equity, alone.equity, check_freq=False)
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=backtest_asset_key("swept"), asset_partitions=["ETH-BTC"]), limit=1
    ).records
    metadata = record.asset_materialization.metadata
    assert metadata["candidates"].value == 4 and metadata["chosen_params"].value == str(chosen)


def test_walkforward_asset_depends_on_the_candles_and_stores_its_report(setup) -> None:
    config_dir, store_root, instance = setup
    write_backtests(config_dir, {"swept": SWEPT})
    defs = build_definitions(config_dir, store_root=str(store_root))
    key = walkforward_asset_key("swept")
    assert OHLCV in defs.resolve_asset_graph().get(key).parent_keys
    result = dg.materialize([defs.resolve_assets_def(key)], instance=instance, partition_key="ETH-BTC")
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    folder = Path(ResultStore(str(store_root)).walkforward_folder("swept", "ETH/BTC"))
    windows = pd.read_parquet(folder / "windows.parquet")
    assert len(windows) == 4  # candles 2018-01-10..29: tests on days 16-18, 19-21, 22-24, 25-27 (28-30 ends past the data)
    summary = json.loads((folder / "summary.json").read_text())
    assert metadata["windows"].value == summary["windows"] == len(windows)
    assert (folder / "charts" / "walkforward.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in metadata["walkforward_chart"].value
    assert (pd.to_datetime(windows["train_end"]) <= pd.to_datetime(windows["test_start"])).all()


def test_a_peeking_strategy_fails_the_lookahead_check_and_gets_no_metrics(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir, store_root, instance = setup
    strategies = tmp_path / "peeking_strategies"
    strategies.mkdir()
    (strategies / "peeks.py").write_text(PEEKING_STRATEGY)
    monkeypatch.setenv("ATLAS_STRATEGIES", str(strategies))
    write_backtests(config_dir, {"peeks": {**SMA_SETTINGS, "strategy": "peeks"}})
    defs = build_definitions(config_dir, store_root=str(store_root))
    result = materialize_research(defs, instance, "peeks", "ETH-BTC")
    check = check_evaluations(result)[LOOKAHEAD_CHECK]
    assert not check.passed and "lookahead bias" in check.description
    assert check.metadata["changed_signals"].value > 0
    assert not result.success  # the blocking check stops the run before metrics
    assert instance.fetch_materializations(metrics_asset_key("peeks"), limit=1).records == []


def test_a_sweep_where_no_candidate_passes_fails_naming_why_and_keeps_the_table(setup) -> None:
    config_dir, store_root, instance = setup
    write_backtests(config_dir, {"strict": {**SWEPT, "filters": {"min_trades": 100_000}}})
    defs = build_definitions(config_dir, store_root=str(store_root))
    result = materialize_research(defs, instance, "strict", "ETH-BTC")
    assert not result.success
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "none of 4 candidates passed the filters (4x trade_count < min_trades 100000)" in message, message
    table = pd.read_parquet(Path(ResultStore(str(store_root)).folder("strict", "ETH/BTC")) / "sweep.parquet")
    assert len(table) == 4 and not table["passed"].any() and not table["chosen"].any()


@pytest.mark.parametrize(("value", "expected"), [("", None), ("3", 3), ("0", "at least 1"), ("two", "whole number")])
def test_sweep_workers_come_from_atlas_workers(monkeypatch: pytest.MonkeyPatch, value: str, expected) -> None:
    import os

    from atlas_pipeline.research_runs import sweep_workers

    monkeypatch.setenv("ATLAS_WORKERS", value)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=f"ATLAS_WORKERS='{value}': .*{expected}"):
            sweep_workers()
    else:
        assert sweep_workers() == (expected or os.cpu_count())
