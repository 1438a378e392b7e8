"""When research assets rerun by themselves."""

import dagster as dg


def rerun_when_upstream_updated() -> dg.AutomationCondition:
    """Rerun a materialized partition once its inputs were updated, are no longer being written,
    and passed their blocking checks.

    ``eager()`` never fires while any upstream day is missing (every day before a listing, say), so
    it would never rerun a backtest over years of candles; this waits only on what matters. A
    partition nobody has materialized yet is left alone: every market of an exchange is a partition,
    and only the markets a backtest was run on (UI, CLI, demo) are kept current.

    Updates seen while a partition is missing are dropped (``missing`` resets the memory): whoever
    runs it first reads those candles. Without that, a partition run by hand could be run again when
    its run finishes inside a daemon tick's settle window, where Dagster sees it present and done but
    counts its materialization (the "handled" reset) only on the next tick.
    """
    handled = (
        dg.AutomationCondition.newly_requested()
        | dg.AutomationCondition.newly_updated()
        | dg.AutomationCondition.missing()
        | dg.AutomationCondition.initial_evaluation()
    )
    return (
        dg.AutomationCondition.any_deps_updated().since(handled)
        & ~dg.AutomationCondition.any_deps_in_progress()
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.missing()
    ).with_label("rerun when upstream updated")


RESEARCH_AUTOMATION_SENSOR = "research_reruns"


def research_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the research assets' conditions; running by default so reruns need no clicks.

    (Dagster's implicit default_automation_condition_sensor starts stopped.)
    """
    return dg.AutomationConditionSensorDefinition(
        RESEARCH_AUTOMATION_SENSOR,
        target=dg.AssetSelection.groups("research"),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reruns backtests, metrics and the leaderboard when their candles change.",
    )
