"""How many bytes one event takes in the delivery ledger: gzip JSON Lines at level 1, as the
forwarder writes them (meter_relay.ledger.encode), for the two shapes of traffic that bound it.

Identifiers and SQS message ids are what does not compress: a producer's random identifier per
event (single-event messages) against identifiers derived from one message id per envelope.

    .venv/bin/python scripts/ledger_size.py
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from meter_relay.events import format_timestamp
from meter_relay.ledger import LedgerLine, encode

EVENTS = 10_000
NOW = datetime(2026, 12, 5, 15, tzinfo=UTC)
REQUEST_ID = "5f0c6a1e-0001-4c1b-9a51-000000000001"  # one invocation's object


def main() -> None:
    rng = random.Random(1)  # noqa: S311 (test data)

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128)))

    def line(identifier: str, message_id: str) -> LedgerLine:
        return LedgerLine(
            identifier,
            "api_requests",
            f"cus_{rng.randrange(5000):06d}",
            str(rng.randrange(1, 100)),
            format_timestamp(NOW - timedelta(seconds=rng.randrange(3600))),
            format_timestamp(NOW),
            message_id,
            REQUEST_ID,
        )

    single = [line(f"order-{uid()}", uid()) for _ in range(EVENTS)]
    envelopes: list[LedgerLine] = []
    while len(envelopes) < EVENTS:
        message_id = uid()
        envelopes += [line(f"{message_id}-{index}", message_id) for index in range(100)]
    for shape, lines in (
        ("single events, a producer's random identifier each", single),
        ("envelopes of 100, identifiers derived from the message id", envelopes),
    ):
        print(f"{shape}: {len(encode(lines)) / len(lines):.1f} bytes per event")


if __name__ == "__main__":
    main()
