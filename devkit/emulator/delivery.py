"""Pushing thin events to their destinations, off the API threads, with retries and a record.

Stripe retries a delivery that failed (a non-2xx answer, no answer) for days with exponential
backoff; the emulator keeps the shape, with short delays and a few attempts (settings), so a
test sees retries without waiting. One worker thread sends every delivery in order of due
time; `wait_idle()` lets a test wait until none is left, instead of sleeping.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from devkit.emulator.timefmt import format_rfc3339
from devkit.emulator.v2_events import ThinEvent

MAX_RECORDS = 10_000
_log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """One failed attempt: the destination's status if it answered, and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Transport(Protocol):
    """One event destination: sends a notification body, raises DeliveryError on failure."""

    kind: str  # "webhook" or "eventbridge"
    destination: str  # the URL, or the bus

    def send(self, body: bytes, event: ThinEvent, sent_at: float) -> int | None:
        """Deliver body; return the destination's HTTP status when it has one."""
        ...


@dataclass
class Delivery:
    """One event to one destination, and every attempt at it."""

    id: str
    event: ThinEvent
    body: bytes
    transport: Transport
    attempts_left: int
    next_delay_s: float
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event.id,
            "event_type": self.event.type,
            "kind": self.transport.kind,
            "destination": self.transport.destination,
            "status": self.status,
            "attempts": list(self.attempts),
            "body": self.body.decode(),
        }


class Dispatcher:
    """A queue of deliveries and the thread that works it off."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._ids = itertools.count(1)
        self._order = itertools.count()
        self._due: list[tuple[float, int, Delivery]] = []  # heap by monotonic due time
        self._sending = 0
        self._generation = 0  # a clear() makes the records of earlier sends stale
        self._records: deque[Delivery] = deque(maxlen=MAX_RECORDS)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(
        self,
        events: list[ThinEvent],
        transports: list[Transport],
        *,
        attempts: int,
        backoff_s: float,
    ) -> None:
        """Queue every event for every destination; returns at once."""
        if not events or not transports:
            return
        with self._changed:
            if self._closed:
                return
            for event in events:
                body = event.notification_body()
                for transport in transports:
                    delivery = Delivery(
                        f"deliv_{next(self._ids):06d}", event, body, transport, attempts, backoff_s
                    )
                    self._records.append(delivery)
                    heapq.heappush(self._due, (time.monotonic(), next(self._order), delivery))
            self._start()
            self._changed.notify_all()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="emulator-deliveries")
            self._thread.daemon = True
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed and not self._ready():
                    delay = self._due[0][0] - time.monotonic() if self._due else None
                    self._changed.wait(delay)
                if self._closed:
                    return
                _, _, delivery = heapq.heappop(self._due)
                self._sending += 1
                generation = self._generation
            try:
                self._attempt(delivery)
            finally:
                with self._changed:
                    self._sending -= 1
                    if generation == self._generation and delivery.status == "pending":
                        due = time.monotonic() + delivery.next_delay_s
                        delivery.next_delay_s *= 2
                        heapq.heappush(self._due, (due, next(self._order), delivery))
                    self._changed.notify_all()

    def _ready(self) -> bool:
        return bool(self._due) and self._due[0][0] <= time.monotonic()

    def _attempt(self, delivery: Delivery) -> None:
        sent_at = self._clock()
        started = time.perf_counter()
        status: int | None
        try:
            status = delivery.transport.send(delivery.body, delivery.event, sent_at)
            error = None
        except DeliveryError as failure:
            status, error = failure.status, str(failure)
        except Exception as failure:  # a destination's fault must not end the worker
            _log.exception("delivery %s failed unexpectedly", delivery.id)
            status, error = None, f"{type(failure).__name__}: {failure}"
        delivery.attempts.append(
            {
                "at": format_rfc3339(sent_at),
                "status": status,
                "error": error,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        )
        delivery.attempts_left -= 1
        if error is None:
            delivery.status = "delivered"
        elif delivery.attempts_left <= 0:
            delivery.status = "failed"

    # ----- reading and waiting -------------------------------------------------------------
    def pending(self) -> int:
        """Deliveries queued, waiting for a retry, or being sent."""
        with self._changed:
            return len(self._due) + self._sending

    def records(self) -> list[Delivery]:
        with self._changed:
            return list(self._records)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every delivery is delivered or has failed for good; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._due and not self._sending, timeout)

    # ----- lifecycle -----------------------------------------------------------------------
    def clear(self) -> None:
        """Forget every delivery (a reset); one being sent finishes, unrecorded, unretried."""
        with self._changed:
            self._due.clear()
            self._records.clear()
            self._generation += 1
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._due.clear()
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
