"""An HTTP proxy in front of moto server that throttles a share of AWS calls, as AWS does.

moto never throttles, but SSM's GetParameter is limited to 40 TPS by default, so the chaos
run needs throttling to be real: point a service at the proxy with boto3's service-specific
endpoint variable (e.g. `AWS_ENDPOINT_URL_SSM`), and a seeded share of its requests is
answered as AWS answers a throttled JSON-protocol call (HTTP 400, `ThrottlingException`),
which botocore's retry modes recognise. Every other request is passed to moto unchanged.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class _Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: ClassVar[tuple[str, int]]
    decide: ClassVar[Any]
    stats: ClassVar[dict[str, int]]

    def do_POST(self) -> None:
        try:
            self._forward()
        except (BrokenPipeError, ConnectionResetError):
            # the client went away (a forwarder killed by make chaos): nobody to answer
            self.close_connection = True

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.decide():
            self.stats["throttled"] += 1
            payload = json.dumps(
                {"__type": "ThrottlingException", "message": "Rate exceeded"}
            ).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-ErrorType", "ThrottlingException")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.stats["passed"] += 1
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream.request("POST", self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        return


class ThrottleProxy:
    """`with ThrottleProxy(moto_url, rate=0.2, seed=1) as proxy:` then use `proxy.url`."""

    def __init__(self, upstream_url: str, rate: float, seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate is a share between 0 and 1")
        parts = urlsplit(upstream_url)
        rng = random.Random(seed)  # noqa: S311 (fault injection, not cryptography)
        lock = threading.Lock()

        def decide() -> bool:
            with lock:
                return rng.random() < rate

        self.stats = {"throttled": 0, "passed": 0}
        handler = type(
            "ThrottleProxyHandler",
            (_Proxy,),
            {
                "upstream": (parts.hostname or "127.0.0.1", parts.port or 80),
                "decide": staticmethod(decide),
                "stats": self.stats,
            },
        )
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
