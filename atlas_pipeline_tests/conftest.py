"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def emulator_factory():
    """Start exchange emulators on free ports: ``emulator_factory(source, faults=[...])`` returns a
    started ``EmulatorServer``; all are stopped at teardown."""
    from atlas_pipeline.market_data.emulator import EmulatorServer

    servers: list[EmulatorServer] = []

    def start(source, **kwargs) -> EmulatorServer:
        server = EmulatorServer(source, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def _no_defs_state_storage_left_behind():
    """Each test starts with no "current" Dagster defs-state storage.

    Entering a ``DagsterInstance`` puts its defs-state storage in a context variable that every
    ``Definitions`` load reads; an instance a test leaves entered (or exits out of order) leaves a
    storage whose instance is gone, and every later load in the session fails with "Attempted to
    resolve undefined DagsterInstance weakref" (seen in CI, tests far from the one that leaked).
    """
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@pytest.fixture(scope="session", autouse=True)
def _atlas_home_outside_the_users(tmp_path_factory: pytest.TempPathFactory):
    """Tests that set no ``ATLAS_HOME`` use a temporary one, never the user's ``~/.atlas``: a
    ``~/.atlas/config`` written by ``atlas demo`` would otherwise replace the checkout's config
    (``config.paths``), and command logs would land there."""
    import os

    if os.environ.get("ATLAS_HOME"):
        yield
        return
    os.environ["ATLAS_HOME"] = str(tmp_path_factory.mktemp("atlas_home"))
    try:
        yield
    finally:
        os.environ.pop("ATLAS_HOME", None)


SLOWEST_FILES_FIRST = (
    "test_e2e_dagster_dev.py",
    "test_daily_use.py",
    "test_data_trust.py",
    "test_run_hygiene.py",
    "test_cli.py",
    "test_research_reruns.py",
    "test_research_assets.py",
)
"""The longest test files (minutes each, ``--durations``), handed to the xdist workers first: with
one file per worker (``--dist loadfile``), a long file started last would run on alone at the end."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
