"""Fixtures for the Stripe meter API emulator: one in-process server per test session,
reset before each test to its start-up meters and configuration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.emulator import EmulatorServer
from devkit.emulator.client import DEFAULT_SECRET_KEY, EmulatorClient

METERS_FILE = Path(__file__).resolve().parent.parent / "fixtures" / "meters.json"


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    """The emulator on 127.0.0.1 and a free port; it stops when the test session ends."""
    server = EmulatorServer(meters=json.loads(METERS_FILE.read_text()), seed=7)
    with server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> Iterator[EmulatorClient]:
    """A clean emulator: no events, sessions or faults; the fixture meters only."""
    client = EmulatorClient(emulator_server.url, DEFAULT_SECRET_KEY)
    client.reset(meters=True, config=True)
    yield client
    client.close()
