"""The image's webserver and daemon stop within 10 s of SIGTERM (``docker stop``), leaving no
process: their commands, read from docker-compose.yml (and the Dockerfile's CMD), run here as
real processes on a SQLite instance (the processes are the same on PostgreSQL).

On their own, ``dagster-webserver`` took 10.0 s and ``dagster-daemon run`` 8.4 s to exit after
SIGTERM, each leaving its code server running (measured 2026-11-30); under
``atlas_pipeline.supervise`` the whole tree is gone within ``supervise.STOP_SECONDS``.
Only changes to the commands: ``python`` is this interpreter, the port a free one, the host
loopback (a shared machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from atlas_pipeline.config.paths import REPO_ROOT
from atlas_pipeline.supervise import descendants

STOP_WITHIN_SECONDS = 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _local(command: list[str], port: int) -> list[str]:
    replaced = {"python": sys.executable, "0.0.0.0": "127.0.0.1", "3000": str(port)}
    return [replaced.get(word, word) for word in command]


def _dockerfile_cmd() -> list[str]:
    line = next(line for line in (REPO_ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    return json.loads(line.removeprefix("CMD "))


def test_the_image_runs_its_servers_under_the_supervisor() -> None:
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("webserver", "daemon"):
        assert services[name]["command"][:3] == ["python", "-m", "atlas_pipeline.supervise"], name
        assert services[name]["init"] is True, "tini reaps what the server's processes orphan"
    assert _dockerfile_cmd() == services["webserver"]["command"]


def test_webserver_and_daemon_stop_within_10_s_of_sigterm(tmp_path: Path) -> None:
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    port = _free_port()
    (tmp_path / "dagster_home").mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "ATLAS_HOME": str(tmp_path / "home"),
        "ATLAS_CONFIG": str(REPO_ROOT / "config"),
    }
    processes = {}
    logs = {}
    try:
        for name in ("webserver", "daemon"):
            logs[name] = tmp_path / f"{name}.log"
            with logs[name].open("w") as output:
                processes[name] = subprocess.Popen(
                    _local(services[name]["command"], port), env=env, cwd=REPO_ROOT,
                    stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                )
        # Ready: the webserver answers, and each server has started its code server. Not a sensor
        # tick of the daemon's: on a loaded CI machine its code server can miss its 20 s heartbeat
        # and restart, and the first tick comes minutes later; how fast they stop is the same.
        deadline = time.monotonic() + 300
        while True:
            trees = {name: [p.pid, *descendants(p.pid)] for name, p in processes.items()}
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                if all(len(tree) >= 3 for tree in trees.values()):  # supervisor, server, code server
                    break
            except OSError:
                pass
            for name, process in processes.items():
                assert process.poll() is None, f"{name} exited:\n{logs[name].read_text()[-3000:]}"
            assert time.monotonic() < deadline, (trees, {name: log.read_text()[-3000:] for name, log in logs.items()})
            time.sleep(1)

        stopped = time.monotonic()
        for process in processes.values():
            os.kill(process.pid, signal.SIGTERM)  # what tini forwards on `docker stop`
        for name, process in processes.items():
            assert process.wait(timeout=STOP_WITHIN_SECONDS) == 0, name
        everything = [pid for tree in trees.values() for pid in tree]
        while any(Path(f"/proc/{pid}").exists() for pid in everything) and time.monotonic() - stopped < STOP_WITHIN_SECONDS:
            time.sleep(0.1)
        took = time.monotonic() - stopped
        left = [pid for pid in everything if Path(f"/proc/{pid}").exists()]
        assert not left and took < STOP_WITHIN_SECONDS, f"left {left} after {took:.1f} s"
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
