"""What docs/producers.md says of SNS- and EventBridge-wrapped bodies: not in the contract, so
dead-lettered whole, raw body kept; unwrapped (raw message delivery, InputPath $.detail), the
same events pass."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from meter_relay.events import ErrorCode, ValidationRules, parse_message
from tests.message_schema import events_in

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RULES = ValidationRules.from_settings("{}", "positive_integer")
EVENT = {
    "event_name": "api_requests",
    "identifier": "order-8812-line-1",
    "payload": {"stripe_customer_id": "cus_NciAYcXfLnqBoz", "value": "25"},
}
SNS_NOTIFICATION = {  # what SNS puts on a queue without raw message delivery
    "Type": "Notification",
    "MessageId": "2f1b7b86-7a0e-5b7e-9f56-2f3c2f9f0001",
    "TopicArn": "arn:aws:sns:us-east-1:123456789012:usage",
    "Message": json.dumps(EVENT),
    "Timestamp": "2026-06-01T12:00:00.000Z",
    "SignatureVersion": "1",
    "Signature": "c2lnbmF0dXJl",
    "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
    "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
}
EVENTBRIDGE_EVENT = {  # what an EventBridge rule's SQS target sends without InputPath
    "version": "0",
    "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
    "detail-type": "usage",
    "source": "com.example.billing",
    "account": "123456789012",
    "time": "2026-06-01T12:00:00Z",
    "region": "us-east-1",
    "resources": [],
    "detail": EVENT,
}


@pytest.mark.parametrize(
    ("wrapped", "param"), [(SNS_NOTIFICATION, "Message"), (EVENTBRIDGE_EVENT, "account")]
)
def test_a_wrapped_body_is_dead_lettered_whole(wrapped: dict[str, Any], param: str) -> None:
    body = json.dumps(wrapped)
    with pytest.raises(AssertionError, match="refused by"):
        events_in(body)
    [event] = parse_message(body, "message-1", NOW, RULES, NOW).events
    assert event.event is None
    assert event.rejection is not None
    assert (event.rejection.code, event.rejection.param) == (ErrorCode.PARAMETER_UNKNOWN, param)
    assert event.raw == wrapped  # the letter keeps it all, the events inside included


@pytest.mark.parametrize(
    "unwrapped", [SNS_NOTIFICATION["Message"], json.dumps(EVENTBRIDGE_EVENT["detail"])]
)
def test_the_unwrapped_body_is_delivered(unwrapped: str) -> None:
    assert events_in(unwrapped) == [EVENT]
    [event] = parse_message(unwrapped, "message-1", NOW, RULES, NOW).events
    assert event.rejection is None
    assert event.identifier == EVENT["identifier"]
