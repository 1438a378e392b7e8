"""Reading in-process run results the way a user needs them: one line saying what failed."""

from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class LaunchedRun:
    """An in-process run and what it was for (a market, a backtest and market, ...)."""

    label: str
    result: dg.ExecuteInProcessResult

    @property
    def success(self) -> bool:
        return self.result.success

    def failure_reason(self) -> str:
        return failure_reason(self.result)

    def materialized(self, key: dg.AssetKey) -> bool:
        """Whether this run itself materialized ``key`` (stored results may be an older run's)."""
        return any(event.asset_key == key for event in self.result.get_asset_materialization_events())

    def raise_if_interrupted(self) -> None:
        """Ctrl-C (SIGINT) inside a run reaches the caller as a failed step; make it what it was,
        so the CLI exits 130 ("atlas: interrupted") instead of reporting a failure."""
        for event in self.result.all_events:
            error = event.step_failure_data.error if event.is_step_failure and event.step_failure_data else None
            while error is not None:
                if error.cls_name == "DagsterExecutionInterruptedError":
                    raise KeyboardInterrupt(f"{self.label}: interrupted")
                error = error.cause


def failure_reason(result: dg.ExecuteInProcessResult) -> str:
    """The first step failure's message on one line (the user's error, not Dagster's wrapper;
    for a ``dg.Failure`` its description, without the exception's class path)."""
    for event in result.all_events:
        user_failure = event.step_failure_data.user_failure_data if event.is_step_failure and event.step_failure_data else None
        if user_failure is not None and user_failure.description:
            return " ".join(user_failure.description.split())
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            message = error.message.strip()
            if error.cause is not None and "Error occurred while executing" in message:
                message = error.cause.message.strip()
            return " ".join(message.split())
    return "run failed (see the run's logs in the Dagster UI)"
