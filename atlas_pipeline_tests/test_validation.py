"""Each blocking check fails on its own kind of corrupt candles, names the day, and passes clean data."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from atlas_pipeline.market_data.candles import DAY_MS, day_start_ms
from atlas_pipeline.market_data.validation import BLOCKING_CHECKS, missing_candles, validate_candles
from atlas_pipeline_tests.support import between, shared_candles, needs_shared_candles

DAY = dt.date(2018, 1, 15)
START, END = day_start_ms(DAY), day_start_ms(DAY) + 3 * DAY_MS

pytestmark = needs_shared_candles


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    return between(shared_candles("binance_ETH-BTC_5m"), DAY, DAY + dt.timedelta(days=3))


def outcomes(frame: pd.DataFrame) -> dict:
    return {o.name: o for o in validate_candles(frame, "5m", START, END)}


def test_real_candles_pass_every_check(clean: pd.DataFrame) -> None:
    result = outcomes(clean)
    assert list(result) == list(BLOCKING_CHECKS)
    assert all(o.passed for o in result.values())


def _row_on_day_two(frame: pd.DataFrame) -> int:
    return int(np.flatnonzero(frame["timestamp"].to_numpy() >= START + DAY_MS)[10])


# Whole-column problems (a dtype, a column too many or too few) belong to no particular day.
WHOLE_FRAME = [
    lambda f, i: f.assign(volume=f["volume"].astype("int64")),
    lambda f, i: f.assign(extra=1.0),
    lambda f, i: f.drop(columns=["low"]),
]
CORRUPTIONS = {
    "candle_schema": [
        lambda f, i: f.assign(volume=f["volume"].where(f.index != i, -1.0)),
        lambda f, i: f.assign(open=f["open"].where(f.index != i, 0.0)),
        lambda f, i: f.assign(close=f["close"].where(f.index != i, np.nan)),
        *WHOLE_FRAME,
    ],
    "ohlc_sanity": [
        lambda f, i: f.assign(high=f["high"].where(f.index != i, f["low"] * 0.9)),
        lambda f, i: f.assign(low=f["low"].where(f.index != i, f["high"] * 1.1)),
        lambda f, i: f.assign(high=f["high"].where(f.index != i, f["open"] * 0.5)),
    ],
    "unique_timestamps": [lambda f, i: pd.concat([f, f.iloc[[i]]]).sort_values("timestamp", kind="stable")],
    "sorted_timestamps": [lambda f, i: f.iloc[[*range(i), i + 1, i, *range(i + 2, len(f))]]],
    "timeframe_grid": [lambda f, i: f.assign(timestamp=f["timestamp"].where(f.index != i, f["timestamp"] + 1000))],
    "inside_partition": [lambda f, i: f.assign(timestamp=f["timestamp"] - (f.index == i) * 3 * DAY_MS)],
}


@pytest.mark.parametrize(
    ("check", "corrupt"),
    [(check, corrupt) for check, corruptions in CORRUPTIONS.items() for corrupt in corruptions],
)
def test_each_check_fails_on_its_kind_of_corruption(clean: pd.DataFrame, check: str, corrupt) -> None:
    bad = corrupt(clean.copy(), _row_on_day_two(clean))
    result = outcomes(bad)
    assert not result[check].passed, result[check]
    assert result[check].failures >= 1 and result[check].examples
    if corrupt not in WHOLE_FRAME:
        # the corrupted row is on the second day; inside_partition moved it three days earlier
        expected_day = DAY - dt.timedelta(days=2) if check == "inside_partition" else DAY + dt.timedelta(days=1)
        assert expected_day in result[check].failing_days, result[check].describe()
    assert check in result[check].describe()


def test_a_corruption_fails_only_its_own_check(clean: pd.DataFrame) -> None:
    bad = CORRUPTIONS["ohlc_sanity"][0](clean.copy(), _row_on_day_two(clean))
    failed = {name for name, o in outcomes(bad).items() if not o.passed}
    assert failed == {"ohlc_sanity"}


def test_empty_frame_passes() -> None:
    from atlas_pipeline.market_data.candles import empty_candles

    assert all(o.passed for o in validate_candles(empty_candles(), "1h", START, END))


def test_missing_candles_counts_only_after_listing_and_before_now(clean: pd.DataFrame) -> None:
    days = [DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)]
    holes = clean.drop(index=[5, 6, 7])
    listed = int(clean["timestamp"].iloc[0])
    far_future = day_start_ms(DAY) + 100 * DAY_MS
    assert missing_candles(holes, "5m", days, first_candle_ms=listed, closed_before_ms=far_future) == {
        days[0]: 0,  # before the listing: nothing expected
        days[1]: 3,
        days[2]: 0,
    }
    midday = day_start_ms(DAY) + 12 * 3_600_000
    partial = missing_candles(clean[clean["timestamp"] < midday - 600_000], "5m", [DAY], first_candle_ms=listed, closed_before_ms=midday)
    assert partial == {DAY: 2}  # the two closed candles before midday that are absent
    assert missing_candles(clean, "5m", [DAY], first_candle_ms=None, closed_before_ms=far_future) == {DAY: 0}
