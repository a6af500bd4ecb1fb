"""Dead-lettering: one DLQ message per failed event, its reason in message attributes.

The body is the event with its identifier written in (or the raw message body when it could
not be parsed), so a replay sends exactly what failed and Stripe's deduplication still
recognises it. A dead letter that cannot be sent is reported back, so its source message is
retried rather than lost.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.events import ParsedEvent, Rejection
from meter_relay.sqs_batches import MAX_BATCH_BYTES as MAX_BATCH_BYTES  # re-exported
from meter_relay.sqs_batches import MAX_BATCH_ENTRIES as MAX_BATCH_ENTRIES  # re-exported
from meter_relay.sqs_batches import batches

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        MessageAttributeValueTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

MAX_ATTRIBUTE_TEXT = 1024
SEND_ATTEMPTS = 3

# Message attribute names: the contract between the forwarder and the DLQ tools.
ATTR_ERROR_CODE = "ErrorCode"
ATTR_ERROR_MESSAGE = "ErrorMessage"
ATTR_ERROR_PARAM = "ErrorParam"
ATTR_SOURCE_MESSAGE_ID = "SourceMessageId"
ATTR_EVENT_INDEX = "EventIndex"
ATTR_FIRST_SEEN = "FirstSeen"
ATTR_EVENT_NAME = "EventName"
ATTR_IDENTIFIER = "Identifier"
# A Stripe error report's letters (error_reports.py): which report, meter and validation window,
# and ATTR_REPORTED_BY, which marks a letter Stripe reported (and whether its body is known).
ATTR_STRIPE_EVENT_ID = "StripeEventId"
ATTR_METER_ID = "MeterId"
ATTR_VALIDATION_START = "ValidationStart"
ATTR_VALIDATION_END = "ValidationEnd"
ATTR_REPORTED_BY = "ReportedBy"
# "true" on a letter a DLQ tool wrote for events of one whose reason left open whether Stripe
# counted them (moved by SQS, no answer, a 5xx), under a reason that no longer says so (a sync
# replay's 429): `dlq cancel` may still take them back.
ATTR_OUTCOME_UNKNOWN = "OutcomeUnknown"


@functools.cache
def _not_sqs_text() -> re.Pattern[str]:
    """What SQS does not accept in a message: anything else (control characters, lone
    surrogates from a JSON "\\ud800" escape) would make the letter unsendable, or its size()
    raise. Compiled when first needed: its ranges span Unicode, 7 ms to compile, which a cold
    start with no dead letter need not pay."""
    return re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _sqs_text(value: str) -> str:
    return _not_sqs_text().sub("\ufffd", value)


@dataclass(frozen=True)
class DeadLetter:
    body: str
    code: str
    message: str
    source_message_id: str
    first_seen: str
    event_index: int | None = None
    event_name: str | None = None
    identifier: str | None = None
    param: str | None = None
    more: tuple[tuple[str, str], ...] = ()  # further text attributes, e.g. a Stripe report's

    @classmethod
    def for_message(
        cls, body: str, rejection: Rejection, source_message_id: str, first_seen: str
    ) -> DeadLetter:
        """A message that holds no usable event (not JSON, not the contract): kept as it came."""
        return cls(
            body,
            rejection.code,
            rejection.message,
            source_message_id,
            first_seen,
            param=rejection.param,
        )

    @classmethod
    def for_event(
        cls, event: ParsedEvent, rejection: Rejection, source_message_id: str, first_seen: str
    ) -> DeadLetter:
        """One event of a message: normalised when it was valid, else as sent, with what a
        new messageId and SentTimestamp would change written in (`dead_letter_body`)."""
        return cls(
            event.dead_letter_body(),
            rejection.code,
            rejection.message,
            source_message_id,
            first_seen,
            event_index=event.index,
            event_name=event.event_name,
            identifier=event.identifier,
            param=rejection.param,
        )

    def attributes(self) -> dict[str, MessageAttributeValueTypeDef]:
        texts = {
            ATTR_ERROR_CODE: self.code,
            ATTR_ERROR_MESSAGE: self.message,
            ATTR_ERROR_PARAM: self.param,
            ATTR_SOURCE_MESSAGE_ID: self.source_message_id,
            ATTR_FIRST_SEEN: self.first_seen,
            ATTR_EVENT_NAME: self.event_name,
            ATTR_IDENTIFIER: self.identifier,
            **dict(self.more),
        }
        attributes: dict[str, MessageAttributeValueTypeDef] = {
            name: {"DataType": "String", "StringValue": _sqs_text(value)[:MAX_ATTRIBUTE_TEXT]}
            for name, value in texts.items()
            if value  # SQS refuses empty attribute values
        }
        if self.event_index is not None:
            attributes[ATTR_EVENT_INDEX] = {
                "DataType": "Number",
                "StringValue": str(self.event_index),
            }
        return attributes

    def size(self) -> int:
        attributes = self.attributes()
        return len(self.body.encode()) + sum(
            len(name) + len(value["DataType"]) + len(value.get("StringValue", "").encode())
            for name, value in attributes.items()
        )


SENDERS = 4  # SendMessageBatch calls at once: a batch of 10,000 bad records is 1,000 calls


class DeadLetterQueue:
    """Sends dead letters in batches of 10 (and 256 KiB), retrying the entries SQS refused.

    Batches go out several at once, and the caller waits at most `time_left` seconds: letters
    not confirmed by then are reported unsent (their messages go back to the queue), so a slow
    SQS never carries the forwarder past its deadline. A batch confirmed only after that wait
    is sent again with its message later: a duplicate letter, never a lost one.
    """

    def __init__(self, queue_url: str, sqs: SQSClient) -> None:
        self.queue_url = queue_url
        self._sqs = sqs
        self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="dead-letters")

    def send(
        self,
        letters: list[DeadLetter],
        time_left: Callable[[], float] | None = None,
        *,
        confirmed: set[str] | None = None,
    ) -> list[DeadLetter]:
        """Send every letter; returns the ones not sent (after retries, or not in time).

        Batches not yet started when the wait ends are cancelled, so that they neither send
        letters of messages already returned to the queue nor hold up the next invocation's.
        `confirmed`, if given, gets the SQS message id of every letter SQS took.
        """
        wait = max(0.0, time_left()) if time_left is not None else None
        if not letters or wait == 0.0:
            return letters
        sending = {
            self._senders.submit(self._send_batch, batch, confirmed): batch
            for batch in _batches(letters)
        }
        done, late = futures_wait(sending, timeout=wait)
        for future in late:
            future.cancel()
        unsent: list[DeadLetter] = []
        for future, batch in sending.items():  # in the letters' order
            unsent.extend(future.result() if future in done else batch)
        return unsent

    def _send_batch(self, batch: list[DeadLetter], confirmed: set[str] | None) -> list[DeadLetter]:
        pending = {f"e{i}": letter for i, letter in enumerate(batch)}
        for _ in range(SEND_ATTEMPTS):
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {
                    "Id": entry_id,
                    "MessageBody": letter.body,
                    "MessageAttributes": letter.attributes(),
                }
                for entry_id, letter in pending.items()
            ]
            try:
                response = self._sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (BotoCoreError, ClientError):
                continue  # botocore already retried with backoff; try the whole batch again
            if confirmed is not None:
                confirmed.update(entry["MessageId"] for entry in response.get("Successful", []))
            failed = {entry["Id"] for entry in response.get("Failed", [])}
            pending = {entry_id: pending[entry_id] for entry_id in failed}
            if not pending:
                return []
        return list(pending.values())


def _batches(letters: list[DeadLetter]) -> Iterator[list[DeadLetter]]:
    return batches(letters, DeadLetter.size)
