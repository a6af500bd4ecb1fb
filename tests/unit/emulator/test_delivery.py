"""Pushing thin events: retries until a destination takes one or the attempts run out, every
attempt recorded, waiting without sleeping; and Stripe's webhook signature, as the official
SDK verifies it."""

from __future__ import annotations

import threading
import time

import pytest
import stripe

from devkit.emulator.delivery import DeliveryError, Dispatcher
from devkit.emulator.error_reports import ErrorReport, ErrorWindows
from devkit.emulator.v2_events import EventLog, ThinEvent
from devkit.emulator.webhooks import signature_header

SECRET = "whsec_unit_test_secret_value"


class Scripted:
    """A destination that fails with the given errors, in order, then takes every delivery."""

    kind = "webhook"

    def __init__(self, destination: str, *failures: Exception) -> None:
        self.destination = destination
        self.failures = list(failures)
        self.bodies: list[bytes] = []
        self.release = threading.Event()
        self.release.set()

    def send(self, body: bytes, event: ThinEvent, sent_at: float) -> int | None:
        self.release.wait(timeout=10)
        self.bodies.append(body)
        if self.failures:
            raise self.failures.pop(0)
        return 200


def events(count: int) -> list[ThinEvent]:
    log = EventLog()
    windows = ErrorWindows()
    for index in range(count):
        report = ErrorReport("no_meter", "m", f"id{index}", f"name{index}", 5.0, None)
        windows.add(report, 10, 3)
    return log.record(windows.close(10), 10)


@pytest.fixture
def dispatcher() -> Dispatcher:
    return Dispatcher(lambda: 1_800_000_000.0)


def test_a_delivery_is_retried_until_it_is_taken(dispatcher: Dispatcher) -> None:
    flaky = Scripted("http://flaky", DeliveryError("answered 500", 500), DeliveryError("refused"))
    [event] = events(1)

    dispatcher.submit([event], [flaky], attempts=4, backoff_s=0.01)

    assert dispatcher.wait_idle(10)
    [record] = [d.to_api() for d in dispatcher.records()]
    assert record["status"] == "delivered"
    assert [(a["status"], a["error"]) for a in record["attempts"]] == [
        (500, "answered 500"),
        (None, "refused"),
        (200, None),
    ]
    assert record["event"] == event.id
    assert record["body"] == event.notification_body().decode()
    assert flaky.bodies == [event.notification_body()] * 3
    assert dispatcher.pending() == 0


def test_a_delivery_fails_for_good_after_its_attempts(dispatcher: Dispatcher) -> None:
    down = Scripted("http://down", *(DeliveryError("answered 503", 503) for _ in range(6)))
    healthy = Scripted("http://ok")

    dispatcher.submit(events(2), [down, healthy], attempts=3, backoff_s=0)

    assert dispatcher.wait_idle(10)
    outcome = {(d.transport.destination, d.event.id): d for d in dispatcher.records()}
    assert len(outcome) == 4
    for (destination, _), delivery in outcome.items():
        expected = ("failed", 3) if destination == "http://down" else ("delivered", 1)
        assert (delivery.status, len(delivery.attempts)) == expected
    assert len(down.bodies) == 6  # two events, three attempts each
    assert len(healthy.bodies) == 2


def test_an_unexpected_error_is_a_failed_attempt_and_the_worker_goes_on(
    dispatcher: Dispatcher,
) -> None:
    broken = Scripted("http://broken", RuntimeError("boom"))
    dispatcher.submit(events(1), [broken], attempts=1, backoff_s=0)
    assert dispatcher.wait_idle(10)
    dispatcher.submit(events(1), [Scripted("http://ok")], attempts=1, backoff_s=0)
    assert dispatcher.wait_idle(10)
    assert [d.status for d in dispatcher.records()] == ["failed", "delivered"]
    assert dispatcher.records()[0].attempts[0]["error"] == "RuntimeError: boom"


def test_submit_returns_at_once_and_wait_idle_waits_for_the_send(dispatcher: Dispatcher) -> None:
    slow = Scripted("http://slow")
    slow.release.clear()

    dispatcher.submit(events(1), [slow], attempts=1, backoff_s=0)

    assert dispatcher.pending() == 1
    assert dispatcher.wait_idle(0.05) is False  # still being sent
    slow.release.set()
    assert dispatcher.wait_idle(10) is True
    assert [d.status for d in dispatcher.records()] == ["delivered"]


def test_clear_forgets_deliveries_and_their_retries(dispatcher: Dispatcher) -> None:
    failing = Scripted("http://x", *(DeliveryError("no") for _ in range(10)))
    dispatcher.submit(events(1), [failing], attempts=10, backoff_s=60)
    deadline = time.monotonic() + 10
    while not failing.bodies and time.monotonic() < deadline:
        time.sleep(0.01)

    dispatcher.clear()

    assert dispatcher.wait_idle(10)
    assert dispatcher.records() == []
    assert len(failing.bodies) == 1  # the retry a minute later was dropped


def test_close_stops_the_worker(dispatcher: Dispatcher) -> None:
    dispatcher.submit(events(1), [Scripted("http://ok")], attempts=1, backoff_s=0)
    dispatcher.close()
    dispatcher.submit(events(1), [Scripted("http://ok")], attempts=1, backoff_s=0)
    assert dispatcher.pending() == 0


def test_the_signature_is_the_one_the_sdk_verifies() -> None:
    body = b'{\n  "id": "evt_test_1"\n}'
    timestamp = int(time.time())
    header = signature_header(body, SECRET, timestamp)

    assert header.startswith(f"t={timestamp},v1=")
    assert stripe.WebhookSignature.verify_header(body.decode(), header, SECRET, 300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body.decode(), header, SECRET + "x", 300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body.decode() + " ", header, SECRET, 300)
