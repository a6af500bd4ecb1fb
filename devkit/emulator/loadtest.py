"""`make emulator-bench`: stream requests/s the emulator sustains here, validation included.

The emulator runs in its own process, as in later benchmarks. The load is what a producer
sends: a meter is created first (v1 API, an event name of this run's own), every event has
an identifier of its own, a timestamp of the current second and one of 50 customers. Client
threads write whole requests on keep-alive sockets (Nagle off), only the identifiers' counter
and the timestamps' second filled in per request, so that the client costs little and the
server is what is measured.

The run ends with GET /_emulator/stats, which answers once every accepted event is validated;
the headline figure counts the time until that answer, and the run fails unless every event
sent was counted exactly once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit

SECRET = "sk_test_emulator_loadtest"  # noqa: S105 (the emulator accepts any sk_test_)
EVENTS_PER_BODY = 100
CUSTOMERS = 50
_COUNTER = b"@@@@@@@@@@"  # the request's number, in each identifier
_SECOND = b"####-##-##T##:##:##"  # the current second, in each timestamp
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)")


@contextmanager
def emulator_process(*extra: str) -> Iterator[str]:
    """Start `python -m devkit.emulator --port 0` and yield its base URL."""
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [
            sys.executable,
            "-m",
            "devkit.emulator",
            "--port",
            "0",
            "--lifetime",
            "3600",
            "--request-log-size",
            "1000",
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"emulator did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=10)


class Connection:
    """One keep-alive HTTP/1.1 connection: requests written whole, answers read by length."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._sock = socket.create_connection((host, port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def request_bytes(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request, return the answer's status and body."""
        self._sock.sendall(request)
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._receive()
        head = self._buffer[:end]
        match = _CONTENT_LENGTH.search(head)
        length = int(match.group(1)) if match else 0
        start = end + 4
        while len(self._buffer) < start + length:
            self._receive()
        body = self._buffer[start : start + length]
        self._buffer = self._buffer[start + length :]
        return int(head[9:12]), body

    def call(self, method: str, path: str, body: bytes = b"", **headers: str) -> Any:
        """A setup or inspection call: its JSON answer, or an error unless 200."""
        status, answer = self.exchange(self.request_bytes(method, path, body, headers))
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {answer[:300]!r}")
        return json.loads(answer)

    def _receive(self) -> None:
        chunk = self._sock.recv(262_144)
        if not chunk:
            raise ConnectionError("the emulator closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        self._sock.close()


def stream_template(run_id: str, event_name: str) -> bytes:
    """A 100-event body; per request, _COUNTER and _SECOND are replaced (same lengths)."""
    events = [
        {
            "event_name": event_name,
            "identifier": f"{run_id}-{_COUNTER.decode()}-{i:03d}",
            "timestamp": f"{_SECOND.decode()}.{i * 10:03d}Z",
            "payload": {
                "stripe_customer_id": f"cus_{i * 7 % CUSTOMERS:04d}",
                "value": str(1 + i % 9),
            },
        }
        for i in range(EVENTS_PER_BODY)
    ]
    return json.dumps({"events": events}, separators=(",", ":")).encode()


def _counted(stats: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in stats["events_by_status"].items()}


def run(url: str, *, seconds: float, concurrency: int) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    run_id = uuid.uuid4().hex
    event_name = f"loadtest_{run_id[:12]}"
    setup = Connection(host, port)
    auth = f"Bearer {SECRET}"
    session = setup.call("POST", "/v2/billing/meter_event_session", Authorization=auth)
    meter = {"display_name": "load test", "event_name": event_name}
    meter["default_aggregation[formula]"] = "sum"
    setup.call("POST", "/v1/billing/meters", urlencode(meter).encode(), Authorization=auth)
    before = _counted(setup.call("GET", "/_emulator/stats"))
    template = stream_template(run_id, event_name)
    head = setup.request_bytes(
        "POST",
        "/v2/billing/meter_event_stream",
        template,
        {
            "Authorization": f"Bearer {session['authentication_token']}",
            "Content-Type": "application/json",
            "Stripe-Version": "2026-09-30.preview",
        },
    )[: -len(template)]
    numbers = itertools.count()
    counts = [0] * concurrency
    failures = [0] * concurrency
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        conn = Connection(host, port)
        second, pieces = -1, [b""]
        try:
            while time.perf_counter() < deadline:
                now = int(time.time())
                if now != second:  # the request cut at each identifier's counter
                    second = now
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode()
                    pieces = (head + template.replace(_SECOND, stamp)).split(_COUNTER)
                status, _ = conn.exchange((b"%010d" % next(numbers)).join(pieces))
                if status == 200:
                    counts[index] += 1
                else:
                    failures[index] += 1
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted_at = time.perf_counter()
    after = _counted(setup.call("GET", "/_emulator/stats"))
    validated_at = time.perf_counter()
    setup.close()
    requests = sum(counts)
    change = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    wrong = sum(n for k, n in change.items() if k != "counted")
    miscounted = change.get("counted", 0) != requests * EVENTS_PER_BODY
    return {
        "requests_per_s": requests / (validated_at - started),
        "events_per_s": requests * EVENTS_PER_BODY / (validated_at - started),
        "accepted_requests_per_s": requests / (accepted_at - started),
        "final_read_s": validated_at - accepted_at,
        "requests": float(requests),
        "events_counted": float(change.get("counted", 0)),
        "events_not_counted": float(wrong),
        "failures": float(sum(failures) + wrong + (1 if miscounted else 0)),
        "seconds": validated_at - started,
        "concurrency": float(concurrency),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--url", help="measure a running emulator instead of starting one")
    args = parser.parse_args(argv)
    if args.url:
        result = run(args.url, seconds=args.seconds, concurrency=args.concurrency)
    else:
        with emulator_process() as url:
            result = run(url, seconds=args.seconds, concurrency=args.concurrency)
    print(json.dumps(result, indent=2))
    print(
        f"emulator stream requests/s = {result['requests_per_s']:.0f}, validation included "
        f"({result['accepted_requests_per_s']:.0f} answered/s, then {result['final_read_s']:.2f} s "
        f"until every event was validated; {EVENTS_PER_BODY}-event bodies, {args.concurrency} "
        f"keep-alive connections, {int(result['failures'])} failures)"
    )
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
