"""The daily schedule asks for yesterday's day of every market; the intraday one for today's."""

import datetime as dt
from pathlib import Path

import dagster as dg
import yaml

from atlas_pipeline.defs.definitions import build_definitions


def _defs(tmp_path: Path) -> dg.Definitions:
    config = {"exchanges": {"binance": {"timeframes": ["1h", "1d"], "markets": ["BTC/USDT", "ETH/USDT"]}}}
    (tmp_path / "exchanges.yaml").write_text(yaml.safe_dump(config))
    return build_definitions(tmp_path, store_root=str(tmp_path / "store"))


def _evaluate(defs: dg.Definitions, name: str, when: dt.datetime) -> list[dg.RunRequest]:
    schedule = defs.resolve_schedule_def(name)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
        )
        result = schedule.evaluate_tick(context)
    assert result.skip_message is None
    return list(result.run_requests or [])


def test_daily_schedule_requests_yesterday_for_every_market(tmp_path: Path) -> None:
    defs = _defs(tmp_path)
    schedule = defs.resolve_schedule_def("ohlcv_binance_daily")
    assert schedule.cron_schedule == "15 0 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "ohlcv_binance"
    requests = _evaluate(defs, "ohlcv_binance_daily", dt.datetime(2024, 3, 1, 0, 15, tzinfo=dt.UTC))
    keys = sorted(str(request.partition_key) for request in requests)
    assert keys == ["2024-02-29|BTC-USDT", "2024-02-29|ETH-USDT"]
    assert len({request.run_key for request in requests}) == 2


def test_daily_job_covers_every_timeframe(tmp_path: Path) -> None:
    job = _defs(tmp_path).resolve_job_def("ohlcv_binance")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert keys == {"ohlcv/binance/1h", "ohlcv/binance/1d"}


def test_intraday_schedule_requests_today_and_is_off_by_default(tmp_path: Path) -> None:
    defs = _defs(tmp_path)
    assert defs.resolve_schedule_def("ohlcv_binance_intraday").default_status == dg.DefaultScheduleStatus.STOPPED
    requests = _evaluate(defs, "ohlcv_binance_intraday", dt.datetime(2024, 3, 1, 13, 5, tzinfo=dt.UTC))
    assert sorted(str(request.partition_key) for request in requests) == ["2024-03-01|BTC-USDT", "2024-03-01|ETH-USDT"]
