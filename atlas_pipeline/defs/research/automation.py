"""When research assets rerun by themselves."""

import dagster as dg


def rerun_when_upstream_updated() -> dg.AutomationCondition:
    """Rerun a materialized partition once its inputs were updated, are no longer being written,
    and passed their blocking checks.

    ``eager()`` never fires while any upstream day is missing (every day before a listing, say), so
    it would never rerun a backtest over years of candles; this waits only on what matters. A
    partition nobody has materialized yet is left alone: every market of an exchange is a partition,
    and only the markets a backtest was run on (UI, CLI, demo) are kept current.
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.missing()
    ).with_label("rerun when upstream updated")
