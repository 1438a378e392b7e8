"""The README's daily-use commands, run as written, in README order, on a fresh ``ATLAS_HOME``
after ``atlas demo`` (issue 11): each succeeds on the demo's data, config and backtests, with no
environment variable beyond ``ATLAS_HOME``.

The commands come from the block between ``<!-- daily-use:start -->`` and
``<!-- daily-use:end -->`` in README.md, so a command added there is covered without touching
this test. Servers (``atlas ui``, ``atlas emulator``) are started, checked to serve, and stopped
with SIGTERM to their process group; every process they started must be gone within 10 s.
Only change made to a command: a server gets ``--port <free port>`` when it names none (a shared
machine may already use 3000 or 8765).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from atlas_pipeline.config.paths import REPO_ROOT
from atlas_pipeline.supervise import descendants

README = REPO_ROOT / "README.md"
START, END = "<!-- daily-use:start -->", "<!-- daily-use:end -->"
SERVERS = ("ui", "emulator")
DEMO_DAYS = "10"
STOP_WITHIN_SECONDS = 10


def daily_use_commands(readme: Path = README) -> list[list[str]]:
    """The ``atlas ...`` command lines of the README's marked block, comments and blank lines
    dropped, ``\\`` continuations joined."""
    text = readme.read_text()
    block = text[text.index(START) + len(START) : text.index(END)]
    commands, pending = [], ""
    for line in block.splitlines():
        if line.strip().startswith("```"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        words = shlex.split(pending, comments=True)
        pending = ""
        if words and words[0] == "atlas":
            commands.append(words)
    return commands


def test_the_readme_block_is_found_and_holds_the_daily_commands() -> None:
    commands = daily_use_commands()
    names = [command[1] for command in commands]
    assert {"ui", "fetch", "backtest"} <= set(names), names
    assert all(command[0] == "atlas" for command in commands)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh data home after ``atlas demo``; the environment a new user has (no ATLAS_CONFIG,
    no DAGSTER_HOME, no ATLAS_STRATEGIES)."""
    root = tmp_path_factory.mktemp("daily") / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("ATLAS_CONFIG", "DAGSTER_HOME", "ATLAS_STRATEGIES")}
    env["ATLAS_HOME"] = str(root)
    demo = subprocess.run(
        [sys.executable, "-m", "atlas_pipeline.cli", "demo", "--days", DEMO_DAYS],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert " - DEBUG - " not in demo.stderr, "no Dagster DEBUG lines by default"
    assert (root / "config" / "exchanges.yaml").is_file() and (root / "config" / "backtests.yaml").is_file()
    return env


def test_readme_daily_use_commands_succeed_after_the_demo(home: dict[str, str]) -> None:
    config = f"config {home['ATLAS_HOME']}/config (the data home's config"
    for command in daily_use_commands():
        if command[1] in SERVERS:
            _serve_and_stop(command, home, config)
            continue
        result = subprocess.run(
            [sys.executable, "-m", "atlas_pipeline.cli", *command[1:]],
            env=home, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
        )
        shown = " ".join(command)
        assert result.returncode == 0, f"{shown}\n{result.stderr[-3000:]}"
        assert config in result.stderr, f"{shown} names the demo's config first:\n{result.stderr[:500]}"
        assert " - DEBUG - " not in result.stderr, shown
        if command[1] == "backtest":  # a configured one prints its name; ad-hoc ones (--strategy) a derived name
            heading = "## adhoc_" if command[2].startswith("--") else f"## {command[2]} "
            assert heading in result.stdout and "sharpe" in result.stdout.lower(), result.stdout


def _serve_and_stop(command: list[str], env: dict[str, str], config: str) -> None:
    port = None
    if "--port" not in command:
        port = _free_port()
        command = [*command, "--port", str(port)]
    else:
        port = int(command[command.index("--port") + 1])
    log = Path(env["ATLAS_HOME"]) / f"server-{command[1]}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "atlas_pipeline.cli", *command[1:]],
            env=env, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        if command[1] == "ui":
            nodes = _wait_for_asset_nodes(process, port, log)
            for backtest in ("sma_crossover_1h", "rsi_long_short_1h", "sma_walkforward_1h"):
                assert any(backtest in "/".join(path) for path in nodes), f"the demo's {backtest} is in the UI: {nodes}"
            assert config in log.read_text(), log.read_text()[:1000]
            # the code location the UI loaded read the same folder (atlas ui hands it over)
            assert f"atlas code location: config {env['ATLAS_HOME']}/config" in log.read_text()
        else:
            _wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v3/ping", timeout=2), process, log)
        tree = [process.pid, *descendants(process.pid)]
        sessions = {os.getsid(pid) for pid in tree if _exists(pid)}
        stopped = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_WITHIN_SECONDS)
        while any(_exists(pid) for pid in tree) and time.monotonic() - stopped < STOP_WITHIN_SECONDS:
            time.sleep(0.1)
        took = time.monotonic() - stopped
        left = [pid for pid in tree if _exists(pid)] + _in_sessions(sessions)
        assert not left, f"{' '.join(command)} left processes {left} {took:.1f} s after SIGTERM"
        assert took < STOP_WITHIN_SECONDS, took
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_asset_nodes(process: subprocess.Popen, port: int, log: Path) -> list[list[str]]:
    query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()

    def nodes() -> list[list[str]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/graphql", data=query, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            found = [node["assetKey"]["path"] for node in json.load(reply)["data"]["assetNodes"]]
        if not any("sma_crossover_1h" in "/".join(path) for path in found):
            raise OSError("code location not loaded yet")
        return found

    return _wait_for(nodes, process, log)


def _wait_for(probe, process: subprocess.Popen, log: Path, timeout: float = 240):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while True:
        try:
            return probe()
        except (OSError, KeyError, TypeError):
            assert process.poll() is None, f"server exited {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}"
            time.sleep(1)


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _in_sessions(sessions: set[int]) -> list[int]:
    """Processes still in a session the server's tree had (one it started and lost track of)."""
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) in sessions:
                    left.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return left
