"""The chaos run's throttling proxy: a seeded share of calls answered as AWS throttles them, the
rest passed to the upstream unchanged, and a client that goes away before its answer costs the
proxy nothing (a forwarder killed by `make chaos`)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from devkit.throttle_proxy import ThrottleProxy

pytestmark = pytest.mark.integration


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.0
    padding = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay)
        answer = json.dumps(
            {"echo": body.decode()[:100], "target": self.headers["X-Amz-Target"]}
            | ({"padding": "x" * self.padding} if self.padding else {})
        )
        data = answer.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host!s}:{port}"
    server.shutdown()
    server.server_close()


def call(url: str) -> requests.Response:
    return requests.post(
        url,
        data='{"Name": "/stack/session"}',
        headers={"X-Amz-Target": "AmazonSSM.GetParameter"},
        timeout=5,
    )


def test_a_call_not_throttled_reaches_the_upstream_unchanged(upstream: str) -> None:
    with ThrottleProxy(upstream, rate=0.0) as proxy:
        answer = call(proxy.url)
    assert answer.status_code == 200
    assert answer.json() == {
        "echo": '{"Name": "/stack/session"}',
        "target": "AmazonSSM.GetParameter",
    }
    assert proxy.stats == {"throttled": 0, "passed": 1}


def test_a_throttled_call_is_answered_as_aws_throttles(upstream: str) -> None:
    with ThrottleProxy(upstream, rate=1.0) as proxy:
        answer = call(proxy.url)
    assert answer.status_code == 400
    assert answer.headers["x-amzn-ErrorType"] == "ThrottlingException"
    assert answer.json()["__type"] == "ThrottlingException"
    assert proxy.stats == {"throttled": 1, "passed": 0}


def gone(url: str, body: str) -> None:
    """A request, then the client resets its connection at once."""
    parts = urlsplit(url)
    client = socket.create_connection((parts.hostname, parts.port))
    client.sendall(
        f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: t\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def test_a_client_gone_before_its_answer_costs_the_proxy_nothing(
    upstream: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_Upstream, "delay", 0.3)  # the client is gone when the answer comes
    monkeypatch.setattr(_Upstream, "padding", 4_000_000)  # more than the socket buffers take
    with ThrottleProxy(upstream, rate=0.0) as proxy:
        gone(proxy.url, "{}")  # gone while the proxy waits for the upstream
        gone(proxy.url, "x" * 4_000_000)  # gone while the proxy reads the request
        time.sleep(1.0)
        monkeypatch.setattr(_Upstream, "padding", 0)
        assert call(proxy.url).status_code == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err
