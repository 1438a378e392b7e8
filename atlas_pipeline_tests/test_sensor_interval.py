"""``ATLAS_SENSOR_INTERVAL_SECONDS`` sets every Atlas sensor's tick interval; a bad value names the variable."""

from __future__ import annotations

import pytest

from atlas_pipeline.config.paths import REPO_ROOT
from atlas_pipeline.defs.definitions import build_definitions
from atlas_pipeline.defs.sensor_interval import SENSOR_INTERVAL_ENV


def intervals(tmp_path) -> dict[str, int | None]:
    defs = build_definitions(REPO_ROOT / "config", store_root=str(tmp_path))
    return {sensor.name: sensor.minimum_interval_seconds for sensor in defs.sensors}


def test_every_sensor_ticks_at_the_configured_interval(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(SENSOR_INTERVAL_ENV, raising=False)
    default = intervals(tmp_path)
    assert {"research_reruns", "dead_runs", "ohlcv_binance_backfills"} <= set(default)
    assert set(default.values()) == {30}, default
    monkeypatch.setenv(SENSOR_INTERVAL_ENV, "7")
    assert set(intervals(tmp_path).values()) == {7}


@pytest.mark.parametrize("value", ["0", "5s", "-3"])
def test_a_bad_interval_names_the_variable(tmp_path, monkeypatch, value: str) -> None:
    monkeypatch.setenv(SENSOR_INTERVAL_ENV, value)
    with pytest.raises(ValueError, match=f"{SENSOR_INTERVAL_ENV}='{value}'"):
        intervals(tmp_path)
