"""Sending message bodies back to the usage queue: SendMessageBatch by tens (and 256 KiB),
several batches at once, the entries SQS refused sent again; per body, whether SQS took it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.sqs_batches import batches

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

QUEUE_SENDERS = 8  # SendMessageBatch calls at once
SEND_ATTEMPTS = 3  # per entry SQS refuses (botocore retries the calls themselves)


class UsageQueue:
    """The usage queue, for tools that put events back on it (replay, redrive)."""

    def __init__(self, sqs: SQSClient, queue_url: str, senders: int = QUEUE_SENDERS) -> None:
        self.queue_url = queue_url
        self._sqs = sqs
        self._senders = senders

    def check(self) -> None:
        """Raise what SQS says when the queue cannot be reached or does not exist (before a
        run that would otherwise find out message by message)."""
        self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])

    def send(self, bodies: list[str]) -> list[str | None]:
        """Send every body; per body, None once SQS confirmed it, else why it was not sent."""
        outcome: list[str | None] = ["not sent"] * len(bodies)
        groups = list(batches(list(enumerate(bodies)), lambda item: len(item[1].encode())))
        with ThreadPoolExecutor(self._senders, thread_name_prefix="resend") as pool:
            for group, errors in zip(groups, pool.map(self._send_batch, groups), strict=True):
                for index, _ in group:
                    outcome[index] = errors.get(index)
        return outcome

    def _send_batch(self, group: list[tuple[int, str]]) -> dict[int, str]:
        """One batch, the refused entries again; the error of each entry not sent, by index."""
        pending = dict(group)
        errors: dict[int, str] = {}
        for _ in range(SEND_ATTEMPTS):
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {"Id": str(index), "MessageBody": body} for index, body in pending.items()
            ]
            try:
                response = self._sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (BotoCoreError, ClientError) as error:
                errors = dict.fromkeys(pending, f"{type(error).__name__}: {error}")
                continue  # botocore already retried with backoff; try the whole batch again
            errors = {
                int(entry["Id"]): f"{entry.get('Code', '')}: {entry.get('Message', '')}"
                for entry in response.get("Failed", [])
            }
            pending = {index: pending[index] for index in errors}
            if not pending:
                return {}
        return errors
