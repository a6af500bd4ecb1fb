"""The log of Stripe requests the emulator answered, secrets masked, and counts by status."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

from devkit.emulator.httpserver import Request
from devkit.emulator.masking import mask_secret
from devkit.emulator.timefmt import format_rfc3339

SECRET_HEADERS = ("authorization", "stripe-account", "cookie")


class RequestLog:
    """The last `size` requests, and how many each endpoint answered with each status."""

    def __init__(self, size: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._counts: Counter[tuple[str, int]] = Counter()
        self._counts_lock = threading.Lock()

    def record(
        self,
        request: Request,
        endpoint: str,
        status: int,
        started: float,
        fault: str | None,
        at: float,
    ) -> None:
        headers = {
            name: mask_secret(value) if name in SECRET_HEADERS else value
            for name, value in request.headers.items()
        }
        self._entries.append(
            {
                "at": at,  # epoch: formatted when read, off the hot path
                "method": request.method,
                "path": request.path,
                "endpoint": endpoint,
                "status": status,
                "fault": fault,
                "headers": headers,
                "body_bytes": len(request.body),
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        )
        with self._counts_lock:
            self._counts[(endpoint, status)] += 1

    def entries(
        self, endpoint: str | None = None, limit: int | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        """How many entries there are (of endpoint if given), and the last `limit` of them."""
        entries = list(self._entries)
        if endpoint is not None:
            entries = [e for e in entries if e["endpoint"] == endpoint]
        shown = entries if limit is None else entries[len(entries) - limit :]
        return len(entries), [{**e, "at": format_rfc3339(e["at"])} for e in shown]

    def counts(self) -> dict[str, dict[str, int]]:
        """endpoint -> {status: requests}."""
        with self._counts_lock:
            counts = dict(self._counts)
        out: dict[str, dict[str, int]] = {}
        for (endpoint, status), count in counts.items():
            out.setdefault(endpoint, {})[str(status)] = count
        return out

    def clear(self) -> None:
        self._entries.clear()
        with self._counts_lock:
            self._counts.clear()
