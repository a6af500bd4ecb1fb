"""Usage events onto Meter Relay's usage queue, from a Python service.

One file, Python 3.9 or later, boto3 its only dependency: copy it into a service as it is (it
imports nothing else of meter_relay), or import it from the meter-relay package.

Events (Stripe's v2 shape) are grouped into envelopes of `envelope_size` events, envelopes
into SendMessageBatch calls of at most 10 messages and 256 KiB, and entries SQS refuses for a
transient reason are sent again with backoff. What is not sent is in the report, with the reason:
nothing is dropped silently.

An event without an `identifier` gets one here, before its first send, and one without a
`timestamp` gets the time of the send: a batch whose answer was lost (a timeout after SQS took
it) is sent again with the same identifiers and contents, and Stripe counts it once. The
events in `report.failed` are those copies: send them again, not your own dicts, and within
24 hours (Stripe's deduplication window), for some of them may be on the queue already.
Better still, give every event an identifier you can reproduce (an order id, a request id):
then a retry on your side, across processes, is never counted twice either.

An event the forwarder could only dead-letter (an identifier that is not a text of 1 to 100
characters, a value JSON cannot carry such as NaN, an object JSON cannot write) is not sent:
it is in the report too. A `Decimal` (what DynamoDB gives) is written as an integer when it is
whole, else as its plain text.
"""

# Python 3.9: no `X | Y` outside annotations, no match, no dataclass(slots=...), no `def f[T]`.
from __future__ import annotations

import copy
import functools
import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

# the largest message sent: SQS's classic limit, 256 KiB, less room for what its dead letter
# adds (the identifier and timestamp written in, the reason's attributes), so that a message
# the forwarder refuses can be a letter of its own
MAX_MESSAGE_BYTES = 248 * 1024
MAX_BATCH_ENTRIES = 10  # SendMessageBatch's limits: entries a call,
MAX_BATCH_BYTES = 256 * 1024  # and their bodies together
MAX_ENVELOPE_EVENTS = 1000
MAX_IDENTIFIER_LENGTH = 100  # Stripe's


def _plain(value: Any) -> Any:
    """What json.dumps cannot write by itself: a finite Decimal (what DynamoDB gives), a whole
    one as an integer (a value, epoch seconds), another as its plain text (no float's
    rounding)."""
    if isinstance(value, Decimal) and value.is_finite():
        return int(value) if value == value.to_integral_value() else format(value, "f")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# NaN and Infinity are not JSON: the forwarder could not read the message at all
_dumps = functools.partial(json.dumps, allow_nan=False, default=_plain)

Event = dict[str, Any]
_Item = TypeVar("_Item")


@dataclass(frozen=True)
class SentMessage:
    """One SQS message: its id and the events it carries, in order."""

    message_id: str
    events: tuple[Event, ...]


@dataclass
class SendReport:
    """What one `send` did: the messages SQS took, and the events it did not, with why."""

    sent: list[SentMessage] = field(default_factory=list)
    failed: list[tuple[tuple[Event, ...], str]] = field(default_factory=list)

    @property
    def events_sent(self) -> int:
        return sum(len(m.events) for m in self.sent)

    @property
    def events_failed(self) -> int:
        return sum(len(events) for events, _ in self.failed)


class SendInterrupted(Exception):
    """`send` stopped part way (the events' iterable raised, or something unforeseen): the
    `report` says what was sent already, with the identifiers given here."""

    def __init__(self, report: SendReport) -> None:
        super().__init__(
            f"send interrupted after {report.events_sent} events sent "
            f"({report.events_failed} not sent): see the report"
        )
        self.report = report


def message_body(events: Sequence[Event]) -> str:
    """One event as itself; several as an envelope."""
    return _dumps(events[0] if len(events) == 1 else {"events": list(events)})


@dataclass(frozen=True)
class _Message:
    events: tuple[Event, ...]
    body: str
    size: int  # of the body in bytes, as SQS counts it

    @classmethod
    def of(cls, events: Sequence[Event]) -> _Message:
        body = message_body(events)
        return cls(tuple(events), body, len(body.encode()))


class UsageProducer:
    """Sends usage events to the usage queue (the stack's `UsageQueueUrl` output)."""

    def __init__(
        self,
        queue_url: str,
        sqs: SQSClient,
        *,
        envelope_size: int = 1,
        max_attempts: int = 5,
        base_delay: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        assign_identifiers: bool = True,
    ) -> None:
        if not 1 <= envelope_size <= MAX_ENVELOPE_EVENTS:
            raise ValueError(f"envelope_size must be between 1 and {MAX_ENVELOPE_EVENTS}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.queue_url = queue_url
        self._sqs = sqs
        self.envelope_size = envelope_size
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self._sleep = sleep
        # False leaves identifiers to the forwarder (derived from the message id): a resend
        # after an ambiguous failure then makes new messages, new identifiers, counted again
        self.assign_identifiers = assign_identifiers

    def send(self, events: Iterable[Event]) -> SendReport:
        """Send every event; what could not be sent after retries is in `report.failed`.
        SendInterrupted, with the report so far, if it stops part way."""
        report = SendReport()
        taken: list[Event] = []  # every copy made, so that none goes unreported
        messages = self._sendable(events, report, taken)  # lazily: batches go as events come
        try:
            for batch in _groups(messages, lambda m: m.size, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES):
                self._send_batch(batch, report)
        except Exception as error:  # the batches sent already must not be lost with it
            reported = {id(e) for m in report.sent for e in m.events}
            reported.update(id(e) for events, _ in report.failed for e in events)
            unsent = tuple(e for e in taken if id(e) not in reported)
            if unsent:
                # a batch under way when it stopped may have reached the queue
                why = f"not sent, or sent without an answer: send interrupted ({error!r})"
                report.failed.append((unsent, why))
            raise SendInterrupted(report) from error
        return report

    def _sendable(
        self, events: Iterable[Event], report: SendReport, taken: list[Event]
    ) -> Iterator[_Message]:
        """The events' messages; one too big to send (a single huge event) goes in the report."""
        for message in self._messages(events, report, taken):
            if message.size > MAX_MESSAGE_BYTES:
                reason = f"MessageTooLong: {message.size} bytes, the most is {MAX_MESSAGE_BYTES}"
                report.failed.append((message.events, reason))
            else:
                yield message

    def _messages(
        self, events: Iterable[Event], report: SendReport, taken: list[Event]
    ) -> Iterator[_Message]:
        # an envelope is kept to half the largest message, so that a batch takes at least two
        sized = self._checked(events, report, taken)
        for group in _groups(sized, lambda e: e[1], self.envelope_size, MAX_MESSAGE_BYTES // 2):
            yield _Message.of([event for event, _ in group])

    def _checked(
        self, events: Iterable[Event], report: SendReport, taken: list[Event]
    ) -> Iterator[tuple[Event, int]]:
        """Each event that can be sent, as it will be, with its size in an envelope; the others
        go in the report. Always a copy, added to `taken`: the caller's dicts are left
        untouched, and one changed or yielded again after it was read changes nothing sent."""
        for given in events:
            if not isinstance(given, dict):
                report.failed.append(((given,), "not an event: a dict is"))
                continue
            event = copy.deepcopy(given)  # its payload too: a template reused is no trap
            if self.assign_identifiers:
                if event.get("identifier") is None:
                    event["identifier"] = uuid.uuid4().hex
                if event.get("timestamp") is None:  # a resend must carry the same one
                    event["timestamp"] = _now()
            taken.append(event)
            identifier = event.get("identifier")
            if identifier is not None and not (
                isinstance(identifier, str) and 0 < len(identifier) <= MAX_IDENTIFIER_LENGTH
            ):
                reason = f"identifier is a string of 1 to {MAX_IDENTIFIER_LENGTH} characters"
                report.failed.append(((event,), reason))
                continue
            try:
                size = len(_dumps(event)) + 2  # in an envelope, with the separator
            except (TypeError, ValueError) as error:
                report.failed.append(((event,), f"not JSON: {error}"))
                continue
            yield event, size

    def _send_batch(self, batch: list[_Message], report: SendReport) -> None:
        pending = {f"m{i}": message for i, message in enumerate(batch)}
        last_error = ""
        for attempt in range(self.max_attempts):
            if attempt:
                self._sleep(random.uniform(0, self.base_delay * 2**attempt))  # noqa: S311
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {"Id": entry_id, "MessageBody": message.body}
                for entry_id, message in pending.items()
            ]
            try:
                response = self._sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (BotoCoreError, ClientError) as error:
                last_error = f"{type(error).__name__}: {error}"
                continue
            for ok in response.get("Successful", []):
                sent = pending.pop(ok["Id"])
                report.sent.append(SentMessage(ok["MessageId"], sent.events))
            retry = {}
            for failure in response.get("Failed", []):
                message = pending.pop(failure["Id"])
                reason = f"{failure.get('Code')}: {failure.get('Message', '')}"
                if failure.get("SenderFault"):
                    report.failed.append((message.events, reason))  # SQS will never take it
                else:
                    retry[failure["Id"]] = message
                    last_error = reason
            pending = retry
            if not pending:
                return
        report.failed.extend((m.events, last_error or "not sent") for m in pending.values())


def _now() -> str:
    """RFC 3339 in UTC, to the millisecond, as the forwarder writes timestamps."""
    moment = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def _groups(
    items: Iterable[_Item], size_of: Callable[[_Item], int], max_items: int, max_bytes: int
) -> Iterator[list[_Item]]:
    """Consecutive groups of at most `max_items` items and `max_bytes` (one item may exceed).

    meter_relay.sqs_batches has the same; this file keeps its own to stand alone."""
    group: list[_Item] = []
    size = 0
    for item in items:
        item_size = size_of(item)
        if group and (len(group) == max_items or size + item_size > max_bytes):
            yield group
            group, size = [], 0
        group.append(item)
        size += item_size
    if group:
        yield group
