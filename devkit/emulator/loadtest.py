"""`make emulator-bench`: stream requests per second the emulator sustains on this machine.

The emulator runs in its own process (as in later benchmarks); the client posts
pre-serialised 100-event bodies over keep-alive connections from several threads, with
http.client so that the client is as cheap as possible and the server is what is measured.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

SECRET = "sk_test_emulator_loadtest"  # noqa: S105 (the emulator accepts any sk_test_)


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


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, auth: str) -> int:
    conn.request(
        "POST",
        path,
        body=body,
        headers={
            "Authorization": f"Bearer {auth}",
            "Content-Type": "application/json",
            "Stripe-Version": "2026-09-30.preview",
        },
    )
    response = conn.getresponse()
    response.read()
    return response.status


def stream_bodies(count: int, events_per_body: int = 100) -> list[bytes]:
    bodies = []
    for _ in range(count):
        events = [
            {
                "event_name": "api_requests",
                "identifier": uuid.uuid4().hex,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "payload": {"stripe_customer_id": f"cus_{i % 50:04d}", "value": "25"},
            }
            for i in range(events_per_body)
        ]
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def run(url: str, *, seconds: float, concurrency: int) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    setup = http.client.HTTPConnection(host, port)
    setup.request(
        "POST", "/v2/billing/meter_event_session", headers={"Authorization": f"Bearer {SECRET}"}
    )
    token = json.loads(setup.getresponse().read())["authentication_token"]
    bodies = stream_bodies(200)
    counts = [0] * concurrency
    failures = [0] * concurrency
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        conn = http.client.HTTPConnection(host, port)
        n = index
        while time.perf_counter() < deadline:
            status = _post(conn, "/v2/billing/meter_event_stream", bodies[n % len(bodies)], token)
            n += concurrency
            if status == 200:
                counts[index] += 1
            else:
                failures[index] += 1
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "requests_per_s": sum(counts) / elapsed,
        "events_per_s": sum(counts) * 100 / elapsed,
        "requests": float(sum(counts)),
        "failures": float(sum(failures)),
        "seconds": elapsed,
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
        f"emulator stream requests/s = {result['requests_per_s']:.0f} "
        f"(100-event bodies, {args.concurrency} keep-alive connections, "
        f"{int(result['failures'])} failures)"
    )
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
