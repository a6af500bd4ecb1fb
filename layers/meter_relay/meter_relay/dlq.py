"""Dead-letter operations: read the DLQ, select, correct, replay and cancel.

What sits in the dead-letter queue is money not yet billed, or billed wrongly. Two kinds of
message land there: the forwarder's own dead letters (one event, its identifier written in, the
reason in message attributes) and whole messages that SQS moved after `maxReceiveCount`
(the producer's body, no attributes; SQS keeps the messageId on that move, so identifiers are
derived exactly as the forwarder derived them). Both are read into `DlqMessage`s.

Principles kept here: identifiers never change; a message leaves the DLQ only after what it
carries is safely elsewhere (on the usage queue, or accepted by Stripe); a dry run changes
nothing; listing gives every message back at once.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Generator, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_ERROR_MESSAGE,
    ATTR_EVENT_INDEX,
    ATTR_FIRST_SEEN,
    ATTR_IDENTIFIER,
    ATTR_SOURCE_MESSAGE_ID,
    DeadLetter,
    DeadLetterQueue,
)
from meter_relay.events import (
    MAX_IDENTIFIER_LENGTH,
    ErrorCode,
    ParsedEvent,
    Rejection,
    ValidationRules,
    derive_identifier,
    format_timestamp,
    normalise_event,
    parse_rfc3339,
)
from meter_relay.sqs_batches import in_tens
from meter_relay.stripe_client import Kind, StripeAnswer, StripeApi

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

REDRIVEN_CODE = "max_receive_count_exceeded"  # moved by the queue's RedrivePolicy
DEDUP_WINDOW = timedelta(hours=24)
CANCEL_WINDOW = timedelta(hours=24)
SCAN_HOLD_SECONDS = 120  # a scan hides what it receives this long, again and again while it runs
SCAN_IDLE_RECEIVES = 3  # receives in a row that bring nothing new end a scan, whatever the count
SYNC_ATTEMPTS = 4
# Under a deadline: the time kept back for the DLQ writes after the last Stripe call, and the
# least time a Stripe call is started with (each attempt's timeout is bounded by what is left).
SETTLE_SECONDS = 5.0
MIN_ATTEMPT_SECONDS = 1.0


# ----- reading ---------------------------------------------------------------------------------
@dataclass
class DlqEvent:
    """One event carried by a DLQ message, as it sits there (before any correction)."""

    index: int
    raw: Any
    identifier: str | None
    event_name: str | None
    customer: str | None


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
    attributes: dict[str, str]
    events: list[DlqEvent]
    redriven: bool

    @property
    def age(self) -> timedelta:
        return datetime.now(UTC) - self.first_seen

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
            "identifiers": [e.identifier for e in self.events],
            "body": self.body,
        }


def _millis(value: str | None, default: datetime) -> datetime:
    try:
        return datetime.fromtimestamp(int(value or "") / 1000, UTC)
    except ValueError:
        return default


def read_message(message: MessageTypeDef, rules: ValidationRules) -> DlqMessage:
    """A received SQS message as a DlqMessage (both kinds; unparseable bodies carry no event)."""
    attributes = {
        name: value.get("StringValue", "")
        for name, value in message.get("MessageAttributes", {}).items()
    }
    sqs_attributes = message.get("Attributes", {})
    now = datetime.now(UTC)
    sent_at = _millis(sqs_attributes.get("SentTimestamp"), now)
    first_seen = parse_rfc3339(attributes.get(ATTR_FIRST_SEEN, "")) or _millis(
        sqs_attributes.get("ApproximateFirstReceiveTimestamp"), sent_at
    )
    redriven = ATTR_ERROR_CODE not in attributes
    source = attributes.get(ATTR_SOURCE_MESSAGE_ID) or message["MessageId"]
    body = message.get("Body", "")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    index_attr = attributes.get(ATTR_EVENT_INDEX)
    if index_attr and not redriven:  # the forwarder's letter for one event of a message
        raw_events = [document] if isinstance(document, dict) else []
    else:  # a whole message: moved by SQS, a copy kept by a replay, or one the forwarder
        # could not read (those bodies hold no usable event: not JSON, not the contract)
        raw_events = _events_of(document)
    events = []
    for position, raw in enumerate(raw_events):
        index = int(index_attr) if index_attr and not redriven else position
        identifier = _identifier(raw, attributes, source, index, redriven)
        events.append(DlqEvent(index, raw, identifier, *_name_and_customer(raw, rules)))
    return DlqMessage(
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        body=body,
        code=attributes.get(ATTR_ERROR_CODE) or REDRIVEN_CODE,
        error_message=attributes.get(ATTR_ERROR_MESSAGE, "moved after maxReceiveCount receives"),
        source_message_id=source,
        sent_at=sent_at,
        first_seen=first_seen,
        attributes=attributes,
        events=events,
        redriven=redriven,
    )


def _events_of(document: Any) -> list[Any]:
    """The events of a whole message body as parse_message reads it (none when unusable)."""
    if isinstance(document, dict) and "events" in document:
        events = document["events"]
        return events if set(document) == {"events"} and isinstance(events, list) else []
    return [document] if isinstance(document, dict) else []


def _identifier(
    raw: Any, attributes: dict[str, str], source: str, index: int, redriven: bool
) -> str | None:
    given = raw.get("identifier") if isinstance(raw, dict) else None
    if isinstance(given, str) and 0 < len(given) <= MAX_IDENTIFIER_LENGTH:
        return given  # what the forwarder keeps (a longer one it refuses, as Stripe would)
    if not redriven:
        return attributes.get(ATTR_IDENTIFIER)
    return derive_identifier(source, index) if given is None else None


def _name_and_customer(raw: Any, rules: ValidationRules) -> tuple[str | None, str | None]:
    if not isinstance(raw, dict):
        return None, None
    name = raw.get("event_name") if isinstance(raw.get("event_name"), str) else None
    payload = raw.get("payload") if isinstance(raw.get("payload"), dict) else {}
    customer = payload.get(rules.keys_for(name or "").customer_key) if payload else None
    return name, customer if isinstance(customer, str) else None


class DeadLetterReader:
    """Receives DLQ messages without consuming them: hidden while in use, given back after.

    One scan at a time per reader."""

    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        rules: ValidationRules,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.rules = rules
        self._clock = clock
        self._hold = SCAN_HOLD_SECONDS
        # receipt handles held (received, not deleted, not given back) -> when the hold ends
        # (on the clock), in the order the holds end
        self._held: dict[str, float] = {}
        self._copies: set[str] = set()  # message ids of the letters settle() put in
        self._letters = DeadLetterQueue(queue_url, sqs)

    def depth(self) -> int:
        """The queue's approximate number of visible messages."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes.get("ApproximateNumberOfMessages", 0))

    def scan(self, hold: int = SCAN_HOLD_SECONDS) -> Generator[DlqMessage]:
        """One pass over the queue: every message once, hidden while the pass runs.

        What a receive brings is hidden for `hold` seconds and, for as long as the pass
        runs, hidden again before half of that is left (`keep_hidden`, called between
        messages and by whoever works long on one): nobody else takes a message meanwhile,
        its receipt handle stays the one to delete it with, and receives bring only messages
        not seen yet. The pass ends when a receive comes back empty, or brings only messages
        seen already (or letters this reader put in) once it has seen as many as the queue
        held when it began (its approximate count), or SCAN_IDLE_RECEIVES times in a row
        whatever that count: a queue busier or larger than the count cannot keep it going.

        When the scan ends (exhausted, closed early, or on an error: iterate it inside
        `contextlib.closing`), every message it received and that was not deleted through
        this reader meanwhile is made visible again at once, also the rest of a received
        batch that was never yielded and messages received twice.
        """
        self._hold = hold
        expected = self.depth()
        seen: set[str] = set()
        idle = 0
        try:
            while True:
                self.keep_hidden()
                started = self._clock()
                received = self.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=10,
                    VisibilityTimeout=hold,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                    WaitTimeSeconds=1,  # long polling asks every server: no false "empty"
                ).get("Messages", [])
                if not received:
                    return
                self._held.update((m["ReceiptHandle"], started + hold) for m in received)
                fresh = [
                    m
                    for m in received
                    if m["MessageId"] not in seen and m["MessageId"] not in self._copies
                ]  # a letter put in by this run is not taken again (no loop)
                if not fresh:
                    idle += 1
                    if len(seen) >= expected or idle >= SCAN_IDLE_RECEIVES:
                        return  # round again: every message has been seen
                    continue
                idle = 0
                for message in fresh:
                    seen.add(message["MessageId"])
                    self.keep_hidden()
                    yield read_message(message, self.rules)
        finally:
            self._change_visibility(list(self._held), 0)
            self._held.clear()

    def keep_hidden(self) -> None:
        """Hide again, for another hold, what this reader holds whose hold ends within half of
        one (handles SQS no longer knows are dropped: deleted by someone, or taken again)."""
        now = self._clock()
        due = []
        for handle, until in self._held.items():
            if until - now >= self._hold / 2:
                break  # the rest end later
            due.append(handle)
        if not due:
            return
        failed = self._change_visibility(due, self._hold)
        for handle in due:
            del self._held[handle]
            if handle not in failed:
                self._held[handle] = now + self._hold  # last: its hold ends last

    def release(self, messages: Iterable[DlqMessage]) -> None:
        """Make messages visible again now (a scan must not hide the DLQ from others)."""
        handles = [m.receipt_handle for m in messages]
        self._change_visibility(handles, 0)
        for handle in handles:
            self._held.pop(handle, None)

    def _change_visibility(self, handles: list[str], timeout: int) -> set[str]:
        """ChangeMessageVisibility in batches of 10; the handles it failed for."""
        failed: set[str] = set()
        for batch in in_tens(handles):
            response = self.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": timeout}
                    for i, handle in enumerate(batch)
                ],
            )
            failed.update(batch[int(entry["Id"])] for entry in response.get("Failed", []))
        return failed

    def delete(self, message: DlqMessage) -> None:
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle)
        self._held.pop(message.receipt_handle, None)

    def settle(self, message: DlqMessage, letters: list[DeadLetter]) -> None:
        """Put `letters` (what of the message stays in the DLQ) in, then delete the message.

        The letters go in batches, as the forwarder sends its own. Nothing is deleted unless
        every letter went in: LettersNotSent is raised and the message stays, whole (the
        letters that did go in are then in the DLQ twice once it is settled again). The
        letters are not taken again by this reader's scan."""
        unsent = self._letters.send(letters, confirmed=self._copies)
        if unsent:
            raise LettersNotSent(f"{len(unsent)} of {len(letters)} letters could not be put in")
        self.delete(message)


class LettersNotSent(Exception):
    """SQS did not take every letter of a message: the message stays in the DLQ, whole."""


def event_letter(message: DlqMessage, event: ParsedEvent, rejection: Rejection) -> DeadLetter:
    """One event of a DLQ message as its own letter, as the forwarder writes one: the event
    (normalised when it is valid) with what a new messageId and SentTimestamp would change
    written in (its identifier, the default timestamp), the reason in attributes."""
    return DeadLetter(
        event.dead_letter_body(),
        rejection.code,
        rejection.message,
        message.source_message_id,
        format_timestamp(message.first_seen),
        event_index=event.index,
        event_name=event.event_name,
        identifier=event.identifier,
        param=rejection.param,
    )


def rest_letter(message: DlqMessage, events: list[ParsedEvent], reason: Rejection) -> DeadLetter:
    """Valid events of a message that are kept together (not sent yet), with `reason`."""
    if len(events) == 1:
        return event_letter(message, events[0], reason)
    body = {"events": [e.event.to_stripe() for e in events if e.event is not None]}
    return DeadLetter(
        json.dumps(body),
        reason.code,
        reason.message,
        message.source_message_id,
        format_timestamp(message.first_seen),
    )


# ----- selecting and correcting ---------------------------------------------------------------
@dataclass
class Filters:
    """Which DLQ messages an operation takes. Empty sets match everything."""

    codes: set[str] = field(default_factory=set)
    event_names: set[str] = field(default_factory=set)
    customers: set[str] = field(default_factory=set)
    since: datetime | None = None
    until: datetime | None = None
    max_count: int | None = None

    def matches(self, message: DlqMessage) -> bool:
        if self.codes and message.code not in self.codes:
            return False
        if self.since and message.first_seen < self.since:
            return False
        if self.until and message.first_seen > self.until:
            return False
        if self.event_names and not any(e.event_name in self.event_names for e in message.events):
            return False
        return not self.customers or any(e.customer in self.customers for e in message.events)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Filters:
        """The JSON form the Lambda entry points take (same names as the CLI flags)."""

        def names(key: str) -> set[str]:
            value = data.get(key) or []
            return {value} if isinstance(value, str) else {str(v) for v in value}

        def moment(key: str) -> datetime | None:
            text = data.get(key)
            if text is None:
                return None
            parsed = parse_rfc3339(str(text))
            if parsed is None:
                raise ValueError(f"{key} must be an RFC 3339 date-time, not {text!r}")
            return parsed

        unknown = set(data) - {"code", "event_name", "customer", "since", "until", "max"}
        if unknown:
            raise ValueError(f"unknown filters: {sorted(unknown)}")
        max_count = data.get("max")
        return cls(
            names("code"),
            names("event_name"),
            names("customer"),
            moment("since"),
            moment("until"),
            None if max_count is None else positive_count(max_count, "max"),
        )


def positive_count(value: Any, name: str) -> int:
    """A whole number above 0 (an int, or its text), else a ValueError that names it."""
    if not isinstance(value, bool) and isinstance(value, int | str):
        try:
            number = int(value)
        except ValueError:
            pass
        else:
            if number > 0:
                return number
    raise ValueError(f"{name} is a whole number above 0, not {value!r}")


@dataclass
class Fix:
    """Corrections applied before a replay (see README, "Dead letters": the --fix format)."""

    event_names: dict[str, str] = field(default_factory=dict)
    customers: dict[str, str] = field(default_factory=dict)
    payload_keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fix:
        unknown = set(data) - {"event_names", "customers", "payload_keys"}
        if unknown:
            raise ValueError(f"unknown fix sections: {sorted(unknown)}")
        sections = {}
        for name in ("event_names", "customers", "payload_keys"):
            mapping = data.get(name, {})
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
            ):
                raise ValueError(f"{name} must map strings to non-empty strings")
            sections[name] = dict(mapping)
        return cls(**sections)

    @classmethod
    def from_file(cls, path: str | Path) -> Fix:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the fix file {path}: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"the fix file {path} must hold a JSON object")
        return cls.from_dict(data)

    def apply(self, raw: Any, rules: ValidationRules) -> Any:
        """The corrected event (a new dict); the identifier is never touched."""
        if not isinstance(raw, dict):
            return raw
        event = dict(raw)
        name = event.get("event_name")
        if isinstance(name, str) and name in self.event_names:
            event["event_name"] = self.event_names[name]
        payload = event.get("payload")
        if isinstance(payload, dict):
            payload = {self.payload_keys.get(k, k): v for k, v in payload.items()}
            key = rules.keys_for(str(event.get("event_name", ""))).customer_key
            customer = payload.get(key)
            if isinstance(customer, str) and customer in self.customers:
                payload[key] = self.customers[customer]
            event["payload"] = payload
        return event

    @property
    def empty(self) -> bool:
        return not (self.event_names or self.customers or self.payload_keys)


# ----- outcomes --------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What happened (or, in a dry run, would happen) to one DLQ message."""

    message_id: str
    action: str  # replayed | partly_replayed | would_replay | kept | skipped
    detail: str = ""
    identifiers: list[str] = field(default_factory=list)  # the events sent (or to be sent)
    code: str | None = None  # the reason it stays, when it (or any event of it) stays
    warnings: list[str] = field(default_factory=list)
    # the events that stay in the DLQ (each as its own letter when others of the message left)
    kept_events: list[dict[str, Any]] = field(default_factory=list)

    def keep(self, event: ParsedEvent, code: str, detail: str) -> None:
        self.kept_events.append(
            {"index": event.index, "identifier": event.identifier, "code": code, "detail": detail}
        )

    def summarised(self, sent: str = "") -> Outcome:
        """The detail says what was sent (`sent`) and the first event that stays, whose code
        is the outcome's."""
        parts = [sent] if sent else []
        if self.kept_events:
            first = self.kept_events[0]
            self.code = first["code"]
            stay = len(self.kept_events)
            parts.append(f"{stay} stay in the DLQ: event {first['index']}: {first['detail']}")
        self.detail = "; ".join(parts)
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "action": self.action,
            "detail": self.detail,
            "identifiers": self.identifiers,
            "code": self.code,
            "warnings": self.warnings,
            "kept_events": self.kept_events,
        }


@dataclass
class RunSummary:
    outcomes: list[Outcome] = field(default_factory=list)
    complete: bool = True  # False when a deadline or --max stopped the run early

    @property
    def failed(self) -> int:
        """Messages that stay in the DLQ, whole or in part (or would, in a dry run)."""
        return sum(1 for o in self.outcomes if o.action in ("kept", "skipped") or o.kept_events)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            counts[outcome.action] = counts.get(outcome.action, 0) + 1
        return counts


class RateLimit:
    """At most `per_second` operations a second (None: unlimited)."""

    def __init__(self, per_second: float | None, sleep: Callable[[float], None] = time.sleep):
        self._interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._sleep = sleep

    def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        if self._next > now:
            self._sleep(self._next - now)
        self._next = max(now, self._next) + self._interval


# ----- replay ----------------------------------------------------------------------------------
TOO_OLD = " (outside Stripe's 35-day window: not sent)"
OUT_OF_TIME = "not sent before the deadline: the next run sends it"


@dataclass
class SyncResult:
    """What the sync endpoint made of a message's valid events."""

    counted: list[ParsedEvent] = field(default_factory=list)  # at Stripe (now or before)
    refused: list[tuple[ParsedEvent, StripeAnswer]] = field(default_factory=list)
    rest: list[ParsedEvent] = field(default_factory=list)  # not sent: from where it stopped
    failure: StripeAnswer | None = None  # what stopped it


@dataclass
class Replayer:
    """Sends dead-lettered events again: to the usage queue, or through the sync endpoint."""

    reader: DeadLetterReader
    rules: ValidationRules
    usage_queue_url: str | None = None
    api: StripeApi | None = None
    fix: Fix = field(default_factory=Fix)
    dry_run: bool = False
    rate: RateLimit = field(default_factory=lambda: RateLimit(None))
    timeout: float = 10.0
    sleep: Callable[[float], None] = time.sleep

    def replay(
        self,
        filters: Filters,
        via: str = "queue",
        *,
        remaining: Callable[[], float] | None = None,
        progress: Callable[[Outcome], None] | None = None,
    ) -> RunSummary:
        """Replay every matching message; `remaining()` (seconds) stops it early, cleanly:
        between messages, and inside one between its events (what was not sent stays)."""
        if via == "queue" and not self.usage_queue_url:
            raise ValueError("replay to the queue needs the usage queue's URL")
        if via == "sync" and self.api is None:
            raise ValueError("replay through the sync endpoint needs the Stripe secret key")
        summary = RunSummary()
        taken = 0
        # the scan gives back, when it is closed, every message that was not deleted
        with closing(self.reader.scan()) as messages:
            for message in messages:
                if remaining is not None and remaining() < SETTLE_SECONDS + MIN_ATTEMPT_SECONDS:
                    summary.complete = False  # out of time: stop, hide nothing more
                    break
                if not filters.matches(message):
                    continue
                if filters.max_count is not None and taken >= filters.max_count:
                    summary.complete = False  # more match than --max took
                    break
                taken += 1
                self.rate.wait()
                outcome, stopped = self._replay_one(message, via, remaining)
                summary.outcomes.append(outcome)
                if progress:
                    progress(outcome)
                if stopped:  # out of time inside the message: what it did not send stays
                    summary.complete = False
                    break
        return summary

    def prepare(self, message: DlqMessage) -> list[ParsedEvent]:
        """Each event of a message corrected (the fix; never its identifier), then normalised
        and checked as the forwarder checks it: `.event` set when it can be sent, else
        `.rejection` says why not."""
        now, rules = datetime.now(UTC), self.rules
        events = []
        for dlq_event in message.events:
            raw = self.fix.apply(dlq_event.raw, self.rules)
            if isinstance(raw, dict) and dlq_event.identifier and "identifier" not in raw:
                raw = {**raw, "identifier": dlq_event.identifier}
            events.append(
                normalise_event(
                    raw, dlq_event.index, message.source_message_id, message.sent_at, rules, now
                )
            )
        return events

    def _replay_one(
        self, message: DlqMessage, via: str, remaining: Callable[[], float] | None = None
    ) -> tuple[Outcome, bool]:
        """Sends what of a message can be sent; what cannot stays in the DLQ, each event that
        fails a check (here or at Stripe) as its own letter with its reason. The message
        leaves the DLQ only once both the resend and those letters are done. True with the
        outcome: the time ran out inside the message (what was not sent stays, together)."""
        outcome = Outcome(message.message_id, "kept")
        if not message.events:
            outcome.action, outcome.code = "skipped", message.code
            outcome.detail = "the body is not an event (nothing to replay; inspect it by hand)"
            return outcome, False
        if datetime.now(UTC) - message.first_seen > DEDUP_WINDOW:
            outcome.warnings.append(
                "first seen more than 24 hours ago: Stripe's deduplication no longer protects "
                "it, so an event Stripe already counted would be counted again"
            )
        events = self.prepare(message)
        ready = [e for e in events if e.event is not None]
        letters = []
        for event in events:
            if event.rejection is not None:
                rejection = event.rejection
                too_old = rejection.code == ErrorCode.TIMESTAMP_TOO_FAR_IN_PAST
                outcome.keep(event, rejection.code, rejection.message + TOO_OLD * too_old)
                letters.append(event_letter(message, event, rejection))
        outcome.identifiers = [e.identifier for e in ready if e.identifier]
        if not ready:  # nothing to send: the message stays as it is
            codes = {e["code"] for e in outcome.kept_events}
            outcome.action = "skipped" if codes == {ErrorCode.TIMESTAMP_TOO_FAR_IN_PAST} else "kept"
            return outcome.summarised(), False
        if self.dry_run:
            outcome.action = "would_replay"
            return outcome.summarised(f"{len(ready)} events via {via}"), False
        stopped, sent = False, []
        try:
            if via == "queue":
                self._send_to_queue(ready)
                sent = ready
            else:
                result = self._send_sync(ready, remaining)
                stopped = bool(result.rest) and result.failure is None
                sent = result.counted
                outcome.identifiers = [e.identifier for e in sent if e.identifier]
                for event, answer in result.refused:  # Stripe's reason, the corrected body
                    refusal = Rejection(answer_code(answer), answer.error)
                    outcome.keep(event, refusal.code, refusal.message)
                    letters.append(event_letter(message, event, refusal))
                if result.rest:
                    failure = result.failure
                    reason = self._rest_reason(message, failure)
                    said = (
                        (answer_code(failure), failure.error)
                        if failure
                        else (message.code, OUT_OF_TIME)
                    )
                    for event in result.rest:
                        outcome.keep(event, *said)
                    if not (sent or letters or reason.code != message.code):
                        return outcome.summarised(), stopped  # it stays as it is
                    letters.append(rest_letter(message, result.rest, reason))
            self.reader.settle(message, letters)  # only now: what it carried is safely elsewhere
        except (BotoCoreError, ClientError, LettersNotSent) as error:  # it stays, as it was
            outcome.action, outcome.code = "kept", "aws_error"
            outcome.detail = f"kept whole: {type(error).__name__}: {error}"
            if sent:  # a later replay sends them again, with the same identifiers
                outcome.detail = f"{len(sent)} events were sent via {via}; {outcome.detail}"
            return outcome, stopped
        if not letters:
            outcome.action = "replayed"
        elif sent:
            outcome.action = "partly_replayed"
        return outcome.summarised(f"{len(sent)} events via {via}" if sent else ""), stopped

    @staticmethod
    def _rest_reason(message: DlqMessage, failure: StripeAnswer | None) -> Rejection:
        """Why the unsent rest of a message stays. After a persistent 409, 429, 5xx or no
        answer it carries that (its code, `sync replay: ...`) in place of the message's own:
        the DLQ says what happened last. Out of time, or after an answer that is no fault
        of Stripe's load nor of the event (401, 403, 404: the tool's setup), it keeps the
        message's own reason."""
        if failure is not None and failure.kind in (Kind.TRANSIENT, Kind.RATE_LIMITED):
            return Rejection(answer_code(failure), f"sync replay: {failure.error}")
        return Rejection(message.code, message.error_message)

    def _send_to_queue(self, events: list[ParsedEvent]) -> None:
        assert self.usage_queue_url is not None
        body = [e.event.to_stripe() for e in events if e.event is not None]
        self.reader.sqs.send_message(
            QueueUrl=self.usage_queue_url,
            MessageBody=json.dumps(body[0] if len(body) == 1 else {"events": body}),
        )

    def _send_sync(
        self, events: list[ParsedEvent], remaining: Callable[[], float] | None
    ) -> SyncResult:
        """Each event through /v2/billing/meter_events. An event Stripe refuses does not stop
        the others; a failure that is not the event's (409, 429, 5xx, no answer, after the
        retries) stops the message there, and so does the time running out (`remaining`:
        checked before each attempt, whose timeout it bounds; no failure in the result)."""
        assert self.api is not None
        api = self.api
        result = SyncResult()
        for position, event in enumerate(events):
            assert event.event is not None
            self.reader.keep_hidden()  # a long message must not show again, nor its handle age
            call = functools.partial(api.create_meter_event, event.event.to_stripe())
            answer = with_retries(call, self.sleep, self.timeout, remaining)
            if answer is None:
                result.rest = events[position:]
                break
            if answer.kind is Kind.OK or answer.code == "duplicate_meter_event":
                result.counted.append(event)  # counted now, or already: either way at Stripe
            elif answer.kind is Kind.REJECTED:
                result.refused.append((event, answer))
            else:
                result.rest, result.failure = events[position:], answer
                break
        return result


def answer_code(answer: StripeAnswer) -> str:
    """Stripe's error code, else the HTTP status, else `no_answer` (a timeout, a reset)."""
    return answer.code or (f"http_{answer.status}" if answer.status else "no_answer")


def with_retries(
    call: Callable[[float], StripeAnswer],
    sleep: Callable[[float], None],
    timeout: float,
    remaining: Callable[[], float] | None = None,
) -> StripeAnswer | None:
    """One Stripe call (`call(timeout)`), again after 409/429/5xx/timeouts (Retry-After, else
    doubling). With `remaining` (seconds left), no attempt starts, and no wait begins, unless
    SETTLE_SECONDS and MIN_ATTEMPT_SECONDS are left after it, and each attempt's timeout is
    bounded by what is left: None when the time ran out before a final answer."""

    def budget(after: float = 0.0) -> float:
        left = math.inf if remaining is None else remaining() - after - SETTLE_SECONDS
        return min(timeout, left)

    for attempt in range(1, SYNC_ATTEMPTS + 1):
        if budget() < MIN_ATTEMPT_SECONDS:
            return None
        answer = call(budget())
        if answer.kind not in (Kind.TRANSIENT, Kind.RATE_LIMITED) or attempt == SYNC_ATTEMPTS:
            return answer
        wait = answer.retry_after or 0.25 * 2**attempt
        if budget(after=wait) < MIN_ATTEMPT_SECONDS:
            return None
        sleep(wait)
    raise AssertionError("unreachable")


# ----- cancel ----------------------------------------------------------------------------------
@dataclass
class CancelTarget:
    identifier: str
    event_name: str
    first_seen: datetime | None = None  # when known (from a DLQ message)


@dataclass
class AuditLine:
    identifier: str
    event_name: str
    status: str  # pending | complete | refused | past_cancel_window | would_cancel | failed
    adjustment_id: str | None = None
    error: str | None = None
    at: str = field(default_factory=lambda: format_timestamp(datetime.now(UTC)))

    def to_json(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "event_name": self.event_name,
            "adjustment_id": self.adjustment_id,
            "status": self.status,
            "at": self.at,
            "error": self.error,
        }


def targets_from_file(path: str | Path, event_name: str) -> list[CancelTarget]:
    lines = Path(path).read_text().splitlines()
    return [CancelTarget(line.strip(), event_name) for line in lines if line.strip()]


def targets_from_dlq(
    reader: DeadLetterReader,
    filters: Filters,
    remaining: Callable[[], float] | None = None,
    reserve: float = 0.0,
    skip: Iterable[str] = (),
) -> tuple[list[CancelTarget], bool]:
    """The events of the DLQ messages `filters` choose, each once, but those whose identifier
    is in `skip` (done by an earlier call); and whether that is all of them. A message whose
    events are all skipped does not count toward `max`. With `remaining` (seconds left), the
    scan stops once only `reserve` seconds are left: the rest is for cancelling."""
    skipped = set(skip)
    targets: list[CancelTarget] = []
    taken = 0
    with closing(reader.scan()) as messages:  # gives every message back when it closes
        for message in messages:
            if remaining is not None and remaining() < reserve:
                return targets, False
            if not filters.matches(message):
                continue
            new: dict[str, CancelTarget] = {}  # the same event twice is cancelled once
            for event in message.events:
                if event.identifier and event.event_name and event.identifier not in skipped:
                    new.setdefault(
                        event.identifier,
                        CancelTarget(event.identifier, event.event_name, message.first_seen),
                    )
            if not new:
                continue
            if filters.max_count is not None and taken >= filters.max_count:
                return targets, False  # more match than `max` took
            taken += 1
            skipped.update(new)
            targets.extend(new.values())
    return targets, True


def cancel(
    api: StripeApi | None,
    targets: list[CancelTarget],
    *,
    dry_run: bool = False,
    rate: RateLimit | None = None,
    timeout: float = 10.0,
    remaining: Callable[[], float] | None = None,
    progress: Callable[[AuditLine], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[AuditLine], bool]:
    """Cancel each target through /v2/billing/meter_event_adjustments; (audit, complete).

    429, 5xx and timeouts are retried (Retry-After, else doubling) before a cancel is
    reported as failed."""
    audit: list[AuditLine] = []
    now = datetime.now(UTC)
    for target in targets:
        if remaining is not None and remaining() < 2 * timeout:
            return audit, False
        late = target.first_seen is not None and now - target.first_seen > CANCEL_WINDOW
        if dry_run:
            line = AuditLine(
                target.identifier,
                target.event_name,
                "past_cancel_window" if late else "would_cancel",
            )
        else:
            assert api is not None
            if rate:
                rate.wait()
            call = functools.partial(api.cancel_meter_event, target.event_name, target.identifier)
            answer = with_retries(call, sleep, timeout, remaining)
            if answer is None:  # out of time before an answer: this one is not done
                return audit, False
            body = answer.body or {}
            if answer.kind is Kind.OK:
                line = AuditLine(
                    target.identifier,
                    target.event_name,
                    str(body.get("status", "pending")),
                    str(body.get("id")),
                )
            elif answer.code == "invalid_cancel_configuration" and late:
                line = AuditLine(
                    target.identifier, target.event_name, "past_cancel_window", error=answer.error
                )
            else:
                status = "refused" if answer.kind is Kind.REJECTED else "failed"
                line = AuditLine(target.identifier, target.event_name, status, error=answer.error)
        audit.append(line)
        if progress:
            progress(line)
    return audit, True
