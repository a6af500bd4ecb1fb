"""Which of a window's events the ledger says Stripe has: the ledger is asked from the earliest
moment any of them can have been delivered."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from meter_relay.dlq.delivered import delivered_among
from meter_relay.dlq.reading import read_message
from tests.fakes import NOW, sqs_message
from tests.unit.relay.dlq.builders import RULES, api_event, dlq_message


class Lookup:
    """The ledger, as far as asked: every identifier delivered; the `since` it was asked from."""

    def __init__(self) -> None:
        self.since: list[datetime] = []

    def delivered(self, identifiers: Sequence[str], since: datetime) -> set[str]:
        self.since.append(since)
        return set(identifiers)


def test_a_message_sqs_moved_is_asked_about_from_when_it_was_sent() -> None:
    """120 receives span 12 hours: events of it delivered then are older than its first
    receive from the DLQ, which is what ApproximateFirstReceiveTimestamp may say after a move."""
    sent = NOW - timedelta(hours=30)
    body = json.dumps({"events": [api_event("1", identifier="env-1")]})
    moved = read_message(sqs_message(body, "moved", sent=sent, first_receive=NOW), RULES)
    lookup = Lookup()

    assert delivered_among(lookup, [(moved, ["env-1"])]) == {"env-1"}
    assert lookup.since == [sent]
    assert moved.past_dedup_window  # sent 30 hours ago, whatever its first receive says


def test_a_letter_is_asked_about_from_when_the_forwarder_first_saw_its_message() -> None:
    seen = NOW - timedelta(hours=5)
    letter = dlq_message(first_seen=seen, message_id="letter")
    older = dlq_message(first_seen=seen - timedelta(hours=2), message_id="older")
    lookup = Lookup()

    delivered_among(lookup, [(letter, ["letter-0"]), (older, ["older-0"])])

    assert lookup.since == [seen - timedelta(hours=2)]


def test_without_a_ledger_nothing_is_delivered() -> None:
    assert delivered_among(None, [(dlq_message(), ["m-0"])]) == set()
