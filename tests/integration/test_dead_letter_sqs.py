"""DeadLetterQueue.send against SQS (moto server): what lands, with which attributes, and what
comes back unsent so that its source message is retried rather than lost."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

import pytest

from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_EVENT_INDEX,
    ATTR_IDENTIFIER,
    DeadLetter,
    DeadLetterQueue,
)
from tests.plugins.aws import AwsEnv

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType
    from mypy_boto3_sqs.type_defs import MessageTypeDef

pytestmark = pytest.mark.integration

KIB = 1024
SOURCE = "3f1c0d8e-1b2a-4c5d-9e8f-0a1b2c3d4e5f"


def letter(index: int, body: str | None = None, **fields: Any) -> DeadLetter:
    identifier = f"{SOURCE}-{index}"
    event = {"event_name": "api_requests", "payload": {"value": "0"}, "identifier": identifier}
    base: dict[str, Any] = {
        "code": "payload_invalid_value",
        "message": "value '0' is not a positive integer",
        "source_message_id": SOURCE,
        "first_seen": "2026-06-01T12:00:00.000Z",
        "event_index": index,
        "event_name": "api_requests",
        "identifier": identifier,
        "param": "payload.value",
    }
    base.update(fields)
    return DeadLetter(json.dumps(event) if body is None else body, **base)


def create_queue(sqs: SQSClient, name: str, maximum_message_size: int | None = None) -> str:
    if maximum_message_size is None:
        return sqs.create_queue(QueueName=name)["QueueUrl"]
    attributes: dict[QueueAttributeNameType, str] = {
        "MaximumMessageSize": str(maximum_message_size)
    }
    return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]


def drain(sqs: SQSClient, queue_url: str) -> list[MessageTypeDef]:
    messages: list[MessageTypeDef] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=300,
            WaitTimeSeconds=0,
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


def attributes_of(message: MessageTypeDef) -> dict[str, tuple[str, str]]:
    return {
        name: (value["DataType"], value.get("StringValue", ""))
        for name, value in message.get("MessageAttributes", {}).items()
    }


def expected_attributes(dead: DeadLetter) -> dict[str, tuple[str, str]]:
    return {
        name: (value["DataType"], value.get("StringValue", ""))
        for name, value in dead.attributes().items()
    }


def test_letters_land_with_their_bodies_and_attributes(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    url = create_queue(sqs, "usage-dlq")
    letters = [letter(i) for i in range(13)]  # two batches
    letters.append(
        DeadLetter("not json {", "message_not_json", "body is not JSON", "other-source", "t0")
    )

    assert DeadLetterQueue(url, sqs).send(letters) == []

    messages = drain(sqs, url)
    assert len(messages) == len(letters)
    landed = {message["Body"]: attributes_of(message) for message in messages}
    assert landed == {dead.body: expected_attributes(dead) for dead in letters}
    indexes = sorted(
        int(attrs[ATTR_EVENT_INDEX][1]) for attrs in landed.values() if ATTR_EVENT_INDEX in attrs
    )
    assert indexes == list(range(13))
    assert landed["not json {"] == {
        "ErrorCode": ("String", "message_not_json"),
        "ErrorMessage": ("String", "body is not JSON"),
        "SourceMessageId": ("String", "other-source"),
        "FirstSeen": ("String", "t0"),
    }


def test_text_sqs_would_refuse_is_cleaned_from_the_attributes(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    url = create_queue(sqs, "usage-dlq")
    dead = letter(0, event_name="bad\x00name\ud800", param="payload.\x1f")
    assert DeadLetterQueue(url, sqs).send([dead]) == []
    [message] = drain(sqs, url)
    attributes = attributes_of(message)
    assert attributes["EventName"] == ("String", "bad\ufffdname\ufffd")
    assert attributes["ErrorParam"] == ("String", "payload.\ufffd")


def test_a_letter_sqs_refuses_comes_back_unsent_and_the_rest_are_sent(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    url = create_queue(sqs, "usage-dlq", maximum_message_size=256 * KIB)
    before = [letter(i) for i in range(3)]
    huge = letter(3, body=json.dumps({"event_name": "api_requests", "note": "x" * (300 * KIB)}))
    after = [letter(i) for i in range(4, 16)]

    unsent = DeadLetterQueue(url, sqs).send([*before, huge, *after])

    assert unsent == [huge]
    landed = sorted(int(attributes_of(message)[ATTR_EVENT_INDEX][1]) for message in drain(sqs, url))
    assert landed == [i for i in range(16) if i != 3]


def test_every_letter_comes_back_when_the_queue_is_gone(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    url = create_queue(sqs, "usage-dlq")
    sqs.delete_queue(QueueUrl=url)
    letters = [letter(i) for i in range(12)]
    assert DeadLetterQueue(url, sqs).send(letters) == letters


class RefusesOnce:
    """A real SQS client that reports chosen entries as failed (unsent) the first time."""

    def __init__(self, sqs: SQSClient, identifiers: set[str]) -> None:
        self._sqs = sqs
        self._pending = set(identifiers)
        self.calls: list[list[str]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[Any]) -> dict[str, Any]:
        self.calls.append([entry["Id"] for entry in Entries])
        refused = [
            entry
            for entry in Entries
            if entry["MessageAttributes"][ATTR_IDENTIFIER]["StringValue"] in self._pending
        ]
        for entry in refused:
            self._pending.discard(entry["MessageAttributes"][ATTR_IDENTIFIER]["StringValue"])
        sent = [entry for entry in Entries if entry not in refused]
        answer: dict[str, Any] = {"Successful": [], "Failed": []}
        if sent:
            answer = dict(self._sqs.send_message_batch(QueueUrl=QueueUrl, Entries=sent))
        answer["Failed"] = [
            {"Id": entry["Id"], "SenderFault": False, "Code": "InternalError"} for entry in refused
        ]
        return answer


def test_entries_sqs_refused_are_sent_again_alone(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    url = create_queue(sqs, "usage-dlq")
    letters = [letter(i) for i in range(5)]
    flaky = RefusesOnce(sqs, {f"{SOURCE}-1", f"{SOURCE}-3"})

    assert DeadLetterQueue(url, cast("SQSClient", flaky)).send(letters) == []

    assert [sorted(call) for call in flaky.calls] == [["e0", "e1", "e2", "e3", "e4"], ["e1", "e3"]]
    bodies = sorted(message["Body"] for message in drain(sqs, url))
    assert bodies == sorted(dead.body for dead in letters)  # each exactly once


def test_a_letter_refused_on_every_attempt_comes_back(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    url = create_queue(sqs, "usage-dlq")
    letters = [letter(i) for i in range(3)]

    class AlwaysRefuses(RefusesOnce):
        def send_message_batch(self, QueueUrl: str, Entries: list[Any]) -> dict[str, Any]:
            self._pending = {f"{SOURCE}-2"}
            return super().send_message_batch(QueueUrl, Entries)

    flaky = AlwaysRefuses(sqs, set())
    assert DeadLetterQueue(url, cast("SQSClient", flaky)).send(letters) == [letters[2]]
    assert flaky.calls == [["e0", "e1", "e2"], ["e2"], ["e2"]]
    assert (
        sorted(attributes_of(m)[ATTR_ERROR_CODE][1] for m in drain(sqs, url))
        == ["payload_invalid_value"] * 2
    )
