"""Discard against a fake SQS: every message written to the operator's file before it is
deleted; exactly the chosen events of a mixed envelope discarded, the others kept as a letter
with the message's own reason."""

from __future__ import annotations

import io
import json

import pytest

from meter_relay.dlq.discard import Discarder
from meter_relay.dlq.reading import read_message
from meter_relay.dlq.runs import Action
from meter_relay.dlq.selection import Filters
from tests.fakes import FakeSqs, StubSqs, sqs_message
from tests.unit.relay.dlq.builders import DLQ_URL, MID, RULES, api_event, reader


class Recording(io.StringIO):
    """The discard file; it notes how many messages the DLQ held at each write."""

    def __init__(self, sqs: FakeSqs) -> None:
        super().__init__()
        self.sqs = sqs
        self.depths: list[int] = []

    def flush(self) -> None:
        self.depths.append(len(self.sqs.bodies(DLQ_URL)))
        super().flush()


def test_a_discard_writes_each_message_down_before_deleting_it() -> None:
    sqs = FakeSqs()
    sqs.create_queue(DLQ_URL)
    ids = [sqs.put(DLQ_URL, json.dumps(api_event("0", identifier=f"d-{n}"))) for n in range(3)]
    record = Recording(sqs)
    summary = Discarder(reader(sqs), record).discard(Filters())
    assert summary.counts() == {"discarded": 3}
    assert record.depths == [3]  # written (and flushed) while all three were still there
    lines = [json.loads(line) for line in record.getvalue().splitlines()]
    assert sorted(line["message_id"] for line in lines) == sorted(ids)
    assert all(line["whole"] and line["body"] and "sqs_attributes" in line for line in lines)
    assert sqs.bodies(DLQ_URL) == []


def test_exactly_the_chosen_events_of_a_mixed_envelope_are_discarded() -> None:
    sqs = FakeSqs()
    sqs.create_queue(DLQ_URL)
    envelope = {
        "events": [api_event("1", "cus_a"), api_event("1", "cus_b"), api_event("2", "cus_a")]
    }
    sqs.put(DLQ_URL, json.dumps(envelope))
    record = io.StringIO()
    summary = Discarder(reader(sqs), record).discard(Filters(customers={"cus_a"}))
    (outcome,) = summary.outcomes
    assert outcome.action is Action.PARTLY_DISCARDED
    (line,) = [json.loads(x) for x in record.getvalue().splitlines()]
    source = line["message_id"]
    assert line["discarded_identifiers"] == [f"{source}-0", f"{source}-2"]
    assert line["kept_identifiers"] == [f"{source}-1"]
    assert line["whole"] is False
    (kept,) = sqs.queues[DLQ_URL].messages.values()  # cus_b's event, as a letter of its own
    letter = read_message(sqs_message(kept.body, kept.message_id, kept.attributes), RULES)
    assert [(e.identifier, e.customer) for e in letter.events] == [(f"{source}-1", "cus_b")]
    assert letter.code == "max_receive_count_exceeded"  # the message's own reason
    assert letter.source_message_id == source


def test_what_a_discard_keeps_of_a_large_envelope_goes_back_as_several_letters() -> None:
    """Written with their identity in, the events kept of a message SQS took may not fit in
    one letter: they are kept in several, each within SQS's limit, every event once."""
    sqs = FakeSqs()
    sqs.create_queue(DLQ_URL)
    customers = ["cus_a"] + ["cus_b"] * 2500
    envelope = {"events": [api_event("1", customer) for customer in customers]}
    source = sqs.put(DLQ_URL, json.dumps(envelope))
    summary = Discarder(reader(sqs), io.StringIO()).discard(Filters(customers={"cus_a"}))
    assert [o.action for o in summary.outcomes] == [Action.PARTLY_DISCARDED]
    kept = list(sqs.queues[DLQ_URL].messages.values())
    assert len(kept) > 1
    letters = [read_message(sqs_message(x.body, x.message_id, x.attributes), RULES) for x in kept]
    assert sorted(str(e.identifier) for x in letters for e in x.events) == sorted(
        f"{source}-{i}" for i in range(1, 2501)
    )


def test_a_dry_run_needs_no_file_and_deletes_nothing() -> None:
    sqs = StubSqs([[sqs_message(json.dumps(api_event("1")), MID)]])
    summary = Discarder(reader(sqs), None, dry_run=True).discard(Filters())
    assert [o.action for o in summary.outcomes] == [Action.WOULD_DISCARD]
    assert "delete" not in sqs.names()


def test_a_discard_without_a_file_is_refused() -> None:
    with pytest.raises(ValueError, match="writes what it deletes to a file first"):
        Discarder(reader(StubSqs([])), None)


def test_what_sqs_did_not_delete_is_noted_in_the_file() -> None:
    sqs = StubSqs([[sqs_message(json.dumps(api_event("1")), MID)]])
    sqs.fail_delete = True
    record = io.StringIO()
    summary = Discarder(reader(sqs), record).discard(Filters())
    (outcome,) = summary.outcomes
    assert (outcome.action, outcome.code) == (Action.KEPT, "aws_error")
    first, undone = (json.loads(x) for x in record.getvalue().splitlines())
    assert first["message_id"] == MID
    assert undone["message_id"] == MID
    assert "InternalError" in undone["not_deleted"]
