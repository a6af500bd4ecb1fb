"""Redrive against a fake SQS: whole messages back to the usage queue with each event's
identity written in, envelopes kept whole, deleted only once SQS confirmed the copy; passing
reasons by default, the others left and counted by reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from meter_relay.dead_letter import DeadLetter
from meter_relay.dlq.reading import read_message
from meter_relay.dlq.redrive import Redriver, redrive_body
from meter_relay.dlq.resend import UsageQueue
from meter_relay.dlq.runs import Action
from meter_relay.dlq.selection import Filters, Reasons
from meter_relay.events import format_timestamp
from tests.fakes import FakeSqs, StubSqs, sends, sqs_message
from tests.unit.relay.dlq.builders import (
    DLQ_URL,
    MID,
    RULES,
    USAGE_URL,
    api_event,
    as_sqs,
    forwarder_letters,
    reader,
    recent,
)


def test_the_body_carries_each_events_identity_and_keeps_its_shape() -> None:
    sent = recent(hours=2)
    envelope = {"events": [api_event("1"), api_event("2", identifier="given"), "not an event"]}
    message = read_message(sqs_message(json.dumps(envelope), MID, sent=sent), RULES)
    body = json.loads(str(redrive_body(message)))
    assert [e.get("identifier") if isinstance(e, dict) else e for e in body["events"]] == [
        f"{MID}-0",
        "given",
        "not an event",  # kept as it came: the forwarder dead-letters it again, alone
    ]
    assert {e["timestamp"] for e in body["events"][:2]} == {format_timestamp(sent)}

    single = read_message(sqs_message(json.dumps(api_event("1")), MID, sent=sent), RULES)
    assert json.loads(str(redrive_body(single)))["identifier"] == f"{MID}-0"  # not an envelope
    assert redrive_body(read_message(sqs_message("nope", MID), RULES)) is None


def test_a_redriven_body_read_again_under_a_new_id_keeps_every_identifier() -> None:
    """What the console's move gets wrong: the copy has a new messageId."""
    envelope = {"events": [api_event("1"), api_event("2"), api_event("3", identifier="p")]}
    original = read_message(sqs_message(json.dumps(envelope), MID, sent=recent(hours=1)), RULES)
    copy = read_message(sqs_message(str(redrive_body(original)), "new-id"), RULES)
    assert [e.identifier for e in copy.events] == [e.identifier for e in original.events]
    assert [e.identifier for e in copy.events] == [f"{MID}-0", f"{MID}-1", "p"]


def redriver(sqs: Any, **options: Any) -> Redriver:
    return Redriver(
        reader(sqs, **options.pop("reader", {})), UsageQueue(as_sqs(sqs), USAGE_URL), **options
    )


def test_passing_reasons_go_and_the_others_stay_counted_by_reason() -> None:
    sqs = FakeSqs()
    sqs.create_queue(DLQ_URL)
    sqs.create_queue(USAGE_URL)
    moved = [sqs.put(DLQ_URL, json.dumps(api_event("1", identifier=f"m-{n}"))) for n in range(3)]
    for letter in forwarder_letters(json.dumps({"events": [api_event("0"), api_event("-1")]})):
        sqs.put(DLQ_URL, letter.body, letter.attributes())
    transient = DeadLetter(
        json.dumps(
            {"events": [api_event("1", identifier="t-0"), api_event("1", identifier="t-1")]}
        ),
        "http_503",
        "sync replay: HTTP 503: busy",
        "source-t",
        format_timestamp(datetime.now(UTC)),
    )
    sqs.put(DLQ_URL, transient.body, transient.attributes())

    summary = redriver(sqs).redrive(Filters(reasons=Reasons.PASSING))
    assert summary.counts() == {"redriven": 4}
    assert summary.not_selected == {"payload_invalid_value": 2}
    assert summary.complete
    assert sorted(o.message_id for o in summary.outcomes if o.message_id in moved) == sorted(moved)
    on_queue = [json.loads(b) for b in sqs.bodies(USAGE_URL)]
    identifiers = sorted(e["identifier"] for b in on_queue for e in b.get("events", [b]))
    assert identifiers == ["m-0", "m-1", "m-2", "t-0", "t-1"]
    assert len(sqs.bodies(DLQ_URL)) == 2  # the two letters the forwarder would refuse again
    assert sqs.in_flight(DLQ_URL) == 0


def test_a_message_whose_copy_sqs_did_not_confirm_stays() -> None:
    sqs = StubSqs([[sqs_message(json.dumps(api_event("1")), MID)]])
    sqs.fail_send_to = USAGE_URL
    summary = Redriver(reader(sqs), UsageQueue(as_sqs(sqs), USAGE_URL)).redrive(Filters())
    (outcome,) = summary.outcomes
    assert (outcome.action, outcome.code) == (Action.KEPT, "aws_error")
    assert "delete" not in sqs.names()
    assert sqs.released() == [f"rh-{MID}"]
    assert summary.unreachable


def test_a_dry_run_moves_nothing() -> None:
    sqs = StubSqs([[sqs_message(json.dumps({"events": [api_event("1")] * 3}), MID)]])
    summary = Redriver(reader(sqs), UsageQueue(as_sqs(sqs), USAGE_URL), dry_run=True).redrive(
        Filters()
    )
    (outcome,) = summary.outcomes
    assert (outcome.action, outcome.detail) == (Action.WOULD_REDRIVE, "3 events to the usage queue")
    assert outcome.identifiers == [f"{MID}-{n}" for n in range(3)]
    assert sends(sqs) == []
    assert "delete" not in sqs.names()


def test_a_body_without_events_is_skipped_and_a_day_old_one_warned() -> None:
    day_ago = datetime.now(UTC) - timedelta(hours=25)
    sqs = StubSqs(
        [
            [
                sqs_message("not json", "junk"),
                sqs_message(json.dumps(api_event("1")), "old", first_receive=day_ago),
            ]
        ]
    )
    summary = Redriver(reader(sqs), UsageQueue(as_sqs(sqs), USAGE_URL)).redrive(Filters())
    junk, old = summary.outcomes
    assert (junk.action, old.action) == (Action.SKIPPED, Action.REDRIVEN)
    assert old.warnings[0].startswith("first seen more than 24 hours ago")


class RefusingEntries:
    """SendMessageBatch as SQS answers when it refuses some entries (a 200 with Failed):
    each body in `refuse` is refused that many times, then taken."""

    def __init__(self, refuse: dict[str, int]) -> None:
        self.refuse = dict(refuse)
        self.taken: list[str] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        failed, successful = [], []
        for entry in Entries:
            body = entry["MessageBody"]
            if self.refuse.get(body, 0) > 0:
                self.refuse[body] -= 1
                failed.append({"Id": entry["Id"], "Code": "InternalError", "Message": "busy"})
            else:
                self.taken.append(body)
                successful.append({"Id": entry["Id"], "MessageId": f"m-{len(self.taken)}"})
        return {"Successful": successful, "Failed": failed}


def test_entries_sqs_refuses_are_sent_again_and_only_those_that_never_go_fail() -> None:
    """A partial batch failure names entries by Id: the error of each must land on its own
    body (a wrong mapping would delete a DLQ message whose copy SQS never took)."""
    bodies = [f"body-{n}" for n in range(12)]  # two batches
    sqs = RefusingEntries({"body-3": 1, "body-10": 99})
    errors = UsageQueue(as_sqs(sqs), USAGE_URL).send(bodies)

    assert [n for n, error in enumerate(errors) if error is not None] == [10]
    assert errors[10] == "InternalError: busy"
    assert sorted(sqs.taken) == sorted(b for b in bodies if b != "body-10")
    assert sqs.taken.count("body-3") == 1  # refused once, then sent once
