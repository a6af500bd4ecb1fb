"""How many bytes one event takes in the delivery ledger: Zstandard JSON Lines at level 1, as the
forwarder writes them (meter_relay.ledger.ledger_text, then compress), for the two shapes of
traffic that bound it; and the CPU the two steps take per event, each the best of 20 runs on
warm objects (in the forwarder the lines cost more: they are the first touch of each event
since it was read).

Identifiers and SQS message ids are what does not compress: a producer's random identifier per
event (single-event messages) against identifiers derived from one message id per envelope.

    .venv/bin/python scripts/ledger_size.py
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from meter_relay.events import MeterEvent, ValidationRules, format_timestamp
from meter_relay.ledger import compress, ledger_text

EVENTS = 10_000
NOW = datetime(2026, 12, 5, 15, tzinfo=UTC)
REQUEST_ID = "5f0c6a1e-0001-4c1b-9a51-000000000001"  # one invocation's object
RUNS = 20


def best_microseconds(step: Callable[[], object], per: int) -> float:
    """The fastest of RUNS runs of `step`, in microseconds per one of `per`."""
    fastest = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        step()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest / per * 1e6


def main() -> None:
    rng = random.Random(1)  # noqa: S311 (test data)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128)))

    def delivered(identifier: str, message_id: str, *, text: bool = True) -> tuple[MeterEvent, str]:
        event = MeterEvent(
            "api_requests",
            {
                "stripe_customer_id": f"cus_{rng.randrange(5000):06d}",
                "value": str(rng.randrange(1, 100)),
            },
            identifier,
            format_timestamp(NOW - timedelta(seconds=rng.randrange(3600))),
        )
        if text:  # a single-event body, as producers send it; an envelope's events keep none
            event.source = json.dumps(event.to_stripe(), separators=(",", ":"))
        return event, message_id

    single = [delivered(f"order-{uid()}", uid()) for _ in range(EVENTS)]
    envelopes: list[tuple[MeterEvent, str]] = []
    while len(envelopes) < EVENTS:
        message_id = uid()
        envelopes += [
            delivered(f"{message_id}-{index}", message_id, text=False) for index in range(100)
        ]
    for shape, events in (
        ("single events, a producer's random identifier each", single),
        ("envelopes of 100, identifiers derived from the message id", envelopes),
    ):
        print(f"{shape}: {measured(events)}")


def measured(events: list[tuple[MeterEvent, str]]) -> str:
    sent, message_ids = zip(*events, strict=True)
    rules = ValidationRules()
    text = ledger_text(sent, message_ids, rules, NOW, REQUEST_ID)
    lines = best_microseconds(
        lambda: ledger_text(sent, message_ids, rules, NOW, REQUEST_ID), len(events)
    )
    compressing = best_microseconds(lambda: compress(text), len(events))
    return (
        f"{len(compress(text)) / len(events):.1f} bytes per event "
        f"({len(text) / len(events):.0f} uncompressed); CPU per event: lines {lines:.3f} µs, "
        f"compression {compressing:.3f} µs"
    )


if __name__ == "__main__":
    main()
