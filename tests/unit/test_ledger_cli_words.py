"""What `meter-relay trace` says of an unknown event: where it looked, and where it did not."""

from __future__ import annotations

from meter_relay.ledger_cli import _unseen


def test_an_unknown_event_is_said_to_be_nowhere_only_when_the_whole_dlq_was_read() -> None:
    whole = {"seen": 3, "depth": 3, "shortfall": None}
    part = {"seen": 10, "depth": 40, "shortfall": "seen 10 of ~40 messages (in flight)"}
    assert _unseen(whole) == "not in the ledger (widen --since?) nor in the DLQ"
    assert _unseen(None) == "not in the ledger (widen --since?); the DLQ was not read"
    assert _unseen(part) == (
        "not in the ledger (widen --since?), nor in the part of the DLQ read: "
        "seen 10 of ~40 messages (in flight)"
    )
