"""Run a server command (``dagster dev``, the webserver, the daemon) so that it stops on request.

``dagster dev`` does not exit on SIGTERM, and started in the background from a script its SIGINT
arrives ignored (DESIGN.md section 10): ``atlas ui`` under a process manager, ``docker stop`` or
``kill`` ran on for over a minute and left its webserver, daemon and code servers behind.

So the command runs as a child in its own session (a terminal's Ctrl-C or a group kill aimed at
``atlas`` does not reach it directly), with SIGINT restored to its default, and this process
stops it on SIGTERM, SIGINT or SIGHUP: Ctrl-C for the tree (what ``dagster dev`` handles as a
clean shutdown), then SIGTERM, then SIGKILL, each to the child's process group and every
descendant seen, all within ``STOP_SECONDS``. No process it started outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

GRACE_SECONDS = 3.0
"""After Ctrl-C, ``dagster dev`` shuts its webserver and daemon down within a second, then waits
on a code server it restarts (measured: 4 s more); past this the tree gets TERM, then KILL."""
TERM_SECONDS = 1.5
STOP_SECONDS = GRACE_SECONDS + TERM_SECONDS + 1.0
"""Worst case from the stop signal to no process left: under the 10 s ``docker stop`` allows."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_supervised(command: Sequence[str], say=None) -> int:  # noqa: ANN001
    """Run ``command`` until it exits (its exit code) or this process is asked to stop
    (``128 + signal``, after the whole tree is gone)."""
    say = say or (lambda line: print(line, file=sys.stderr))

    def raise_stop(signum: int, frame: object) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, raise_stop) for sig in STOP_SIGNALS}
    child = None
    try:
        child = subprocess.Popen(list(command), start_new_session=True, preexec_fn=_prepare_child)
        return child.wait()
    except _Stop as stop:
        for sig in STOP_SIGNALS:  # a second signal while stopping must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        if child is not None:
            say(f"atlas: {stop} received: stopping {Path(command[0]).name} (pid {child.pid}) and its processes")
            started = time.monotonic()
            left = stop_tree(child)
            say(f"atlas: stopped in {time.monotonic() - started:.1f} s" + (f"; still exiting: pids {left}" if left else ""))
        return 128 + stop.signum
    finally:
        if child is not None and child.poll() is None:  # any other way out: leave nothing behind
            stop_tree(child)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


PR_SET_PDEATHSIG = 1


def _prepare_child() -> None:
    """In the child before exec: Ctrl-C works again, and on Linux the child gets a Ctrl-C if
    this process dies without stopping it (SIGKILL), instead of running on in its own session."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGINT))
        except (OSError, AttributeError):
            pass


def stop_tree(child: subprocess.Popen) -> list[int]:
    """Stop ``child`` (a session leader) and every process under it within ``STOP_SECONDS``;
    returns the pids still in the process table then (killed, not yet reaped)."""
    seen = set(descendants(child.pid))
    deadline = time.monotonic()
    for sig, wait in ((signal.SIGINT, GRACE_SECONDS), (signal.SIGTERM, TERM_SECONDS), (signal.SIGKILL, 1.0)):
        seen |= set(descendants(child.pid))
        _signal_group(child.pid, sig)
        for pid in seen:  # those that left the group; the group's members got it once already
            if _group(pid) != child.pid:
                _signal(pid, sig)
        deadline += wait
        while time.monotonic() < deadline:
            if child.poll() is not None and not any(_alive(pid) for pid in seen):
                return []
            time.sleep(0.1)
    child.poll()
    return [pid for pid in seen if _alive(pid)]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    """Still in the process table (a zombie too: it is gone once its new parent reaps it)."""
    return Path(f"/proc/{pid}").exists()


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atlas_pipeline.supervise COMMAND ...``: how the image runs the webserver and the
    daemon (both outlive a SIGTERM by 10 s or more on their own, leaving code servers behind)."""
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: python -m atlas_pipeline.supervise COMMAND [ARG ...]", file=sys.stderr)
        return 2
    code = run_supervised(command)
    return 0 if code in {128 + sig for sig in STOP_SIGNALS} else code


if __name__ == "__main__":
    sys.exit(main())
