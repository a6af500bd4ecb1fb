"""DLQ messages for the unit tests, built with the forwarder's own code (parse_message,
DeadLetter), so that the tests read exactly what the forwarder writes; time is fixed (NOW,
SENT) where a test does not need the real now."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_EVENT_INDEX,
    ATTR_FIRST_SEEN,
    ATTR_IDENTIFIER,
    DeadLetter,
)
from meter_relay.dlq.reading import DlqMessage, read_message
from meter_relay.dlq.scan import DeadLetterReader
from meter_relay.events import ValidationRules, format_timestamp, parse_message
from tests.fakes import NOW, sqs_message

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

SENT = NOW - timedelta(seconds=30)
MID = "3f1c0d8e-1b2a-4c5d-9e8f-0a1b2c3d4e5f"
METER_KEYS = {"search_calls": {"customer_key": "customer", "value_key": "calls"}}
RULES = ValidationRules.from_settings(json.dumps(METER_KEYS), "positive_integer")
DLQ_URL = "https://sqs.example/dlq"
USAGE_URL = "https://sqs.example/usage"


def as_sqs(fake: object) -> SQSClient:
    """A fake SQS client where the tools take boto3's (the fakes have what they call)."""
    return cast("SQSClient", fake)


def reader(sqs: object, **options: Any) -> DeadLetterReader:
    return DeadLetterReader(as_sqs(sqs), DLQ_URL, RULES, **options)


def forwarder_letters(body: str, message_id: str = MID, sent: datetime = SENT) -> list[DeadLetter]:
    """The dead letters the forwarder writes for one usage-queue message it rejects (the
    rejections found before sending: the only kind the stream can give at once)."""
    parsed = parse_message(body, message_id, sent, RULES, sent + (NOW - SENT))
    seen = format_timestamp(sent)
    if parsed.rejection is not None:
        return [DeadLetter.for_message(body, parsed.rejection, message_id, seen)]
    return [
        DeadLetter.for_event(event, event.rejection, message_id, seen)
        for event in parsed.events
        if event.rejection is not None
    ]


def read_letter(letter: DeadLetter, message_id: str = "dlq-letter") -> DlqMessage:
    return read_message(sqs_message(letter.body, message_id, letter.attributes(), sent=NOW), RULES)


def dlq_message(
    code: str = "payload_invalid_value",
    event_name: str = "api_requests",
    customer: str = "cus_a",
    first_seen: datetime = SENT,
    message_id: str = "m",
) -> DlqMessage:
    """A forwarder's one-event letter with the given reason, customer and first sighting."""
    body = {"event_name": event_name, "payload": {"stripe_customer_id": customer}}
    attributes = {
        ATTR_ERROR_CODE: {"DataType": "String", "StringValue": code},
        ATTR_FIRST_SEEN: {"DataType": "String", "StringValue": format_timestamp(first_seen)},
        ATTR_EVENT_INDEX: {"DataType": "Number", "StringValue": "0"},
        ATTR_IDENTIFIER: {"DataType": "String", "StringValue": f"{message_id}-0"},
    }
    return read_message(sqs_message(json.dumps(body), message_id, attributes), RULES)


def recent(**delta: float) -> datetime:
    """A moment that far back from the real now, to whole seconds (as SentTimestamps are)."""
    return (datetime.now(UTC) - timedelta(**delta)).replace(microsecond=0)


def api_event(value: str, customer: str = "cus_a", **extra: Any) -> dict[str, Any]:
    payload = {"stripe_customer_id": customer, "value": value}
    return {"event_name": "api_requests", "payload": payload, **extra}
