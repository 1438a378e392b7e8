"""The trials registry, the overfitting statistics and the ``overfitting`` check through the real
Dagster assets (candles fetched by ccxt from the emulator, a real instance, real files)."""

from __future__ import annotations

import json
import math

import dagster as dg
import numpy as np
import pandas as pd

from atlas_pipeline.config.backtests import load_backtests_config
from atlas_pipeline.config.exchanges import load_exchanges_config
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.research.assets import OVERFITTING_CHECK, metrics_asset_key, walkforward_asset_key
from atlas_pipeline.research.metrics import daily_returns
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline.research.stats.dsr import moments
from atlas_pipeline.research.trials import dataset_trials
from atlas_pipeline.research_runs import leaderboard, overfitting_note, write_backtest_report
from atlas_pipeline_tests.support import needs_shared_candles
from atlas_pipeline_tests.test_research_assets import (  # noqa: F401 - setup is a fixture
    SWEPT,
    check_evaluations,
    materialize_research,
    candles_template,
    setup,
    write_backtests,
)
from atlas_pipeline_tests.test_stats import reference_dsr

pytestmark = needs_shared_candles


def test_sweeps_record_trials_and_the_overfitting_check_warns_or_blocks(setup, tmp_path) -> None:
    config_dir, store_root, instance = setup
    results = ResultStore(str(store_root))
    write_backtests(config_dir, {"swept": SWEPT})
    defs = build_definitions(config_dir, store_root=str(store_root))
    first = materialize_research(defs, instance, "swept", "ETH-BTC")
    assert first.success
    check = check_evaluations(first)[OVERFITTING_CHECK]
    assert check.severity == dg.AssetCheckSeverity.WARN

    # the registry: one file, a row per candidate with its params and data range
    registry = results.trials("binance", "ETH/BTC", "5m")
    assert len(registry) == 4 and set(registry["backtest"]) == {"swept"}
    assert sorted(registry["params"]) == sorted(json.dumps({"fast": f, "slow": s}, sort_keys=True)
                                                 for f in (5, 10) for s in (20, 40))
    assert (registry["data_start"].dt.normalize() == pd.Timestamp("2018-01-10", tz="UTC")).all()  # first candle

    # DSR recomputed here from the stored equity and the registry's Sharpe ratios
    stored = results.load_result("swept", "ETH/BTC")
    sharpe, skew, kurtosis, days = moments(daily_returns(stored.equity["equity"]).to_numpy())
    variance = float((registry["sharpe"].to_numpy() / math.sqrt(365)).var(ddof=1))
    expected = reference_dsr(sharpe, 4, variance, days, skew, kurtosis)
    stats = results.load_overfitting(results.folder("swept", "ETH/BTC"))
    assert stats["trials"] == 4 and math.isclose(stats["dsr"], expected, abs_tol=1e-9)
    assert check.metadata["dsr"].value == stats["dsr"]
    assert check.passed == (stats["dsr"] >= 0.95)  # PBO is NaN here: 20 days < 32 for 16 blocks
    assert math.isnan(stats["pbo"]) and stats["pbo_days"] < 32
    assert stats["bootstrap_sharpe_p5"] <= stats["bootstrap_sharpe_p50"] <= stats["bootstrap_sharpe_p95"]
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=metrics_asset_key("swept"), asset_partitions=["ETH-BTC"]), limit=1
    ).records
    assert record.asset_materialization.metadata["dsr"].value == stats["dsr"]

    # a rerun records its trials again but they are the same 4 trials of this dataset
    results.record_trials("binance", "ETH/BTC", "5m", "swept", registry)
    again = results.trials("binance", "ETH/BTC", "5m")
    assert len(again) == 8
    assert len(dataset_trials(again, registry["data_start"].min(), registry["data_end"].max())) == 4
    assert dataset_trials(again, registry["data_end"].max(), registry["data_end"].max() + pd.Timedelta(days=1)).empty

    settings = load_backtests_config(load_exchanges_config(config_dir), config_dir).get("swept")
    board = leaderboard([settings], results)
    assert list(board["symbol"]) == ["ETH/BTC"] and board["dsr"].iloc[0] == stats["dsr"]

    # blocking limits the result cannot meet: the check fails as an error and the leaderboard drops it
    # (the metrics asset judges the stored statistics: no need to rerun the backtest)
    write_backtests(config_dir, {"swept": {**SWEPT, "overfitting": {"min_dsr": 0.9999, "block": True}}})
    defs = build_definitions(config_dir, store_root=str(store_root))
    strict = dg.materialize([defs.resolve_assets_def(metrics_asset_key("swept"))], instance=instance,
                            partition_key="ETH-BTC", raise_on_error=False)
    check = check_evaluations(strict)[OVERFITTING_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "< min_dsr 0.9999" in check.description
    assert defs.resolve_assets_def(metrics_asset_key("swept")).check_specs_by_output_name
    strict_settings = load_backtests_config(load_exchanges_config(config_dir), config_dir).get("swept")
    assert leaderboard([strict_settings], results).empty
    note = overfitting_note(stats, strict_settings)
    assert note.startswith(f"Deflated Sharpe {stats['dsr']:.3f} over 4 trials") and "over the limits: dsr" in note
    report = write_backtest_report(strict_settings, results, tmp_path / "report.html").read_text()
    assert "Deflated Sharpe" in report and "over the limits" in report

    # the walk-forward: its trials (per train window) and statistics of the stitched returns
    key = walkforward_asset_key("swept")
    walk = dg.materialize([defs.resolve_assets_def(key)], instance=instance, partition_key="ETH-BTC",
                          raise_on_error=False)
    [event] = walk.get_asset_materialization_events()
    metadata = event.materialization.metadata
    wf_stats = results.load_overfitting(results.walkforward_folder("swept", "ETH/BTC"))
    assert metadata["dsr"].value == wf_stats["dsr"] or (math.isnan(wf_stats["dsr"]))
    assert check_evaluations(walk)[OVERFITTING_CHECK].check_name == OVERFITTING_CHECK
    windows = results.trials("binance", "ETH/BTC", "5m")
    walked = windows[windows["kind"] == "walkforward"]
    assert len(walked) == 4 * 4 and sorted(set(walked["window"])) == [0, 1, 2, 3]
    assert (walked["data_end"] - walked["data_start"] == pd.Timedelta(days=6)).all()
    assert np.isfinite(wf_stats["bootstrap_sharpe_p50"])
