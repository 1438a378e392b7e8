"""Progress bars with rate and ETA for the CLI, fed by ``atlas_pipeline.progress`` (rich).

One bar per reported piece of work (a market's fetch, a sweep), drawn on stderr only when it is a
terminal: in logs and pipes the Dagster logger's lines already say the same, and a bar's redraws
would be noise. A finished bar stays on screen as that piece's summary.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from atlas_pipeline import progress

if TYPE_CHECKING:
    from rich.progress import Progress

_RICH_TERMINAL_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
"""Variables with which rich may treat a pipe as a terminal (then rich itself decides)."""


@contextlib.contextmanager
def progress_bars(force: bool | None = None) -> Iterator["Progress | None"]:
    """Bars for everything reported while inside; nothing when stderr is not a terminal.

    ``force`` draws (True) or suppresses (False) the bars regardless of the terminal (tests).
    rich is imported only when bars may be drawn: in pipes and logs (``atlas fetch`` of an
    up-to-date range from a script) it would be 0.1 s of start-up for nothing.
    """
    if force is False or (force is None and not sys.stderr.isatty() and not any(map(os.environ.get, _RICH_TERMINAL_ENV))):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    console = Console(file=sys.stderr, force_terminal=force)
    if force is False or (force is None and not console.is_terminal):
        yield None
        return
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _rate_column(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,  # stderr written meanwhile (Dagster's log lines) prints above the bars
        redirect_stdout=False,  # results stay on stdout, for pipes
    )
    tasks: dict[str, tuple[TaskID, float, float]] = {}  # label -> (task, done, total)

    def update(label: str, done: float, total: float, unit: str) -> None:
        task, shown, shown_total = tasks.get(label, (None, 0.0, total))
        if task is None or done < shown or total != shown_total:  # new, or the label's next piece of work
            task = bars.add_task(label, total=total, unit=unit)
        tasks[label] = (task, done, total)
        bars.update(task, completed=min(done, total))

    with bars, progress.listening(update):
        yield bars


def _rate_column():
    """A column of units per second, e.g. ``41.2 days/s``."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            # rich's own estimate, else the average so far (work reported in one burst has no estimate)
            speed = task.finished_speed or task.speed or (task.completed / task.elapsed if task.elapsed else None)
            return Text(f"{speed:,.1f} {task.fields.get('unit', '')}/s" if speed else "", style="progress.data.speed")

    return RateColumn()
