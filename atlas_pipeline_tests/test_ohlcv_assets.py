"""The OHLCV asset end to end: real ccxt -> emulator serving real Binance candles -> Dagster -> store."""

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from atlas_pipeline import CandleStore
from atlas_pipeline.defs.market_data.launch import partition_range_tags
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.market_data.emulator import FaultRule, FileCandleSource
from atlas_pipeline.market_data.validation import BLOCKING_CHECKS, GAPS_CHECK
from atlas_pipeline_tests.support import (
    needs_shared_candles,
    SHARED_CANDLES,
    assert_frames_equal,
    between,
    day_counts,
    expected_missing,
    run_range,
    shared_candles,
    write_exchange_config,
)

KEY = dg.AssetKey(["binance", "ohlcv_5m"])
D = dt.date

pytestmark = needs_shared_candles


class RecordingSource(FileCandleSource):
    """The real file source, remembering the start of every window the emulator reads."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.windows: list[int] = []

    def candles(self, symbol, timeframe, start_ms, end_ms):  # type: ignore[override]
        self.windows.append(int(start_ms))
        return super().candles(symbol, timeframe, start_ms, end_ms)


@pytest.fixture
def source() -> RecordingSource:
    return RecordingSource(SHARED_CANDLES)


@pytest.fixture
def emulator(emulator_factory, source):
    return emulator_factory(source)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def config_dir(tmp_path: Path, emulator) -> Path:
    return write_exchange_config(tmp_path / "config", emulator.base_url)


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


def _check_evaluations(run) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in run.result.get_asset_check_evaluations()}


def test_asset_graph_from_config(config_dir: Path, store_root: Path) -> None:
    defs = build_definitions(config_dir, store_root=str(store_root))
    asset = defs.resolve_assets_def(KEY)
    partitions = asset.partitions_def
    assert isinstance(partitions, dg.MultiPartitionsDefinition)
    dims = {dim.name: dim.partitions_def for dim in partitions.partitions_defs}
    assert dims["date"].start.date() == D(2018, 1, 1)
    assert dims["symbol"].get_partition_keys() == ["ETH-BTC", "ADA-BTC"]
    assert asset.backfill_policy == dg.BackfillPolicy.single_run()
    checks = {spec.name: spec for spec in asset.check_specs}
    assert set(checks) == {*BLOCKING_CHECKS, GAPS_CHECK}
    assert all(checks[name].blocking for name in BLOCKING_CHECKS) and not checks[GAPS_CHECK].blocking


def test_range_lands_day_by_day_with_exactly_the_served_candles(
    config_dir: Path, store_root: Path, instance, emulator
) -> None:
    source = shared_candles("binance_ETH-BTC_5m")  # 2018-01-10 04:55 .. 2018-01-30 04:50
    start, end = D(2018, 1, 8), D(2018, 2, 1)
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], start, end)
    assert run.success, run.failure_reason()

    store = CandleStore(str(store_root))
    assert_frames_equal(store.read("binance", "ETH/BTC", "5m", start, end), source)

    coverage = store.coverage("binance", "ETH/BTC", "5m", start, end).set_index("day")
    assert list(coverage.index) == [start + dt.timedelta(days=i) for i in range((end - start).days)]
    per_day = day_counts(source)
    assert coverage["rows"].to_dict() == {day: per_day.get(day, 0) for day in coverage.index}
    assert coverage.loc[D(2018, 1, 8), "rows"] == 0 and coverage.loc[D(2018, 1, 31), "rows"] == 0
    assert coverage["complete"].all()

    # one materialization per day, each with that day's own metadata
    materialized = instance.get_materialized_partitions(KEY)
    assert len(materialized) == 24
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=KEY, asset_partitions=["2018-01-15|ETH-BTC"]), limit=1
    ).records
    metadata = record.asset_materialization.metadata
    assert metadata["candles"].value == per_day[D(2018, 1, 15)] == 288
    assert metadata["missing_candles"].value == 0

    checks = _check_evaluations(run)
    assert all(checks[name].passed for name in BLOCKING_CHECKS)
    # the file ends 2018-01-30 04:50: the rest of that day is missing at the exchange
    assert checks[GAPS_CHECK].metadata["missing_candles"].value == expected_missing(source, "5m", start, end)
    # first candle + pages + the empty answer that says the rest of the range has no candles
    assert emulator.stats["requests"]["klines"] == 1 + -(-len(source) // 1000) + 1


def test_real_outages_are_counted_as_missing_candles_with_a_warning(
    config_dir: Path, store_root: Path, instance
) -> None:
    source = shared_candles("binance_ADA-BTC_5m")
    start, end = D(2018, 1, 11), D(2018, 1, 29)
    [run] = run_range(config_dir, store_root, instance, ["ADA/BTC"], start, end)
    assert run.success, run.failure_reason()
    gaps = _check_evaluations(run)[GAPS_CHECK]
    assert not gaps.passed and gaps.severity == dg.AssetCheckSeverity.WARN
    assert gaps.metadata["missing_candles"].value == expected_missing(source, "5m", start, end) > 0
    assert_frames_equal(CandleStore(str(store_root)).read("binance", "ADA/BTC", "5m", start, end), between(source, start, end))


def test_partial_day_fetches_only_candles_after_the_last_stored_one(
    config_dir: Path, store_root: Path, instance, source: RecordingSource
) -> None:
    day = D(2018, 1, 15)
    full_day = between(shared_candles("binance_ETH-BTC_5m"), day, day + dt.timedelta(days=1))
    store = CandleStore(str(store_root))
    store.write_day("binance", "ETH/BTC", "5m", day, full_day.iloc[:100].reset_index(drop=True), complete=False)
    store.set_first_candle("binance", "ETH/BTC", "5m", int(shared_candles("binance_ETH-BTC_5m")["timestamp"].iloc[0]))

    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], day, day + dt.timedelta(days=1))
    assert run.success, run.failure_reason()
    assert source.windows == [int(full_day["timestamp"].iloc[100])]  # one request, from candle 101
    assert_frames_equal(store.read_day("binance", "ETH/BTC", "5m", day), full_day)
    assert store.day_status("binance", "ETH/BTC", "5m", day).complete

    source.windows.clear()
    [again] = run_range(config_dir, store_root, instance, ["ETH/BTC"], day, day + dt.timedelta(days=1))
    assert again.success and source.windows == []  # a complete day is kept, yet materialized
    assert len(again.result.get_asset_materialization_events()) == 1

    [refresh] = run_range(config_dir, store_root, instance, ["ETH/BTC"], day, day + dt.timedelta(days=1), full_refresh=True)
    assert refresh.success and source.windows == [int(full_day["timestamp"].iloc[0])]
    assert_frames_equal(store.read_day("binance", "ETH/BTC", "5m", day), full_day)


TRANSIENT_FAULTS = [
    FaultRule(kind="rate_limit", endpoint="klines", times=2, retry_after=0.2),
    FaultRule(kind="rate_limit", endpoint="klines", times=1, status=418, retry_after=0.1),
    FaultRule(kind="server_error", endpoint="klines", times=2, status=502),
    FaultRule(kind="server_error", endpoint="exchangeInfo", times=1),
    FaultRule(kind="timeout", endpoint="klines", times=1, delay=2.5, after=1),
    FaultRule(kind="truncated", endpoint="klines", times=2),
    FaultRule(kind="malformed", endpoint="klines", times=2, after=2),
    FaultRule(kind="duplicates", endpoint="klines"),
    FaultRule(kind="out_of_order", endpoint="klines"),
]


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS, ids=lambda f: f"{f.kind}-{f.endpoint}-{f.status or ''}")
def test_emulator_faults_are_survived_with_exactly_the_right_candles(
    tmp_path: Path, emulator, store_root: Path, instance, fault: FaultRule
) -> None:
    config_dir = write_exchange_config(tmp_path / "config", emulator.base_url, request_limit=300, timeout_seconds=1)
    emulator.set_faults([fault])
    start, end = D(2018, 1, 12), D(2018, 1, 15)
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], start, end)
    assert run.success, run.failure_reason()
    assert emulator.stats["faults_fired"].get(fault.kind, 0) >= 1
    stored = CandleStore(str(store_root)).read("binance", "ETH/BTC", "5m", start, end)
    assert_frames_equal(stored, between(shared_candles("binance_ETH-BTC_5m"), start, end))
    if fault.kind in {"rate_limit", "server_error", "timeout", "truncated", "malformed"}:
        [materialization] = run.result.get_asset_materialization_events()[:1]
        assert materialization.materialization.metadata["retries"].value >= 1


def _snapshot(store_root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store_root)): p.read_bytes() for p in sorted(store_root.rglob("*.parquet"))}


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        (FaultRule(kind="server_error", endpoint="klines", after=1), ["ETH/BTC 5m", "ExchangeNotAvailable", "attempts"]),
        (FaultRule(kind="rate_limit", endpoint="klines", after=1, retry_after=0), ["ETH/BTC 5m", "DDoSProtection"]),
        (FaultRule(kind="malformed", endpoint="klines", after=1), ["ETH/BTC 5m", "attempts"]),
    ],
    ids=["server_error", "rate_limit", "malformed"],
)
def test_persistent_faults_fail_clearly_and_leave_stored_days_untouched(
    tmp_path: Path, emulator, store_root: Path, instance, fault: FaultRule, words: list[str]
) -> None:
    config_dir = write_exchange_config(tmp_path / "config", emulator.base_url, request_limit=300, max_retries=1)
    start, end = D(2018, 1, 12), D(2018, 1, 15)
    [good] = run_range(config_dir, store_root, instance, ["ETH/BTC"], start, end)
    assert good.success
    before = _snapshot(store_root)

    emulator.set_faults([fault])
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], start, end, full_refresh=True)
    assert not run.success
    reason = run.failure_reason()
    assert all(word in reason for word in words), reason
    assert "\n" not in reason
    assert _snapshot(store_root) == before
    assert not list(store_root.rglob(".*.parquet*")), "temp files left behind"


def _downstream(partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=["test", "uses_candles"],
        deps=[KEY],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def uses_candles() -> None:
        return None

    return uses_candles


@pytest.mark.parametrize(("fault_kind", "check"), [("bad_ohlc", "ohlc_sanity"), ("off_grid", "timeframe_grid")])
def test_blocking_check_failure_stops_downstream_and_writes_nothing(
    config_dir: Path, store_root: Path, instance, emulator, fault_kind: str, check: str
) -> None:
    start, end = D(2018, 1, 12), D(2018, 1, 14)
    [good] = run_range(config_dir, store_root, instance, ["ETH/BTC"], start, end)
    assert good.success
    before = _snapshot(store_root)

    emulator.set_faults([FaultRule(kind=fault_kind, endpoint="klines")])
    defs = build_definitions(config_dir, store_root=str(store_root))
    ohlcv = defs.resolve_assets_def(KEY)
    result = dg.materialize(
        [ohlcv, _downstream(ohlcv.partitions_def)],
        instance=instance,
        run_config={"ops": {"binance__ohlcv_5m": {"config": {"full_refresh": True}}}},
        tags=partition_range_tags("ETH/BTC", start, end - dt.timedelta(days=1)),
        raise_on_error=False,
    )
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations[check].passed and evaluations[check].severity == dg.AssetCheckSeverity.ERROR
    assert "ETH/BTC" in evaluations[check].metadata["details"].value
    assert result.get_asset_materialization_events() == []
    assert not instance.get_materialized_partitions(dg.AssetKey(["test", "uses_candles"]))
    assert _snapshot(store_root) == before


def test_market_the_exchange_does_not_list_fails_with_its_name(
    tmp_path: Path, emulator, store_root: Path, instance
) -> None:
    config_dir = write_exchange_config(tmp_path / "config", emulator.base_url, markets=["DOGE/BTC"])
    [run] = run_range(config_dir, store_root, instance, ["DOGE/BTC"], D(2018, 1, 12), D(2018, 1, 13))
    assert not run.success
    assert "does not list market 'DOGE/BTC'" in run.failure_reason()
    assert not store_root.exists() or not list(store_root.rglob("*.parquet"))


def test_unreachable_exchange_fails_with_the_request_named(tmp_path: Path, store_root: Path, instance) -> None:
    config_dir = write_exchange_config(tmp_path / "config", "http://127.0.0.1:9", max_retries=0)
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 12), D(2018, 1, 13))
    assert not run.success
    reason = run.failure_reason()
    assert "binance load markets" in reason and "attempts" in reason, reason


def test_days_before_listing_are_stored_empty_without_requests(
    config_dir: Path, store_root: Path, instance, source: RecordingSource
) -> None:
    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], D(2018, 1, 1), D(2018, 1, 10))
    assert run.success, run.failure_reason()
    assert len(source.windows) == 1  # only the first-candle lookup
    coverage = CandleStore(str(store_root)).coverage("binance", "ETH/BTC", "5m")
    assert len(coverage) == 9 and (coverage["rows"] == 0).all() and coverage["complete"].all()
    assert _check_evaluations(run)[GAPS_CHECK].passed  # not listed yet is not a gap


def test_frames_for_reference_are_what_the_file_says() -> None:
    """Guards the comparisons above: the shared file really is 5m candles in int ms."""
    frame = shared_candles("binance_ETH-BTC_5m")
    assert len(frame) == 5760 and frame["timestamp"].diff().dropna().eq(300_000).all()
    assert pd.Timestamp(int(frame["timestamp"].iloc[0]), unit="ms") == pd.Timestamp("2018-01-10 04:55")
