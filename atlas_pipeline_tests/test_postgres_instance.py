"""The production instance (``deployment/dagster.yaml``) on a real PostgreSQL server.

The module starts its own server (``postgres_server.py``: Debian's ``postgresql`` binaries, a free
loopback port, a temporary directory) and stops it at teardown. Each test gets a fresh
database, loads the shipped ``dagster.yaml`` verbatim with the ``DAGSTER_PG_*`` variables pointed at
it, and runs real Dagster work on it: a single-run OHLCV backfill through ``materialize_ohlcv_range``
against the emulator serving real Binance candles.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from atlas_pipeline import CandleStore
from atlas_pipeline.market_data.candles import day_start_ms
from atlas_pipeline.market_data.emulator import FileCandleSource
from atlas_pipeline_tests.postgres_server import PG_USER, PostgresServer, postgres_server, unavailable_reason
from atlas_pipeline_tests.support import (
    SHARED_CANDLES,
    assert_frames_equal,
    between,
    needs_shared_candles,
    run_range,
    shared_candles,
    write_exchange_config,
)

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT_YAML = REPO / "deployment" / "dagster.yaml"
KEY = dg.AssetKey(["binance", "ohlcv_5m"])
D = dt.date

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1:<free port>, data and socket in a temporary directory, trust auth."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def instance(postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """The shipped ``deployment/dagster.yaml`` as is, on a fresh database of the test server."""
    db = postgres.create_database()
    monkeypatch.setenv("DAGSTER_PG_USERNAME", PG_USER)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust-auth")
    monkeypatch.setenv("DAGSTER_PG_HOST", "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_DB", db)
    monkeypatch.setenv("DAGSTER_PG_PORT", str(postgres.port))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOYMENT_YAML, home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.pg_url = postgres.url(db)  # type: ignore[attr-defined]  # for direct queries
        yield instance


def _count(url: str, sql: str, **params: object) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())
    finally:
        engine.dispose()


def test_the_shipped_instance_config_is_postgres_with_a_queued_coordinator(instance: dg.DagsterInstance) -> None:
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    assert instance.run_coordinator.get_run_queue_config().max_concurrent_runs == 4

    @dg.asset
    def small() -> int:
        return 1

    result = dg.materialize([small], instance=instance)
    assert result.success
    assert instance.get_run_by_id(result.run_id).is_success
    rows = _count(
        instance.pg_url,  # type: ignore[attr-defined]
        "SELECT count(*) FROM event_logs WHERE run_id = :run AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        run=result.run_id,
    )
    assert rows == 1


@needs_shared_candles
def test_single_run_backfill_is_recorded_in_postgres(
    instance: dg.DagsterInstance, emulator_factory, tmp_path: Path
) -> None:
    emulator = emulator_factory(FileCandleSource(SHARED_CANDLES))
    config_dir = write_exchange_config(tmp_path / "config", emulator.base_url)
    store_root = tmp_path / "store"
    start, end = D(2018, 1, 12), D(2018, 1, 19)
    days = [start + dt.timedelta(days=i) for i in range((end - start).days)]

    [run] = run_range(config_dir, store_root, instance, ["ETH/BTC"], start, end)
    assert run.success, run.failure_reason()
    run_id = run.result.run_id

    # through the instance: the run and one materialization per day partition
    assert instance.get_run_by_id(run_id).is_success
    expected = {f"{day.isoformat()}|ETH-BTC" for day in days}
    assert instance.get_materialized_partitions(KEY) == expected
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=KEY), limit=100).records
    assert sorted(r.partition_key for r in records) == sorted(expected)

    # and directly in PostgreSQL's event log and run tables
    url = instance.pg_url  # type: ignore[attr-defined]
    materializations = _count(
        url,
        "SELECT count(DISTINCT partition) FROM event_logs "
        "WHERE run_id = :run AND dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = :key",
        run=run_id,
        key=KEY.to_string(),
    )
    assert materializations == len(days) == _count(
        url, "SELECT count(*) FROM event_logs WHERE run_id = :run AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        run=run_id,
    )
    assert _count(url, "SELECT count(*) FROM runs WHERE run_id = :run AND status = 'SUCCESS'", run=run_id) == 1

    stored = CandleStore(str(store_root)).read("binance", "ETH/BTC", "5m", start, end)
    assert_frames_equal(stored, between(shared_candles("binance_ETH-BTC_5m"), start, end))


def test_batched_events_keep_each_partitions_metadata(
    instance: dg.DagsterInstance, emulator_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """Production sets ``DAGSTER_EVENT_BATCH_SIZE`` (Dockerfile): dagster-postgres then stores a range
    run's materializations in one INSERT per batch. Each partition keeps its own metadata (Atlas
    adds it per partition), and a run whose middle market fails still records the other two."""
    from atlas_pipeline.defs.definitions import build_definitions
    from atlas_pipeline_tests.test_multi_market_runs import MARKETS, BadMarketSource

    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    monkeypatch.setenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    key = dg.AssetKey(["binance", "ohlcv_1h"])
    start, end = D(2024, 3, 1), D(2024, 3, 11)
    days = [start + dt.timedelta(days=i) for i in range((end - start).days)]
    source = BadMarketSource(bad=None)
    emulator = emulator_factory(source)
    config = write_exchange_config(tmp_path / "config", emulator.base_url, markets=MARKETS, timeframes=["1h"])
    job = build_definitions(config, store_root=str(tmp_path / "store")).resolve_job_def("ohlcv_binance")

    def run(first: str, last: str) -> dg.ExecuteInProcessResult:
        tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
        return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)

    good = run(f"{start}|AAA-USDT", f"{days[-1]}|AAA-USDT")
    assert good.success
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=100).records
    assert sorted(r.partition_key for r in records) == [f"{day}|AAA-USDT" for day in days]
    for record in records:
        day = D.fromisoformat(record.partition_key.split("|")[0])
        metadata = record.asset_materialization.metadata
        expected = source.candles("AAA/USDT", "1h", day_start_ms(day), day_start_ms(day + dt.timedelta(days=1)))
        assert metadata["candles"].value == len(expected) == 24
        assert metadata["first_candle"].value.startswith(day.isoformat())
        assert metadata["days"].value == len(days)  # and the run's own metadata
    assert "Exception while storing event batch" not in capfd.readouterr().err  # no fallback to single inserts

    source.bad = "BBB/USDT"
    partial = run(f"{start}|AAA-USDT", f"{days[-1]}|CCC-USDT")
    assert not partial.success
    assert instance.get_materialized_partitions(key) == {f"{day}|{m}" for day in days for m in ("AAA-USDT", "CCC-USDT")}
