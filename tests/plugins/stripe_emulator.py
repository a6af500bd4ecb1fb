"""Fixtures for the Stripe meter API emulator: one in-process server per test session,
reset before each test to its start-up meters and configuration; and a webhook receiver,
a real HTTP endpoint that records what the emulator pushes to it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devkit.emulator import EmulatorServer
from devkit.emulator.client import DEFAULT_SECRET_KEY, EmulatorClient

METERS_FILE = Path(__file__).resolve().parent.parent / "fixtures" / "meters.json"
WEBHOOK_SECRET = "whsec_test_emulator_receiver_0123456789"


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


@dataclass(frozen=True)
class Received:
    """One request the receiver took: its headers (lower-case names) and raw body."""

    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        parsed: dict[str, object] = json.loads(self.body)
        return parsed


class WebhookReceiver:
    """An HTTP endpoint on 127.0.0.1: records every POST and answers the next of `statuses`
    (200 once they run out); `hold` keeps each answer back until it is set."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.hold.wait(timeout=30)
                with receiver._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.received.append(Received(headers, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.hold.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()
