"""What a DLQ message holds, read with the forwarder's own parser.

Two kinds of message land in the dead-letter queue: the forwarder's own letters (one event, its
identifier written in, the reason in message attributes) and whole messages that SQS moved after
maxReceiveCount (the producer's body, no attributes). SQS keeps the messageId on that move, so
an event without an identifier takes the one the forwarder derived from it; events.py decides
which events a body holds and which identifier each has (parse_message, envelope_events,
normalise_event), here as in the forwarder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_ERROR_MESSAGE,
    ATTR_EVENT_INDEX,
    ATTR_FIRST_SEEN,
    ATTR_OUTCOME_UNKNOWN,
    ATTR_REPORTED_BY,
    ATTR_SOURCE_MESSAGE_ID,
    ATTR_VALIDATION_END,
)
from meter_relay.events import (
    ParsedEvent,
    ValidationRules,
    envelope_events,
    format_timestamp,
    normalise_event,
    parse_message,
    parse_rfc3339,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageTypeDef

REDRIVEN_CODE = "max_receive_count_exceeded"  # moved by the queue's RedrivePolicy
REDRIVEN_REASON = "moved after maxReceiveCount receives"
SYNC_REPLAY_PREFIX = "sync replay: "  # the reason of what a sync replay could not send
DEDUP_WINDOW = timedelta(hours=24)  # Stripe recognises an identifier again within this

# Reasons that pass: nothing is wrong with the events, sending them again is all they need.
# The codes a sync replay writes after a persistent 409/429/5xx or no answer are Stripe's
# (its code, else http_<status>, else no_answer); those letters also carry SYNC_REPLAY_PREFIX.
PASSING_CODES = frozenset(
    {
        REDRIVEN_CODE,
        "no_answer",
        "rate_limit",
        "account_rate_limit_exceeded",
        "too_many_concurrent_requests",
        "lock_timeout",
        "api_error",
    }
)
_PASSING_STATUS = re.compile(r"http_(5\d\d|409|429)")
# reasons that leave open whether Stripe took the events: no answer, a 500 (Stripe calls its
# outcome indeterminate), or receives spent on either. The ledger records only what Stripe
# answered 200, so it cannot say.
_OUTCOME_UNKNOWN_CODES = frozenset({REDRIVEN_CODE, "no_answer", "api_error"})
HTTP_5XX = re.compile(r"http_5\d\d")  # a letter's code for Stripe's 5xx


def is_passing(code: str, error_message: str = "") -> bool:
    """Whether a letter's reason is a passing one (Stripe's load, time, maxReceiveCount) rather
    than something wrong with its events, which sending again would not change."""
    return (
        code in PASSING_CODES
        or _PASSING_STATUS.fullmatch(code) is not None
        or error_message.startswith(SYNC_REPLAY_PREFIX)
    )


@dataclass(frozen=True)
class DlqEvent:
    """One event of a DLQ message, as it sits there (before any correction)."""

    parsed: ParsedEvent  # as the forwarder reads it: its identifier, valid or why not
    customer: str | None

    @property
    def index(self) -> int:
        return self.parsed.index

    @property
    def raw(self) -> Any:
        return self.parsed.raw

    @property
    def identifier(self) -> str | None:
        return self.parsed.identifier

    @property
    def event_name(self) -> str | None:
        return self.parsed.event_name

    def with_identity(self) -> Any:
        """The event with what a new messageId and SentTimestamp would change written in: its
        identifier, and the default timestamp (when its producer sent it). The forwarder's
        own rule for a letter's body (ParsedEvent.dead_letter_body)."""
        return json.loads(self.parsed.dead_letter_body())


@dataclass
class DlqMessage:
    message_id: str
    receipt_handle: str
    body: str
    code: str
    error_message: str
    source_message_id: str  # the usage-queue message it came from (identifiers derive from it)
    sent_at: datetime  # when the producer sent the original (the forwarder's default timestamp)
    first_seen: datetime  # when the forwarder first received it
    attributes: dict[str, str]  # message attributes (the letter's reason), as text
    sqs_attributes: dict[str, str]  # SentTimestamp, ApproximateReceiveCount, ...
    events: list[DlqEvent]
    redriven: bool  # moved by SQS (no attributes), not written by the forwarder or a tool
    envelope: bool  # the body is {"events": [...]} (a redrive keeps that shape)

    @property
    def age(self) -> timedelta:
        return datetime.now(UTC) - self.first_seen

    @property
    def passing(self) -> bool:
        return is_passing(self.code, self.error_message)

    @property
    def earliest(self) -> datetime:
        """The earliest its events can have reached Stripe: when first seen, or when sent. SQS
        keeps the enqueue time (SentTimestamp) of a message it moves to the DLQ, but its
        ApproximateFirstReceiveTimestamp may be the DLQ's first receive, after up to
        maxReceiveCount receives (12 hours at the template's 120) in which some of its events
        may have been delivered."""
        return min(self.first_seen, self.sent_at)

    @property
    def outcome_unknown(self) -> bool:
        """Its reason leaves open whether Stripe took its events (a timeout, a 5xx, or the
        receives SQS counted): what the ledger lacks, Stripe may still have."""
        return self.code in _OUTCOME_UNKNOWN_CODES or HTTP_5XX.fullmatch(self.code) is not None

    @property
    def may_be_counted(self) -> bool:
        """Whether Stripe may have counted some of its events: its reason leaves it open, or it
        was written for events of a letter whose reason did (ATTR_OUTCOME_UNKNOWN: a sync
        replay's 429 in place of "moved by SQS"). What `dlq cancel` may take back."""
        return self.outcome_unknown or self.attributes.get(ATTR_OUTCOME_UNKNOWN) == "true"

    @property
    def rejected_until(self) -> datetime | None:
        """A letter of Stripe's error report: Stripe dropped the delivery of its event made by
        the end of the report's window (ValidationEnd; else by when the letter was written), so
        only a later delivery is one Stripe has, whether or not the ledger recorded the report.
        None for any other letter."""
        if ATTR_REPORTED_BY not in self.attributes:
            return None
        return parse_rfc3339(self.attributes.get(ATTR_VALIDATION_END, "")) or self.sent_at

    @property
    def past_dedup_window(self) -> bool:
        """Its events may have reached Stripe more than 24 hours ago: what of it Stripe
        counted, it would count again."""
        return datetime.now(UTC) - self.earliest > DEDUP_WINDOW

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "code": self.code,
            "error_message": self.error_message,
            "source_message_id": self.source_message_id,
            "sent_at": format_timestamp(self.sent_at),
            "first_seen": format_timestamp(self.first_seen),
            "redriven": self.redriven,
            "attributes": self.attributes,
            "sqs_attributes": self.sqs_attributes,
            "identifiers": [e.identifier for e in self.events],
            "body": self.body,
        }


def _millis(value: str | None, default: datetime) -> datetime:
    try:
        return datetime.fromtimestamp(int(value or "") / 1000, UTC)
    except ValueError:
        return default


def read_message(message: MessageTypeDef, rules: ValidationRules) -> DlqMessage:
    """A received SQS message as a DlqMessage (both kinds; unusable bodies carry no event)."""
    attributes = {
        name: value.get("StringValue", "")
        for name, value in message.get("MessageAttributes", {}).items()
    }
    sqs_attributes: dict[str, str] = dict(message.get("Attributes", {}).items())
    now = datetime.now(UTC)
    sent_at = _millis(sqs_attributes.get("SentTimestamp"), now)
    first_seen = parse_rfc3339(attributes.get(ATTR_FIRST_SEEN, "")) or _millis(
        sqs_attributes.get("ApproximateFirstReceiveTimestamp"), sent_at
    )
    redriven = ATTR_ERROR_CODE not in attributes
    source = attributes.get(ATTR_SOURCE_MESSAGE_ID) or message["MessageId"]
    body = message.get("Body", "")
    index = attributes.get(ATTR_EVENT_INDEX)
    if index and not redriven:  # the forwarder's letter for one event of a message
        parsed, envelope = _letter_event(body, int(index), source, sent_at, rules, now), False
    else:  # a whole message: moved by SQS, a copy kept by a tool, or one the forwarder
        # could not read (those bodies hold no usable event: not JSON, not the contract)
        parsed, envelope = _whole_message(body, source, sent_at, rules, now)
    return DlqMessage(
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        body=body,
        code=attributes.get(ATTR_ERROR_CODE) or REDRIVEN_CODE,
        error_message=attributes.get(ATTR_ERROR_MESSAGE, REDRIVEN_REASON),
        source_message_id=source,
        sent_at=sent_at,
        first_seen=first_seen,
        attributes=attributes,
        sqs_attributes=sqs_attributes,
        events=[DlqEvent(event, _customer(event, rules)) for event in parsed],
        redriven=redriven,
        envelope=envelope,
    )


def _letter_event(
    body: str, index: int, source: str, sent_at: datetime, rules: ValidationRules, now: datetime
) -> list[ParsedEvent]:
    """The event of a one-event letter: its body is the event, identifier written in."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return []
    if not isinstance(document, dict):
        return []  # an envelope entry that was no object: nothing to send or to cancel
    return [normalise_event(document, index, source, sent_at, rules, now)]


def _whole_message(
    body: str, source: str, sent_at: datetime, rules: ValidationRules, now: datetime
) -> tuple[list[ParsedEvent], bool]:
    """The events of a whole message body as the forwarder reads them (events.parse_message),
    and whether the body is an envelope (events.envelope_events: a single event's document
    is its own one event)."""
    parsed = parse_message(body, source, sent_at, rules, now)
    if not parsed.events:
        return [], False
    try:
        document = json.loads(body.removeprefix("\ufeff"))
    except (ValueError, RecursionError):  # parse_message read it: it cannot be unreadable
        return parsed.events, True
    raw_events = envelope_events(document)
    single = isinstance(raw_events, list) and len(raw_events) == 1 and raw_events[0] is document
    return parsed.events, not single


def _customer(event: ParsedEvent, rules: ValidationRules) -> str | None:
    raw = event.raw
    if not isinstance(raw, dict) or not isinstance(raw.get("payload"), dict):
        return None
    customer = raw["payload"].get(rules.keys_for(event.event_name or "").customer_key)
    return customer if isinstance(customer, str) else None
