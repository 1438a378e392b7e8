"""``run_supervised`` (what ``atlas ui`` runs ``dagster dev`` under) against a real process tree
that ignores SIGINT and SIGTERM, as ``dagster dev`` started from a script does: a stop signal to
the supervisor, or to its process group, leaves no process of the tree within 10 s.

The real ``atlas ui`` is stopped the same way in ``test_daily_use.py``; this tree is the worst
case at a fraction of the cost (a child and two grandchildren, one in a session of its own).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

STOP_WITHIN_SECONDS = 10

STUBBORN = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    folder = sys.argv[1]
    if len(sys.argv) == 2:  # the child: start two grandchildren, one escaping to its own session
        subprocess.Popen([sys.executable, __file__, folder, "grandchild"])
        subprocess.Popen([sys.executable, __file__, folder, "escaped"], start_new_session=True)
    open(os.path.join(folder, str(os.getpid())), "w").close()
    while True:
        time.sleep(0.2)
    """
)

SUPERVISOR = "import sys; from atlas_pipeline.supervise import run_supervised; sys.exit(run_supervised(sys.argv[1:]))"


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize(("target", "stop"), [("group", signal.SIGTERM), ("process", signal.SIGINT)])
def test_a_stop_signal_leaves_no_process_of_the_tree(tmp_path: Path, target: str, stop: signal.Signals) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    pids = tmp_path / "pids"
    pids.mkdir()
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, sys.executable, str(script), str(pids)],
        start_new_session=True,  # its own group, as a process manager starts it
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(pids.iterdir())) < 3:
            assert supervisor.poll() is None and time.monotonic() < deadline, "the tree did not start"
            time.sleep(0.1)
        tree = [int(p.name) for p in pids.iterdir()]
        assert all(_alive(pid) for pid in tree)

        stopped = time.monotonic()
        if target == "group":
            os.killpg(supervisor.pid, stop)
        else:
            os.kill(supervisor.pid, stop)
        code = supervisor.wait(timeout=STOP_WITHIN_SECONDS)
        while any(_alive(pid) for pid in tree) and time.monotonic() - stopped < STOP_WITHIN_SECONDS:
            time.sleep(0.05)
        took = time.monotonic() - stopped
        assert not [pid for pid in tree if _alive(pid)], f"left after {took:.1f} s"
        assert took < STOP_WITHIN_SECONDS
        assert code == 128 + stop
        assert f"{stop.name} received: stopping" in supervisor.stderr.read()
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
        for entry in pids.iterdir():
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_command_that_ends_by_itself_gives_its_exit_code(tmp_path: Path) -> None:
    from atlas_pipeline.supervise import run_supervised

    assert run_supervised([sys.executable, "-c", "import sys; sys.exit(3)"]) == 3


def test_a_killed_supervisor_still_stops_its_server(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: the server (in its own session) gets a Ctrl-C from
    the kernel (``PR_SET_PDEATHSIG``) instead of running on."""
    pids = tmp_path / "pids"
    pids.mkdir()
    server = f"import os, time; open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close(); time.sleep(120)"
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, sys.executable, "-c", server], start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(pids.iterdir()):
        assert supervisor.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    pid = int(next(pids.iterdir()).name)
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait()
    deadline = time.monotonic() + STOP_WITHIN_SECONDS
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _alive(pid), "the server outlived its killed supervisor"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
