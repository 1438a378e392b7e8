"""Helpers for the end-to-end UI test: ``dagster dev`` in its own process group, GraphQL, Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "atlas_pipeline"
REPOSITORY = "__repository__"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def artifacts_dir() -> Path:
    """``$ATLAS_TEST_ARTIFACTS``, else ``atlas_pipeline_tests/artifacts/`` (git-ignored)."""
    folder = Path(os.environ.get("ATLAS_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class DagsterDev:
    """``atlas ui`` = ``dagster dev -w workspace.yaml`` (webserver + daemon) on a loopback port.

    ``atlas ui`` runs ``dagster dev`` under ``atlas_pipeline.supervise``, which stops the whole tree
    on SIGTERM; it runs in its own session and ``stop()`` signals that group: SIGTERM, then SIGKILL.
    """

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = env
        self._log = None
        self.process: subprocess.Popen | None = None
        self.pgid: int | None = None

    def start(self, timeout: float = 120) -> DagsterDev:
        atlas = Path(sys.executable).parent / "atlas"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(  # `atlas ui`, as users start it
            [str(atlas), "ui", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO_ROOT,
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pgid = self.process.pid  # session leader: its pid is the group id
        wait_for(self._server_up, timeout, "dagster dev to serve /server_info", self)
        return self

    def _server_up(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"dagster dev exited with {self.process.returncode}\n{self.log_tail()}")
        try:
            return requests.get(f"{self.url}/server_info", timeout=2).ok
        except requests.RequestException:
            return False

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        assert reply.ok, f"GraphQL HTTP {reply.status_code}: {reply.text[:2000]}\n{self.log_tail()}"
        body = reply.json()
        assert not body.get("errors"), f"GraphQL errors: {body['errors']}\n{self.log_tail()}"
        return body["data"]

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no dagster dev log)"
        return "--- dagster dev log (tail) ---\n" + "\n".join(text[-lines:])

    def stop(self, grace: float = 20) -> None:
        """SIGTERM the process group, wait, SIGKILL what is left, and reap the leader."""
        if self.pgid is None:
            return
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_alive(self.pgid):
            self.process.poll()  # reap the leader once it exits, or the group stays "alive"
            time.sleep(0.25)
        if group_alive(self.pgid):
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and group_alive(self.pgid):
            time.sleep(0.1)
        if self._log:
            self._log.close()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, dev: DagsterDev | None = None,
             interval: float = 1.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with the dagster dev log tail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = dev.log_tail() if dev else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
        time.sleep(interval)


def chromium(url: str, profile: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` with its own profile folder; ``args`` add --dump-dom etc.

    Runs in its own session so that its helper processes (zygote, renderer, GPU) are killed with it.
    """
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n(chromium killed after {timeout:.0f} s)"
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def chromium_available() -> bool:
    return CHROMIUM.exists() and shutil.which(str(CHROMIUM)) is not None
