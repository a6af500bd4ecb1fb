"""A moto server in this process, so tests and `make run` get AWS (SQS, SSM, Secrets Manager)
over real sockets without an account: boto3 reaches it through AWS_ENDPOINT_URL.

    python -m devkit.moto_server --port 5000 [--lifetime SECONDS]

prints the endpoint URL on stdout and serves until Ctrl-C, SIGTERM or the lifetime ends.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Self

from moto.server import ThreadedMotoServer

DEFAULT_REGION = "us-east-1"


def aws_env(endpoint_url: str, region: str = DEFAULT_REGION) -> dict[str, str]:
    """Variables that point every boto3 client at moto, with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }


class MotoServer:
    """moto's ThreadedMotoServer on 127.0.0.1, on a free port unless one is given.

    Keep queues shallow in tests: moto recounts a queue on every send, so it slows down
    markedly as a queue deepens (about 40 sends/s at a depth of 1,000).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, log_requests: bool = False):
        self._host = host
        self._port = port
        self._log_requests = log_requests
        self._server: ThreadedMotoServer | None = None
        self._address: tuple[str, int] | None = None

    def start(self) -> Self:
        if self._server is None:
            # port 0: the OS picks a free port when werkzeug binds, so no race with other tests
            if not self._log_requests:
                # werkzeug logs a line per request to stderr; the logger is process-wide
                logging.getLogger("werkzeug").setLevel(logging.WARNING)
            server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            self._server, self._address = server, (host, int(port))
        return self

    @property
    def host(self) -> str:
        return self._require_address()[0]

    @property
    def port(self) -> int:
        return self._require_address()[1]

    @property
    def endpoint_url(self) -> str:
        host, port = self._require_address()
        return f"http://{host}:{port}"

    def _require_address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("MotoServer is not started")
        return self._address

    def reset(self) -> None:
        """Drop every resource in every backend (POST /moto-api/reset)."""
        host, port = self._require_address()
        connection = http.client.HTTPConnection(host, port, timeout=10)
        try:
            connection.request("POST", "/moto-api/reset")
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"moto reset failed: HTTP {response.status}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            self._address = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.moto_server", description="Run a moto server until stopped."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port")
    parser.add_argument(
        "--lifetime", type=float, default=None, help="stop after SECONDS (default: never)"
    )
    parser.add_argument("--log-requests", action="store_true", help="log each request")
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    with MotoServer(args.host, args.port, log_requests=args.log_requests) as server:
        print(server.endpoint_url, flush=True)
        print(f"moto server on {server.endpoint_url}; Ctrl-C stops it", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            stopping.wait(args.lifetime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
