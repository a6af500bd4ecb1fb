"""Which of a window's events the ledger says Stripe has: the ledger is asked from the earliest
moment any of them can have been delivered."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from meter_relay.dead_letter import (
    ATTR_REPORTED_BY,
    ATTR_STRIPE_EVENT_ID,
    ATTR_VALIDATION_END,
    DeadLetter,
)
from meter_relay.dlq.delivered import delivered_among
from meter_relay.dlq.letters import remainder_letters, rest_letters
from meter_relay.dlq.reading import DlqMessage, read_message
from meter_relay.error_reports import REPORTED_BY_STRIPE
from meter_relay.events import Rejection, format_timestamp
from tests.fakes import MAX_SQS_ATTRIBUTES, NOW, sqs_message
from tests.unit.relay.dlq.builders import RULES, api_event, dlq_message, recent


class Lookup:
    """The ledger, as far as asked: the identifiers it knows (all, by default) delivered at
    `at` and not reported rejected since; the `since` it was asked from."""

    def __init__(self, at: datetime = NOW, known: set[str] | None = None) -> None:
        self.since: list[datetime] = []
        self.at = at
        self.known = known  # None: every identifier asked about

    def delivered(self, identifiers: Sequence[str], since: datetime) -> dict[str, datetime]:
        self.since.append(since)
        return {i: self.at for i in identifiers if self.known is None or i in self.known}


def report_letter(validation_end: datetime | None) -> DlqMessage:
    """The letter of an event Stripe's error report named, as the error-reports function
    writes it (read back from the DLQ half an hour after the window)."""
    more = [(ATTR_REPORTED_BY, REPORTED_BY_STRIPE), (ATTR_STRIPE_EVENT_ID, "evt_1")]
    if validation_end is not None:
        more.append((ATTR_VALIDATION_END, format_timestamp(validation_end)))
    letter = DeadLetter(
        json.dumps(api_event("4", identifier="gone-1")),
        "meter_event_customer_not_found",
        "no such customer",
        "",
        format_timestamp(NOW - timedelta(hours=2)),
        identifier="gone-1",
        more=tuple(more),
    )
    sent = NOW - timedelta(minutes=30)
    return read_message(sqs_message(letter.body, "report", letter.attributes(), sent=sent), RULES)


def test_a_message_sqs_moved_is_asked_about_from_when_it_was_sent() -> None:
    """120 receives span 12 hours: events of it delivered then are older than its first
    receive from the DLQ, which is what ApproximateFirstReceiveTimestamp may say after a move."""
    sent = NOW - timedelta(hours=30)
    body = json.dumps({"events": [api_event("1", identifier="env-1")]})
    moved = read_message(sqs_message(body, "moved", sent=sent, first_receive=NOW), RULES)
    lookup = Lookup()

    assert delivered_among(lookup, [(moved, ["env-1"])]) == {"moved": {"env-1"}}
    assert lookup.since == [sent]
    assert delivered_among(Lookup(known=set()), [(moved, ["env-1"])]) == {"moved": set()}
    assert moved.past_dedup_window  # sent 30 hours ago, whatever its first receive says


def test_a_letter_is_asked_about_from_when_the_forwarder_first_saw_its_message() -> None:
    seen = NOW - timedelta(hours=5)
    letter = dlq_message(first_seen=seen, message_id="letter")
    older = dlq_message(first_seen=seen - timedelta(hours=2), message_id="older")
    lookup = Lookup()

    delivered_among(lookup, [(letter, ["letter-0"]), (older, ["older-0"])])

    assert lookup.since == [seen - timedelta(hours=2)]


def test_an_event_stamped_before_its_message_is_asked_about_from_its_timestamp() -> None:
    """A producer's resend, in a new message, of an event it sent (and the relay delivered)
    hours before: Stripe has it while within its 24 hours, so the ledger is asked from the
    event's timestamp, but never more than 24 hours before the message was first seen."""
    seen = recent(hours=30)  # judged by the real clock, as a replay judges it
    for stamped, asked in (
        (seen - timedelta(hours=3), seen - timedelta(hours=3)),
        (seen - timedelta(days=3), seen - timedelta(hours=24)),  # Stripe would count it again
        (seen + timedelta(minutes=2), seen),
    ):
        event = api_event("1", identifier="resent-1", timestamp=format_timestamp(stamped))
        message = read_message(sqs_message(json.dumps(event), "resend", sent=seen), RULES)
        lookup = Lookup()
        assert delivered_among(lookup, [(message, ["resent-1"])]) == {"resend": {"resent-1"}}
        assert lookup.since == [asked]


def test_without_a_ledger_nothing_is_delivered() -> None:
    assert delivered_among(None, [(dlq_message(), ["m-0"])]) == {}


def test_a_stripe_report_letter_counts_only_a_delivery_after_the_report_window() -> None:
    """The ledger may miss the report (its write failed): the delivery Stripe rejected then
    reads as delivered. The letter itself says it was rejected by the window's end."""
    end = NOW - timedelta(hours=1)
    letter = report_letter(end)
    assert letter.rejected_until == end
    before, after = Lookup(at=end - timedelta(minutes=5)), Lookup(at=end + timedelta(minutes=5))

    assert delivered_among(before, [(letter, ["gone-1"])]) == {"report": set()}
    assert delivered_among(after, [(letter, ["gone-1"])]) == {"report": {"gone-1"}}  # a replay


def test_a_report_letter_without_its_window_counts_deliveries_after_it_was_written() -> None:
    letter = report_letter(None)
    assert letter.rejected_until == NOW - timedelta(minutes=30)
    assert delivered_among(Lookup(at=NOW - timedelta(hours=1)), [(letter, ["gone-1"])]) == {
        "report": set()
    }
    assert dlq_message().rejected_until is None  # the forwarder's own letter


def test_letters_written_again_keep_the_report_and_the_earliest_sighting() -> None:
    """What a replay or a discard writes back: still a report's letter (else a later replay
    takes the rejected delivery for Stripe's), and first seen when the message was sent, not
    when the DLQ first gave a moved message out (else the ledger is asked too late)."""
    end = NOW - timedelta(hours=1)
    report = report_letter(end)
    (event,) = report.events
    (rewritten,) = remainder_letters(report, [event])
    again = read_message(sqs_message(rewritten.body, "again", rewritten.attributes()), RULES)
    assert again.rejected_until == end
    assert again.events[0].identifier == "gone-1"
    # SQS takes 10 attributes a message: with the refusal's param and the event's index too
    (refused,) = rest_letters(
        report, [event.parsed], Rejection("payload_invalid_value", "x", "value")
    )
    assert len(refused.attributes()) <= MAX_SQS_ATTRIBUTES

    sent = NOW - timedelta(hours=30)
    body = json.dumps({"events": [api_event("1", identifier=f"env-{i}") for i in range(2)]})
    moved = read_message(sqs_message(body, "moved", sent=sent, first_receive=NOW), RULES)
    for rest in (moved.events[:1], moved.events):
        (letter,) = remainder_letters(moved, rest)
        read = read_message(sqs_message(letter.body, "rest", letter.attributes()), RULES)
        assert read.earliest == sent
        assert read.rejected_until is None


def test_the_reasons_that_leave_open_whether_stripe_took_the_events() -> None:
    unknown = ["no_answer", "api_error", "http_500", "http_503", "max_receive_count_exceeded"]
    known = ["rate_limit", "http_429", "http_409", "payload_invalid_value", "no_meter"]
    assert [c for c in unknown + known if dlq_message(code=c).outcome_unknown] == unknown
