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
