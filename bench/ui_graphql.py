"""What the Dagster UI asks of a real webserver, timed over HTTP (used by ``bench/universe.py``).

``Webserver`` starts ``dagster-webserver`` on a code location file and a ``DAGSTER_HOME`` (the same
instance the bench writes to) in its own session, and POSTs GraphQL to ``/graphql`` as the browser
does. The payloads are the UI's own (Dagster 1.13 ``ui-core``):

- ``LaunchAssetChoosePartitionsDialog.onLaunchAsBackfill``: for an asset of a user job (the OHLCV
  assets are in ``ohlcv_<exchange>``) the partition names the dialog selected plus the job's
  partition set as ``selector``; ``allPartitions`` where the selected assets share no job;
- ``usePartitionHealthData``'s ``PartitionHealthQuery`` (an asset page's partition health bar);
- the launchpad's ``launchPipelineExecution`` for Atlas's ``ohlcv_<exchange>_backfill`` request job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION, LAUNCH_PIPELINE_EXECUTION_MUTATION

PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey primaryDimEndKey primaryDimStartTime primaryDimEndTime
            secondaryDim {
              ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
              ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
"""
REPOSITORIES_QUERY = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"


@dataclass
class Reply:
    seconds: float
    data: dict[str, Any]
    request_mb: float


class Webserver:
    """``dagster-webserver -f <defs_file> -a defs`` on 127.0.0.1 with ``DAGSTER_HOME=home``."""

    def __init__(self, defs_file: Path, home: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        command = [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port),
                   "-f", str(defs_file), "-a", "defs"]
        self._log = log.open("w")
        self._process = subprocess.Popen(command, env={**os.environ, "DAGSTER_HOME": str(home)},
                                         stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.location, self.repository = self._wait_for_location(log)

    def _wait_for_location(self, log: Path, timeout: float = 300) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited {self._process.returncode}: {log.read_text()[-2000:]}")
            try:
                nodes = self.post(REPOSITORIES_QUERY).data["repositoriesOrError"].get("nodes") or []
            except (urllib.error.URLError, ConnectionError, KeyError):
                nodes = []
            if nodes:
                return nodes[0]["location"]["name"], nodes[0]["name"]
            time.sleep(0.5)
        raise RuntimeError(f"dagster-webserver did not load the code location in {timeout:g} s: {log.read_text()[-2000:]}")

    def post(self, query: str, variables: dict[str, Any] | None = None) -> Reply:
        """POST a GraphQL document as the browser does; the seconds until the whole reply is read."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        began = time.perf_counter()
        with urllib.request.urlopen(request, timeout=1800) as response:
            payload = json.loads(response.read())
        seconds = time.perf_counter() - began
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {str(payload['errors'])[:1000]}")
        return Reply(seconds, payload["data"], len(body) / 1e6)

    def peak_rss_mb(self) -> float:
        """The webserver process's high-water RSS so far."""
        with open(f"/proc/{self._process.pid}/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024

    def close(self) -> None:
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        except ProcessLookupError:
            pass
        self._log.close()

    def __enter__(self) -> Webserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the UI's requests --------------------------------------------------------------------

    def launch_backfill_as_the_ui_does(self, asset_path: list[str], job: str, names: list[str] | None) -> Reply:
        """The partitions dialog's backfill launch (``backfill_params``)."""
        params = backfill_params(asset_path, job, names, self.location, self.repository)
        reply = self.post(LAUNCH_PARTITION_BACKFILL_MUTATION, {"backfillParams": params})
        if reply.data["launchPartitionBackfill"]["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"backfill launch failed: {reply.data}")
        return reply

    def launch_run_as_the_launchpad_does(self, job: str, run_config: dict[str, Any]) -> Reply:
        params = {
            "selector": {"repositoryLocationName": self.location, "repositoryName": self.repository, "jobName": job},
            "runConfigData": run_config,
            "executionMetadata": {"tags": []},
        }
        reply = self.post(LAUNCH_PIPELINE_EXECUTION_MUTATION, {"executionParams": params})
        if reply.data["launchPipelineExecution"]["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"run launch failed: {reply.data}")
        return reply

    def partition_health(self, asset_path: list[str]) -> Reply:
        return self.post(PARTITION_HEALTH_QUERY, {"assetKey": {"path": asset_path}})


def backfill_params(
    asset_path: list[str], job: str, names: list[str] | None, location: str, repository: str
) -> dict[str, Any]:
    """``launchPartitionBackfill``'s params as the partitions dialog sends them: ``names`` with the
    job's partition set (an asset of a user job), or ``allPartitions`` (``names`` None: assets
    without a common job)."""
    params: dict[str, Any] = {"tags": [], "assetSelection": [{"path": asset_path}]}
    if names is None:
        params["allPartitions"] = True
    else:
        params.update(partitionNames=names, fromFailure=False, selector={
            "partitionSetName": f"{job}_partition_set",
            "repositorySelector": {"repositoryLocationName": location, "repositoryName": repository},
        })
    return params


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
