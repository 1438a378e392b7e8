"""Asset checks of OHLCV assets: blocking Pandera checks and a non-blocking gaps warning.

A range run records one evaluation per check for its whole range, so each result names the
failing days (and markets) in its metadata; ``failed_markets`` lists the failing markets'
partition keys (a run over many markets fails only for those), and ``markets_not_checked`` the
markets whose candles never arrived (a request failed, or the run stopped before them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import dagster as dg

from atlas_pipeline.market_data.candles import symbol_key
from atlas_pipeline.market_data.ingest import IngestReport
from atlas_pipeline.market_data.validation import BLOCKING_CHECKS, GAPS_CHECK

CHECK_DESCRIPTIONS = {
    "candle_schema": "Columns and dtypes of the candle convention; prices > 0, volume >= 0.",
    "ohlc_sanity": "high >= max(open, close, low) and low <= min(open, close).",
    "unique_timestamps": "One candle per open time.",
    "sorted_timestamps": "Candles sorted by open time.",
    "timeframe_grid": "Open times are multiples of the timeframe.",
    "inside_partition": "Every candle's open time lies inside the partition's UTC day.",
    GAPS_CHECK: "Warns with the count of candles missing after the market's first candle (exchange outages).",
}


def ohlcv_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(name, asset=asset_key, blocking=True, description=CHECK_DESCRIPTIONS[name])
        for name in BLOCKING_CHECKS
    ]
    specs.append(dg.AssetCheckSpec(GAPS_CHECK, asset=asset_key, blocking=False, description=CHECK_DESCRIPTIONS[GAPS_CHECK]))
    return specs


def check_results(
    asset_key: dg.AssetKey,
    reports: list[IngestReport],
    not_attempted: Sequence[str] = (),
    blocking: Sequence[str] = BLOCKING_CHECKS,
    gaps_check: str = GAPS_CHECK,
) -> Iterator[dg.AssetCheckResult]:
    """One result per check over every market of the run; ``not_attempted``: markets the run
    stopped before (named, with those whose request failed, as not checked). ``blocking`` names
    the reports' checks in order and ``gaps_check`` the warning of their missing rows (candles;
    funding events: ``market_data/funding.py``)."""
    unchecked = [f"{r.symbol} (request failed)" for r in reports if r.error is not None and not r.checks]
    unchecked += [f"{symbol} (not attempted)" for symbol in not_attempted]
    for index, name in enumerate(blocking):
        outcomes = [(report, report.checks[index]) for report in reports if report.checks]
        failed = [(report, outcome) for report, outcome in outcomes if not outcome.passed]
        yield dg.AssetCheckResult(
            asset_key=asset_key,
            check_name=name,
            passed=not failed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "failing_rows": sum(outcome.failures for _, outcome in failed),
                "failing_days": sum(len(outcome.failing_days) for _, outcome in failed),
                "failed_markets": dg.MetadataValue.json([symbol_key(report.symbol) for report, _ in failed]),
                "details": dg.MetadataValue.md(
                    "\n".join(f"- {report.symbol}: {outcome.describe()}" for report, outcome in failed) or "passed"
                ),
                "markets_not_checked": ", ".join(unchecked),
            },
        )
    gaps = [(report, day) for report in reports for day in report.stored_days if day.missing]
    yield dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=gaps_check,
        passed=not gaps,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "missing_candles" if gaps_check == GAPS_CHECK else "missing_events": sum(day.missing for _, day in gaps),
            "days_with_gaps": len(gaps),
            "worst_days": dg.MetadataValue.md(
                "\n".join(
                    f"- {report.symbol} {day.day}: {day.missing} missing"
                    for report, day in sorted(gaps, key=lambda item: -item[1].missing)[:10]
                )
                or "none"
            ),
        },
    )
