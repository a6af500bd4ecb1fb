"""A small threaded HTTP/1.1 server with keep-alive, built for throughput.

http.server parses headers with the email package and writes headers and body in separate
sends; with keep-alive, Nagle's algorithm and delayed ACKs then cap a connection near 25
requests/s. Here each connection has a thread, Nagle is off, the head of a request is taken
from the read buffer in one piece when it is there, and every answer leaves in a single send.
Sockets stay in blocking mode (the idle limit is the kernel's SO_RCVTIMEO, not a Python
timeout, which would poll before every receive and send): each system call is a release of
the GIL that the connections' threads contend for.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MAX_LINE = 65_536
MAX_BODY = 64 * 1024 * 1024
_REASONS = {status.value: status.phrase for status in HTTPStatus}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    client: str
    query_string: str = ""  # as sent, for parameters given more than once


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    drop: bool = False  # close the connection without answering (an injected fault)
    after: Callable[[], None] | None = None  # work done once the answer is sent (or dropped)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode(), headers or {})


Handler = Callable[[Request], Response]


class _Connection(socketserver.StreamRequestHandler):
    rbufsize = 256 * 1024
    wbufsize = 0
    disable_nagle_algorithm = True
    rfile: io.BufferedReader  # rbufsize > 0
    idle_timeout_s = 120  # idle keep-alive connections close after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        limit = struct.pack("ll", self.idle_timeout_s, 0)  # struct timeval
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            self.connection.setsockopt(socket.SOL_SOCKET, option, limit)
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        self.server.track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        try:
            while self._one_request():
                pass
        except (OSError, ValueError):
            return

    def _read_head(self) -> list[str]:
        """The request line and the header lines; [] at the end of the connection."""
        buffered = self.rfile.peek(1)  # what the buffer holds, after one receive if empty
        if not buffered:  # closed by the client, or idle past the limit
            return []
        end = buffered.find(b"\r\n\r\n", 0, MAX_LINE)
        if (
            end > 0
            and buffered[:1] not in (b"\r", b"\n")
            and buffered.count(b"\n", 0, end) == buffered.count(b"\r\n", 0, end)
        ):
            return self.rfile.read(end + 4)[:end].decode("latin-1").split("\r\n")
        # a head in pieces, bare LFs or blank lines first: line by line
        line = self.rfile.readline(MAX_LINE)
        while line in (b"\r\n", b"\n"):
            line = self.rfile.readline(MAX_LINE)
        if not line:
            return []
        lines = [line.decode("latin-1")]
        while (raw := self.rfile.readline(MAX_LINE)) not in (b"\r\n", b"\n", b""):
            lines.append(raw.decode("latin-1"))
        return lines

    def _one_request(self) -> bool:
        lines = self._read_head()
        if not lines:
            return False
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._send(Response(400, b'{"error":{"message":"bad request line"}}'), close=True)
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            name, _, value = raw.partition(":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = (version == "HTTP/1.1" and connection != "close") or connection == "keep-alive"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._send(Response(411, b'{"error":{"message":"send a Content-Length"}}'), close=True)
            return False
        length = int(headers.get("content-length") or 0)
        if length < 0 or length > MAX_BODY:
            self._send(Response(413, b'{"error":{"message":"body too large"}}'), close=True)
            return False
        if length and headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            return False
        if target[:1] == "/" and "#" not in target:  # origin-form, as clients send
            path, _, query = target.partition("?")
        else:
            split = urlsplit(target)
            path, query = split.path, split.query
        request = Request(
            method=method.upper(),
            path=path,
            query=dict(parse_qsl(query, keep_blank_values=True)) if query else {},
            headers=headers,
            body=body,
            client=self.client_address[0],
            query_string=query,
        )
        response = self.server.handler(request)
        if response.drop:
            self._abort()
        else:
            self._send(response, close=not keep_alive)
        if response.after is not None:
            response.after()
        return keep_alive and not response.drop

    def _send(self, response: Response, *, close: bool) -> None:
        reason = _REASONS.get(response.status, "Unknown")
        head = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        head.extend(f"{name}: {value}" for name, value in response.headers.items())
        if close:
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)

    def _abort(self) -> None:
        """Reset the connection (RST), as a dropped connection looks to a client."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: Handler) -> None:
        self.handler = handler
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Connection)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class HttpServer:
    """Serves `handler` on a background thread until stop(); port 0 picks a free port."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), handler)
        self.host: str = host
        self.port: int = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            daemon=True,
            name=f"http-{self.port}",
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
