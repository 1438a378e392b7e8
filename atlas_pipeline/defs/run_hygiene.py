"""Run hygiene: a run whose process is gone is marked failed, so it never holds the run queue.

Why Atlas does this itself: the CLI, the demo and the benchmarks execute runs *in-process*
(``execute_in_process`` / ``materialize``). Such a run has no run launcher behind it, so nothing
in Dagster watches its process: SIGKILLed (OOM killer, ``kill -9``, a closed terminal's group
kill), it stays STARTED forever. The QueuedRunCoordinator counts every STARTING/STARTED/CANCELING
run against ``max_concurrent_runs``, so enough dead runs stop the queue for good ("13 runs are
currently in progress. Maximum is 10, won't launch more").

Dagster 1.13's own tools cover other cases, not this one (checked in its source):

- run monitoring (``run_monitoring:`` in dagster.yaml) health-checks a STARTED run only through its
  launcher's ``check_run_worker_health``; ``DefaultRunLauncher`` does not support it
  (``supports_check_run_worker_health`` is False), so monitoring gives it only the start and cancel
  timeouts (and ``max_runtime_seconds``, which also ends live runs);
- for runs the daemon launches (``DefaultRunLauncher``: a subprocess of the code server), the code
  server itself fails a run whose process died, within half a second (``_check_for_orphaned_runs``)
  - as long as the code server lives.

So every in-process run Atlas starts carries its process identity as run tags (``process_tags``):
host, pid and the process's start time, so that a pid the kernel has since given to another
process is not mistaken for the run's. ``fail_dead_runs`` finds the not-finished runs tagged with
this host whose process is gone and reports them failed, naming the process. It runs at the start
of every ``atlas`` command that opens the instance, and in the daemon as the ``dead_runs`` sensor
(running by default), so ``atlas ui`` and the production daemon heal the queue with no click.

Cost: one run-storage query for the not-finished runs with this host's tag (indexed by status and
tag; grows with runs in progress, never with partitions), and a ``/proc`` read per such run.

Limits: runs are judged only on the host that started them (a pid means nothing elsewhere); the
host is the hostname plus the pid namespace (``host_name``), i.e. the container in Docker, so a CLI
run in the webserver's container is healed by the next CLI command there, not by the daemon's sensor. Without ``/proc``
(macOS) the start time comes from ``ps``; on Windows nothing is judged.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import dagster as dg
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from atlas_pipeline.defs.sensor_interval import sensor_interval_seconds

HOST_TAG = "atlas/host"
PID_TAG = "atlas/pid"
PROCESS_START_TAG = "atlas/process_start"
PROCESS_TAGS = (HOST_TAG, PID_TAG, PROCESS_START_TAG)

NOT_FINISHED = [
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
"""Statuses a run of a dead process can be stuck in; the last three hold a queue slot."""

DEAD_RUNS_SENSOR = "dead_runs"


def host_name() -> str:
    """Where this process's pids mean something: the hostname and, on Linux, the pid namespace
    (``myhost/4026531836``): a container sharing the host's name (host networking) has its own pids."""
    name = socket.gethostname()
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return name
    return f"{name}/{namespace[5:-1]}" if namespace.startswith("pid:[") else name


def process_start(pid: int) -> str | None:
    """An identity of the process ``pid``'s start, or None when no such (live) process exists.

    Linux: ``<boot id>:<start time in clock ticks since boot>`` from ``/proc`` (a zombie counts as
    gone). Elsewhere: ``ps -o lstart=``. The same pid with another start is another process.
    """
    if pid <= 0:
        return None
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
        if fields[0] in (b"Z", b"X"):  # zombie / dead: exited, not yet reaped by its parent
            return None
        return f"{_boot_id()}:{int(fields[19])}"  # field 22 of stat; fields[0] is field 3
    if sys.platform == "win32":
        return ""  # not judged: unknown start, and os.kill(pid, 0) would terminate the process
    try:
        started = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return started.stdout.strip() or None


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return boot.read().strip()
    except OSError:
        return "boot"


def process_tags() -> dict[str, str]:
    """Run tags naming this process: host, pid, start. Every in-process run Atlas starts has them."""
    pid = os.getpid()
    return {HOST_TAG: host_name(), PID_TAG: str(pid), PROCESS_START_TAG: process_start(pid) or ""}


def process_gone(pid: int, start: str) -> bool:
    """True when the process ``pid`` that started at ``start`` no longer runs on this host."""
    now = process_start(pid)
    if now is None:
        return True
    if now == "" or start == "":
        return False  # start unknown here or when tagged: cannot tell a reused pid, so alive
    return now != start


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    pid: int
    status: str
    """The status it was stuck in."""
    message: str


def dead_run_message(run: dg.DagsterRun, pid: int, host: str, reporter: str) -> str:
    return (
        f"Marked failed by {reporter}: the process that ran it (pid {pid} on {host}) is gone "
        f"(killed, or the machine or container stopped) while the run was {run.status.value}."
    )


def fail_dead_runs(instance: dg.DagsterInstance, reporter: str, host: str | None = None) -> list[DeadRun]:
    """Mark every not-finished run tagged with ``host`` (default: this one) whose process is gone
    as failed (CANCELING ones as canceled), with a message naming the process; return them.

    A run is re-read after its process is found gone, so one that finished just before its
    process exited keeps its real status.
    """
    host = host or host_name()
    dead: list[DeadRun] = []
    records = instance.get_run_records(filters=RunsFilter(statuses=NOT_FINISHED, tags={HOST_TAG: host}))
    for record in records:
        tags = record.dagster_run.tags
        try:
            pid = int(tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if not process_gone(pid, tags.get(PROCESS_START_TAG, "")):
            continue
        run = instance.get_run_by_id(record.dagster_run.run_id)
        if run is None or run.is_finished:
            continue
        message = dead_run_message(run, pid, host, reporter)
        if run.status == DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message)
        else:
            instance.report_run_failed(
                run, message, JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION)
            )
        dead.append(DeadRun(run.run_id, run.job_name, pid, run.status.value, message))
    return dead


def dead_runs_sensor(minimum_interval_seconds: int | None = None) -> dg.SensorDefinition:
    """``fail_dead_runs`` on every tick of the daemon (running by default: the queue heals itself).

    It requests no runs; each tick's skip message says what it marked failed.
    """

    @dg.sensor(
        name=DEAD_RUNS_SENSOR,
        minimum_interval_seconds=minimum_interval_seconds or sensor_interval_seconds(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Marks runs of Atlas processes (atlas fetch, atlas backtest, the demo) that were killed as "
            "failed, so dead runs never hold the run queue. See docs/debugging.md, 'Run hygiene'."
        ),
    )
    def dead_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        dead = fail_dead_runs(context.instance, reporter=f"the {DEAD_RUNS_SENSOR} sensor")
        for run in dead:
            context.log.warning(f"run {run.run_id} ({run.job_name}) marked failed: process {run.pid} is gone")
        if not dead:
            return dg.SkipReason(f"no run of a dead process on {host_name()}")
        return dg.SkipReason(f"marked {len(dead)} run(s) of dead processes failed: {', '.join(r.run_id for r in dead)}")

    return dead_runs


__all__ = [
    "DEAD_RUNS_SENSOR",
    "PROCESS_TAGS",
    "DeadRun",
    "dead_runs_sensor",
    "fail_dead_runs",
    "process_gone",
    "process_start",
    "process_tags",
]
