"""Usage events onto Meter Relay's usage queue, from a Python service.

One file, Python 3.9 or later, boto3 its only dependency: copy it into a service as it is (it
imports nothing else of meter_relay), or import it from the meter-relay package.

Events (Stripe's v2 shape) are grouped into envelopes of `envelope_size` events, envelopes
into SendMessageBatch calls of at most 10 messages and 256 KiB, and entries SQS refuses for a
transient reason are sent again with backoff. What is not sent is in the report, with the reason:
nothing is dropped silently.

An event without an `identifier` gets one here, before its first send: a batch whose answer
was lost (a timeout after SQS took it) is sent again with the same identifiers, and Stripe
counts it once. Better still, give every event an identifier you can reproduce (an order id,
a request id): then a retry on your side, across processes, is never counted twice either.
"""

# Python 3.9: no `X | Y` outside annotations, no match, no dataclass(slots=...), no `def f[T]`.
from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

# the largest message the relay is built for, its dead letters included (SQS's classic limit)
MAX_MESSAGE_BYTES = 256 * 1024
MAX_BATCH_ENTRIES = 10  # SendMessageBatch's limits: entries a call,
MAX_BATCH_BYTES = 256 * 1024  # and their bodies together
MAX_ENVELOPE_EVENTS = 1000

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


def message_body(events: Sequence[Event]) -> str:
    """One event as itself; several as an envelope."""
    return json.dumps(events[0] if len(events) == 1 else {"events": list(events)})


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
        """Send every event; what could not be sent after retries is in `report.failed`."""
        report = SendReport()
        messages = self._sendable(events, report)  # lazily: batches go as the events come
        for batch in _groups(messages, lambda m: m.size, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES):
            self._send_batch(batch, report)
        return report

    def _sendable(self, events: Iterable[Event], report: SendReport) -> Iterator[_Message]:
        """The events' messages; one too big to send (a single huge event) goes in the report."""
        for message in self._messages(events):
            if message.size > MAX_MESSAGE_BYTES:
                reason = f"MessageTooLong: {message.size} bytes, the most is {MAX_MESSAGE_BYTES}"
                report.failed.append((message.events, reason))
            else:
                yield message

    def _messages(self, events: Iterable[Event]) -> Iterator[_Message]:
        if self.assign_identifiers:
            # a copy: the caller's dicts are left untouched
            events = (
                e if e.get("identifier") is not None else {**e, "identifier": uuid.uuid4().hex}
                for e in events
            )
        # an envelope is kept to half the largest message, so that a batch takes at least two
        for group in _groups(events, _event_size, self.envelope_size, MAX_MESSAGE_BYTES // 2):
            yield _Message.of(group)

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


def _event_size(event: Event) -> int:
    return len(json.dumps(event)) + 2  # its text in an envelope, with the separator


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
