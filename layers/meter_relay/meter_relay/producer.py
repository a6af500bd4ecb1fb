"""A small producer helper for Python services: usage events onto the usage queue.

Events (Stripe's v2 shape) are grouped into envelopes of `envelope_size` events, envelopes
into SendMessageBatch calls of 10 messages (and at most 256 KiB), and entries SQS refuses for
a transient reason are sent again with backoff.

An event without an `identifier` gets one here, before its first send: a batch whose answer
was lost (a timeout after SQS took it) is sent again with the same identifiers, and Stripe
counts it once. Better still, give every event an identifier you can reproduce (an order id,
a request id): then a retry on your side, across processes, is never counted twice either.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.sqs_batches import batches

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

MAX_MESSAGE_BYTES = 256 * 1024


@dataclass(frozen=True)
class SentMessage:
    """One SQS message: its id and the events it carries, in order."""

    message_id: str
    events: tuple[dict[str, Any], ...]


@dataclass
class SendReport:
    sent: list[SentMessage] = field(default_factory=list)
    failed: list[tuple[tuple[dict[str, Any], ...], str]] = field(default_factory=list)

    @property
    def events_sent(self) -> int:
        return sum(len(m.events) for m in self.sent)

    @property
    def events_failed(self) -> int:
        return sum(len(events) for events, _ in self.failed)


def message_body(events: Sequence[dict[str, Any]]) -> str:
    """One event as itself; several as an envelope."""
    return json.dumps(events[0] if len(events) == 1 else {"events": list(events)})


@dataclass(frozen=True)
class _Message:
    events: tuple[dict[str, Any], ...]
    body: str

    @classmethod
    def of(cls, events: list[dict[str, Any]]) -> _Message:
        return cls(tuple(events), message_body(events))


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
        if not 1 <= envelope_size <= 1000:
            raise ValueError("envelope_size must be between 1 and 1000")
        self.queue_url = queue_url
        self._sqs = sqs
        self.envelope_size = envelope_size
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self._sleep = sleep
        # False leaves identifiers to the forwarder (derived from the message id): a resend
        # after an ambiguous failure then makes new messages, new identifiers, counted again
        self.assign_identifiers = assign_identifiers

    def send(self, events: Iterable[dict[str, Any]]) -> SendReport:
        """Send every event; what could not be sent after retries is in `report.failed`."""
        report = SendReport()
        for batch in _batches(self._messages(events)):
            self._send_batch(batch, report)
        return report

    def _messages(self, events: Iterable[dict[str, Any]]) -> Iterator[_Message]:
        group: list[dict[str, Any]] = []
        size = 0
        for event in events:
            if self.assign_identifiers and event.get("identifier") is None:
                event = {**event, "identifier": uuid.uuid4().hex}  # the caller's dict untouched
            event_size = len(json.dumps(event)) + 2
            full = len(group) == self.envelope_size or size + event_size > MAX_MESSAGE_BYTES // 2
            if group and full:
                yield _Message.of(group)
                group, size = [], 0
            group.append(event)
            size += event_size
        if group:
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


def _batches(messages: Iterable[_Message]) -> Iterator[list[_Message]]:
    return batches(messages, lambda message: len(message.body.encode()))
