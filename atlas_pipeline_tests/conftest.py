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
