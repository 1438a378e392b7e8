"""The UI path end to end: ``dagster dev -w workspace.yaml`` (webserver + daemon) on a free loopback
port, driven through its GraphQL API the way the UI drives it, and the asset graph page rendered by
headless Chromium.

The tests share one ``dagster dev`` and run in file order: the range run and the backfill store the
candles the backtests read, and the automation test reruns a backtest after its candles change.
A second exchange entry, OKX (its own emulator speaking OKX's API), selects its markets by universe
rules: the UI materializes its metadata, the members join the market dimension, and a range run and
a backtest run on OKX candles.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
import urllib.request
from collections import Counter
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from atlas_pipeline.defs.research.automation import RESEARCH_AUTOMATION_SENSOR
from atlas_pipeline.defs.market_data.funding import funding_asset_key
from atlas_pipeline.defs.market_data.keys import ohlcv_asset_key
from atlas_pipeline.defs.research.assets import backtest_asset_key, metrics_asset_key
from atlas_pipeline.defs.research.portfolios import portfolio_asset_key
from atlas_pipeline.market_data.candles import symbol_key
from atlas_pipeline.market_data.store import MARK_PRICE_CANDLES
from atlas_pipeline.market_data.emulator import EmulatorServer, FileCandleSource
from atlas_pipeline.market_data.exchange_metadata import METADATA_FILE, read_metadata
from atlas_pipeline.research.result_store import ResultStore
from atlas_pipeline_tests.e2e import (
    LOCATION,
    REPOSITORY,
    DagsterDev,
    artifacts_dir,
    chromium,
    chromium_available,
    group_alive,
    wait_for,
)
from atlas_pipeline_tests.support import SHARED_CANDLES, needs_shared_candles, write_exchange_config
from atlas_pipeline_tests.test_research_assets import SMA as BACKTEST, SMA_SETTINGS

pytestmark = needs_shared_candles

OHLCV_PATH = ["binance", "ohlcv_5m"]
OKX_OHLCV_PATH = ["okx", "ohlcv_5m"]
BACKTEST_PATH = [BACKTEST, "backtest"]
METRICS_PATH = [BACKTEST, "metrics"]
SYMBOLS = ("ETH-BTC", "ADA-BTC")
RANGE_START, RANGE_END = "2018-01-10|ETH-BTC", "2018-01-20|ETH-BTC"
BACKFILL_DAYS = [f"2018-01-{day:02d}" for day in range(10, 30)]
AUTOMATION_SENSOR = RESEARCH_AUTOMATION_SENSOR
PERP = "ETH/BTC:BTC"  # the emulator serves every spot market also as its linear perpetual swap
PERP_KEY = "ETH-BTC_BTC"
PERP_BACKTEST = "sma_perp_5m"
PORTFOLIO = "sma_basket_5m"
PORTFOLIOS = {PORTFOLIO: {  # one account over both Binance markets, equal weights among those long
    "strategy": "sma_crossover", "exchange": "binance", "timeframe": "5m", "symbols": ["ETH/BTC", "ADA/BTC"],
    "period": {"start": "2018-01-10", "end": "2018-01-30"}, "cash": 1000, "sizing": {"fraction": 0.9},
}}
OKX_BACKTEST = "sma_okx_5m"
OKX_UNIVERSE = {"quote": ["BTC"], "top": 1, "include": ["ETH/BTC"]}  # the top market by volume, and ETH/BTC
BACKTESTS = {  # sma_crossover on 5m, 2018-01-10..30: ETH/BTC and ADA/BTC on Binance, ETH/BTC on OKX
    BACKTEST: SMA_SETTINGS,
    OKX_BACKTEST: {**SMA_SETTINGS, "exchange": "okx", "symbols": ["ETH/BTC"]},
    PERP_BACKTEST: {  # 3x on isolated margin, paying and receiving funding (docs/trading-model.md)
        **SMA_SETTINGS, "symbols": [PERP], "market_type": "swap", "leverage": 3,
        "period": {"start": "2018-01-11", "end": "2018-01-14"},
    },
}
DAGSTER_YAML = {"telemetry": {"enabled": False}}
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}"""
RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status tags { key value } }
    ... on Error { message }
  }
}"""
LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}"""
BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill { status error { message } }
    ... on Error { message }
  }
}"""
RUNS_WITH_TAG = """
query RunsWithTag($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on Error { message }
  }
}"""
SENSOR = """
query Sensor($selector: SensorSelector!, $after: Float) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(afterTimestamp: $after, limit: 20) { status timestamp } } }
    ... on Error { message }
  }
}"""
MATERIALIZATIONS = """
query Materializations($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset { assetMaterializations(partitions: $partitions) { runId partition timestamp } }
  }
}"""
PARTITION_DIMENSIONS = """
query Dimensions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { partitionKeysByDimension { name partitionKeys } }
  }
}"""
LINEAGE = """
query Lineage {
  assetNodes { assetKey { path } dependencyKeys { path } dependedByKeys { path } }
}"""


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory):
    """``atlas ui`` (``dagster dev``) with a temporary DAGSTER_HOME, ATLAS_HOME and ATLAS_CONFIG, reading candles
    from an emulator in this process; every process it starts is gone after the module."""
    tmp = tmp_path_factory.mktemp("e2e")
    dagster_home = tmp / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(DAGSTER_YAML))
    emulator = EmulatorServer(FileCandleSource(SHARED_CANDLES), host="127.0.0.1").start()
    okx = EmulatorServer(FileCandleSource(SHARED_CANDLES), host="127.0.0.1", exchange="okx").start()
    config_dir = write_exchange_config(tmp / "config", emulator.base_url)
    exchanges = yaml.safe_load((config_dir / "exchanges.yaml").read_text())
    exchanges["exchanges"]["binance"]["markets"].append(PERP)
    exchanges["exchanges"]["okx"] = {
        **exchanges["exchanges"]["binance"], "api_url": okx.base_url, "markets": [], "universe": OKX_UNIVERSE,
    }
    (config_dir / "exchanges.yaml").write_text(yaml.safe_dump(exchanges))
    (config_dir / "backtests.yaml").write_text(yaml.safe_dump({"backtests": BACKTESTS, "portfolios": PORTFOLIOS}))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "ATLAS_HOME": str(tmp / "atlas_home"),
        "ATLAS_CONFIG": str(config_dir),
        "ATLAS_SENSOR_INTERVAL_SECONDS": "5",  # reruns follow within seconds, not 30 s ticks
    }
    dev = DagsterDev(env, tmp / "dagster_dev.log")
    try:
        dev.start(timeout=120)
        yield SimpleNamespace(dev=dev, tmp=tmp, config_dir=config_dir, okx_url=okx.base_url)
    finally:
        dev.stop()
        emulator.stop()
        okx.stop()
    assert not group_alive(dev.pgid), f"processes of dagster dev's group {dev.pgid} are still running"


def selector(job: str, asset_paths: list[list[str]]) -> dict:
    return {
        "repositoryLocationName": LOCATION,
        "repositoryName": REPOSITORY,
        "jobName": job,
        "assetSelection": [{"path": path} for path in asset_paths],
    }


def launch_run(dev: DagsterDev, job: str, asset_paths: list[list[str]], tags: dict[str, str]) -> str:
    params = {
        "selector": selector(job, asset_paths),
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    reply = dev.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert reply["__typename"] == "LaunchRunSuccess", f"{reply}\n{dev.log_tail()}"
    return reply["run"]["runId"]


def range_tags(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def wait_for_run(dev: DagsterDev, run_id: str, timeout: float = 120) -> dict:
    def finished():
        run = dev.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return run if run["status"] in TERMINAL_RUN else None

    run = wait_for(finished, timeout, f"run {run_id} to finish", dev)
    assert run["status"] == "SUCCESS", f"run {run_id} ended {run['status']}\n{dev.log_tail()}"
    return run


def runs_with_tag(dev: DagsterDev, key: str, value: str) -> list[dict]:
    reply = dev.graphql(RUNS_WITH_TAG, {"key": key, "value": value})["runsOrError"]
    assert reply["__typename"] == "Runs", reply
    return reply["results"]


def tag_map(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["tags"]}


def materializations(dev: DagsterDev, path: list[str], partition: str | None) -> list[dict]:
    """The asset's materializations of ``partition`` (None: an unpartitioned asset's)."""
    partitions = None if partition is None else [partition]
    reply = dev.graphql(MATERIALIZATIONS, {"key": {"path": path}, "partitions": partitions})["assetOrError"]
    if reply["__typename"] != "Asset":  # never materialized yet
        return []
    return reply["assetMaterializations"]


def test_graphql_launches_an_ohlcv_partition_range_run(ui) -> None:
    run_id = launch_run(ui.dev, "ohlcv_binance", [OHLCV_PATH], range_tags(RANGE_START, RANGE_END))
    run = wait_for_run(ui.dev, run_id)
    assert tag_map(run)["dagster/asset_partition_range_end"] == RANGE_END
    stored = materializations(ui.dev, OHLCV_PATH, "2018-01-20|ETH-BTC")
    assert [m["runId"] for m in stored] == [run_id]


def test_partition_backfill_runs_once_per_symbol(ui) -> None:
    params = {
        "assetSelection": [{"path": OHLCV_PATH}],
        "partitionNames": [f"{day}|{symbol}" for symbol in SYMBOLS for day in BACKFILL_DAYS],
    }
    reply = ui.dev.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert reply["__typename"] == "LaunchBackfillSuccess", f"{reply}\n{ui.dev.log_tail()}"
    backfill_id = reply["backfillId"]

    def done():
        backfill = ui.dev.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        assert backfill["status"] not in {"FAILED", "CANCELED", "COMPLETED_FAILED"}, f"{backfill}\n{ui.dev.log_tail()}"
        return backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}

    wait_for(done, 150, f"backfill {backfill_id} to complete", ui.dev, interval=2)
    runs = runs_with_tag(ui.dev, "dagster/backfill", backfill_id)
    ranges = sorted(
        (tag_map(run)["dagster/asset_partition_range_start"], tag_map(run)["dagster/asset_partition_range_end"])
        for run in runs
    )
    assert ranges == sorted((f"2018-01-10|{symbol}", f"2018-01-29|{symbol}") for symbol in SYMBOLS), runs
    assert {run["status"] for run in runs} == {"SUCCESS"}, runs


def automation_sensor_state(dev: DagsterDev, ticks_after: float | None = None) -> dict:
    """The automation sensor's status and its ticks that started after ``ticks_after`` (epoch s)."""
    sensor = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": AUTOMATION_SENSOR}
    reply = dev.graphql(SENSOR, {"selector": sensor, "after": ticks_after})["sensorOrError"]
    assert reply["__typename"] == "Sensor", reply
    return reply["sensorState"]


def wait_for_automation_tick(dev: DagsterDev) -> None:
    """Wait for a tick that starts now and finishes: it has seen every event committed before it."""
    started = time.time()
    wait_for(lambda: any(tick["status"] != "STARTED" for tick in automation_sensor_state(dev, started)["ticks"]),
             120, "an automation sensor tick", dev, interval=2)


def test_automation_reruns_the_backtest_of_updated_candles(ui) -> None:
    assert automation_sensor_state(ui.dev)["status"] == "RUNNING"  # on by default: no click needed
    # The daemon has seen the backfilled candles while no backtest existed; running the backtests by
    # hand now must not make it run them again (see defs/research/reruns.py).
    wait_for_automation_tick(ui.dev)
    for symbol in SYMBOLS:
        run_id = launch_run(ui.dev, "__ASSET_JOB", [BACKTEST_PATH, METRICS_PATH], {"dagster/partition": symbol})
        wait_for_run(ui.dev, run_id)
    first = {symbol: materializations(ui.dev, BACKTEST_PATH, symbol) for symbol in SYMBOLS}
    assert all(len(stored) == 1 for stored in first.values()), first

    update = launch_run(ui.dev, "ohlcv_binance", [OHLCV_PATH], range_tags("2018-01-15|ETH-BTC", "2018-01-15|ETH-BTC"))
    wait_for_run(ui.dev, update)

    def rerun():
        stored = materializations(ui.dev, BACKTEST_PATH, "ETH-BTC")
        return [m for m in stored if m["runId"] != first["ETH-BTC"][0]["runId"]]

    [again] = wait_for(rerun, 180, "the automation to rerun backtest ETH-BTC", ui.dev, interval=3)
    run = ui.dev.graphql(RUN_STATUS, {"runId": again["runId"]})["runOrError"]
    tags = tag_map(run)
    assert tags.get("dagster/sensor_name") == AUTOMATION_SENSOR and tags.get("dagster/partition") == "ETH-BTC", run
    wait_for_automation_tick(ui.dev)  # a tick after the rerun, which had its chance to run ADA-BTC too
    assert materializations(ui.dev, BACKTEST_PATH, "ADA-BTC") == first["ADA-BTC"]  # its candles did not change
    assert len(materializations(ui.dev, BACKTEST_PATH, "ETH-BTC")) == 2  # run by hand, rerun once


def okx_top_by_quote_volume(url: str) -> str:
    """The BTC market with the largest 24h quote volume in the OKX emulator's own tickers (ranked
    here, independently of Atlas's universe code)."""
    with urllib.request.urlopen(f"{url}/api/v5/market/tickers?instType=SPOT", timeout=10) as answer:
        tickers = json.load(answer)["data"]
    btc = [t for t in tickers if t["instId"].endswith("-BTC")]
    return max(btc, key=lambda t: (float(t["volCcy24h"]), t["instId"]))["instId"].replace("-", "/")


def test_okx_universe_entry_from_metadata_to_backtest(ui) -> None:
    """The UI path on the second exchange: okx/exchange_metadata resolves the universe rules, its
    members join the market dimension of okx/ohlcv_5m, a range run stores OKX candles for a member,
    and a backtest runs on them."""
    metadata_run = launch_run(ui.dev, "__ASSET_JOB", [["okx", "exchange_metadata"]], {})
    wait_for_run(ui.dev, metadata_run)
    members = read_metadata(ui.config_dir / METADATA_FILE, "okx").universe
    assert sorted(members) == sorted({okx_top_by_quote_volume(ui.okx_url), "ETH/BTC"}), members
    node = ui.dev.graphql(PARTITION_DIMENSIONS, {"key": {"path": OKX_OHLCV_PATH}})["assetNodeOrError"]
    dimensions = {d["name"]: d["partitionKeys"] for d in node["partitionKeysByDimension"]}
    assert sorted(dimensions["symbol"]) == sorted(symbol_key(m) for m in members), dimensions["symbol"]

    run_id = launch_run(ui.dev, "ohlcv_okx", [OKX_OHLCV_PATH], range_tags("2018-01-10|ETH-BTC", "2018-01-29|ETH-BTC"))
    wait_for_run(ui.dev, run_id)
    assert [m["runId"] for m in materializations(ui.dev, OKX_OHLCV_PATH, "2018-01-29|ETH-BTC")] == [run_id]

    backtest = [OKX_BACKTEST, "backtest"]
    run_id = launch_run(ui.dev, "__ASSET_JOB", [backtest, [OKX_BACKTEST, "metrics"]], {"dagster/partition": "ETH-BTC"})
    wait_for_run(ui.dev, run_id)
    assert run_id in {m["runId"] for m in materializations(ui.dev, backtest, "ETH-BTC")}
    # The OKX backtest reads OKX candles: the same shared file served by both emulators, so its trades
    # enter and exit where the Binance backtest's on ETH/BTC do (run earlier in this module; the fees,
    # hence sizes, are each exchange's own).
    results = ResultStore(str(ui.tmp / "atlas_home"))
    columns = ["entry_time", "exit_time", "side", "entry_price", "exit_price"]
    okx_trades = results.load_result(OKX_BACKTEST, "ETH/BTC").trades[columns].reset_index(drop=True)
    binance_trades = results.load_result(BACKTEST, "ETH/BTC").trades[columns].reset_index(drop=True)
    assert len(okx_trades) > 0
    pd.testing.assert_frame_equal(okx_trades, binance_trades)


def test_perp_backtest_with_funding_through_graphql(ui) -> None:
    """A perpetual swap from the UI: its trade candles (ohlcv job), mark prices and funding (perps
    job) as range runs, then the backtest with its blocking funding check, and the lineage."""
    candles, mark = ohlcv_asset_key("binance", "5m"), ohlcv_asset_key("binance", "5m", MARK_PRICE_CANDLES)
    funding = funding_asset_key("binance")
    tags = range_tags(f"2018-01-11|{PERP_KEY}", f"2018-01-13|{PERP_KEY}")
    wait_for_run(ui.dev, launch_run(ui.dev, "ohlcv_binance", [candles.path], tags))
    wait_for_run(ui.dev, launch_run(ui.dev, "perps_binance", [mark.path, funding.path], tags))
    assert len(materializations(ui.dev, funding.path, f"2018-01-13|{PERP_KEY}")) == 1

    backtest, metrics = backtest_asset_key(PERP_BACKTEST), metrics_asset_key(PERP_BACKTEST)
    run_id = launch_run(ui.dev, "__ASSET_JOB", [backtest.path, metrics.path], {"dagster/partition": PERP_KEY})
    wait_for_run(ui.dev, run_id)
    assert run_id in {m["runId"] for m in materializations(ui.dev, metrics.path, PERP_KEY)}
    stored = ResultStore(str(ui.tmp / "atlas_home")).load_result(PERP_BACKTEST, PERP)
    assert stored.parameters["leverage"] == 3 and stored.funding is not None and len(stored.funding) > 0

    upstream = {"/".join(d["path"]) for d in asset_node(ui.dev, backtest)["dependencyKeys"]}
    assert {candles.to_user_string(), mark.to_user_string(), funding.to_user_string()} <= upstream


def test_portfolio_through_graphql(ui) -> None:
    """A portfolio over both Binance markets from the UI (their candles were stored by the earlier
    tests): one run, its results, and its lineage to the candles."""
    key = portfolio_asset_key(PORTFOLIO)
    run_id = launch_run(ui.dev, "__ASSET_JOB", [key.path], {})
    wait_for_run(ui.dev, run_id)
    assert [m["runId"] for m in materializations(ui.dev, key.path, None)] == [run_id]
    summary, frames = ResultStore(str(ui.tmp / "atlas_home")).load_portfolio(PORTFOLIO, ("equity",))
    assert len(frames["equity"]) > 0 and summary
    upstream = {"/".join(d["path"]) for d in asset_node(ui.dev, key)["dependencyKeys"]}
    assert ohlcv_asset_key("binance", "5m").to_user_string() in upstream


def asset_node(dev: DagsterDev, key) -> dict:
    nodes = {tuple(node["assetKey"]["path"]): node for node in dev.graphql(LINEAGE)["assetNodes"]}
    return nodes[tuple(key.path)]


def test_lineage_read_back_through_graphql(ui) -> None:
    nodes = {"/".join(node["assetKey"]["path"]): node for node in ui.dev.graphql(LINEAGE)["assetNodes"]}
    downstream = {key: {"/".join(d["path"]) for d in node["dependedByKeys"]} for key, node in nodes.items()}
    upstream = {key: {"/".join(d["path"]) for d in node["dependencyKeys"]} for key, node in nodes.items()}
    assert {"sma_5m/backtest"} <= downstream["binance/ohlcv_5m"]
    assert "binance/ohlcv_5m" in upstream["sma_5m/backtest"]
    assert upstream["sma_5m/metrics"] == {"sma_5m/backtest"}
    assert "leaderboard" in downstream["sma_5m/metrics"]
    assert "sma_5m/metrics" in upstream["leaderboard"]


def lineage_keys(dev: DagsterDev) -> list[str]:
    return ["/".join(node["assetKey"]["path"]) for node in dev.graphql(LINEAGE)["assetNodes"]]


def node_kinds(keys) -> dict[str, str]:
    """What each node of this module's instance is, told from the configuration it was built from
    (exchanges binance and okx on 5m, the backtests in ``BACKTESTS``), not from the key's label."""
    known = {"leaderboard": "leaderboard"}
    for exchange in ("binance", "okx"):
        known[f"{exchange}/ohlcv_5m"] = "candles 5m"
        known[f"{exchange}/exchange_metadata"] = "exchange metadata"
    known.update({"binance/markprice_5m": "mark-price candles 5m", "binance/funding": "funding rates"})  # the swap
    for name in BACKTESTS:
        known.update({f"{name}/backtest": "backtest", f"{name}/metrics": "metrics", f"{name}/walkforward": "walk-forward"})
    known.update({f"{name}/portfolio": "portfolio" for name in PORTFOLIOS})
    keys = list(keys)
    assert set(keys) <= set(known), f"unexpected asset keys: {sorted(set(keys) - set(known))}"
    return {key: known[key] for key in keys}


def rendered_text(dom: str) -> list[str]:
    """The words a page shows: its DOM without scripts, styles and tags."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom)).split()


@pytest.mark.skipif(not chromium_available(), reason="the browser check needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium)")
def test_chromium_renders_the_asset_graph(ui) -> None:
    # The first-visit newsletter dialog (shown on loopback origins) would cover the graph.
    assert ui.dev.graphql("mutation SetNuxSeen { setNuxSeen }")["setNuxSeen"]
    # The global lineage page starts with its groups collapsed; ``expanded`` opens them (the group
    # id is "global@global:<group>", or "<repo>@<location>:<group>" with groups per code location).
    groups = [f"{prefix}:{group}" for prefix in ("global@global", f"{REPOSITORY}@{LOCATION}")
              for group in ("market_data", "research")]
    graph_url = f"{ui.dev.url}/asset-groups?expanded={','.join(groups)}"
    page = chromium(graph_url, ui.tmp / "chromium-graph", "--virtual-time-budget=15000", "--dump-dom")
    assert page.returncode == 0, f"chromium exited {page.returncode}: {page.stderr[-2000:]}"
    (ui.tmp / "asset_graph.html").write_text(page.stdout)
    words = rendered_text(page.stdout)
    # Graph nodes show the last part of each key, so that part names what the node is: every node of
    # a kind (candles of a timeframe, exchange metadata, backtest, metrics, ...) has that kind's
    # label, and no label is shared by two kinds (as `backtest/x` and `metrics/x` once both read `x`).
    kinds = node_kinds(lineage_keys(ui.dev))
    label_kinds: dict[str, set[str]] = {}
    for key, kind in kinds.items():
        label_kinds.setdefault(key.split("/")[-1], set()).add(kind)
    assert all(len(shared) == 1 for shared in label_kinds.values()), f"nodes of different kinds share a label: {label_kinds}"
    nodes = Counter(key.split("/")[-1] for key in kinds)
    assert nodes == {
        "ohlcv_5m": 2, "exchange_metadata": 2, "markprice_5m": 1, "funding": 1,
        "backtest": len(BACKTESTS), "metrics": len(BACKTESTS), "portfolio": len(PORTFOLIOS), "leaderboard": 1,
    }, kinds
    # Every node's label is on the page, once per node; the old labels (`5m`, an exchange, a
    # backtest's name) are not; and the group boxes are there.
    rendered = {label: words.count(label) for label in nodes}
    assert rendered == dict(nodes), f"labels rendered {rendered} at {graph_url}: {' '.join(words)[:2000]}"
    assert not {"5m", "binance", "okx", *BACKTESTS, *PORTFOLIOS} & set(words), " ".join(words)[:2000]
    assert {"market_data", "research"} <= set(words), " ".join(words)[:2000]

    screenshot = artifacts_dir() / "asset_graph.png"
    screenshot.unlink(missing_ok=True)
    shot = chromium(graph_url, ui.tmp / "chromium-shot", "--virtual-time-budget=15000", "--window-size=1600,1000",
                    f"--screenshot={screenshot}")
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]

    # The catalog lists the full keys.
    catalog_url = f"{ui.dev.url}/assets"
    catalog = chromium(catalog_url, ui.tmp / "chromium-catalog", "--virtual-time-budget=15000", "--dump-dom")
    text = " ".join(rendered_text(catalog.stdout))
    for key in ("binance / ohlcv_5m", "okx / exchange_metadata", f"{BACKTEST} / backtest", f"{BACKTEST} / metrics",
                "leaderboard"):
        assert key in text, f"{key!r} not rendered at {catalog_url}: {text[:2000]}"
