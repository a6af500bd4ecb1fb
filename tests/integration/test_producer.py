"""The producer helper against moto server: envelopes, batches of ten, refused entries retried."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber

from meter_relay.producer import MAX_MESSAGE_BYTES, SendInterrupted, UsageProducer, message_body
from tests.message_schema import events_in
from tests.plugins.aws import AwsEnv

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

pytestmark = pytest.mark.integration


def usage(n: int) -> list[dict[str, Any]]:
    return [
        {
            "event_name": "api_requests",
            "identifier": f"p-{i}",
            "payload": {"stripe_customer_id": f"cus_{i % 3}", "value": str(i + 1)},
        }
        for i in range(n)
    ]


def drain(aws: AwsEnv, url: str) -> list[str]:
    sqs = aws.client("sqs")
    bodies: list[str] = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return bodies
        bodies.extend(m["Body"] for m in messages)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )


@pytest.mark.parametrize(("envelope_size", "messages"), [(1, 23), (5, 5), (50, 1)])
def test_events_arrive_once_grouped_into_envelopes(
    aws: AwsEnv, envelope_size: int, messages: int
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=f"usage-{envelope_size}")["QueueUrl"]
    report = UsageProducer(url, sqs, envelope_size=envelope_size).send(usage(23))
    assert report.failed == []
    assert report.events_sent == 23
    assert len(report.sent) == messages
    bodies = drain(aws, url)
    assert len(bodies) == messages
    received = [event for body in bodies for event in events_in(body)]  # valid by the schema
    assert sorted(e["identifier"] for e in received) == sorted(f"p-{i}" for i in range(23))


def test_a_single_event_is_sent_as_itself_several_as_an_envelope() -> None:
    one, two = usage(2)
    assert json.loads(message_body([one])) == one
    assert json.loads(message_body([one, two])) == {"events": [one, two]}


# SendMessageBatch's answers to three entries: one taken, one refused for now (sent again and
# taken), one refused for good. test_producer_versions.py gives them to every Python too.
REFUSALS: list[dict[str, Any]] = [
    {
        "Successful": [{"Id": "m0", "MessageId": "id-0", "MD5OfMessageBody": "x"}],
        "Failed": [
            {"Id": "m1", "SenderFault": False, "Code": "ServiceUnavailable"},
            {"Id": "m2", "SenderFault": True, "Code": "InvalidMessageContents"},
        ],
    },
    {
        "Successful": [{"Id": "m1", "MessageId": "id-1", "MD5OfMessageBody": "x"}],
        "Failed": [],  # required in an answer by older botocore models
    },
]


def test_refused_entries_are_retried_and_permanent_ones_reported(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-stubbed")["QueueUrl"]
    events = usage(3)
    with Stubber(sqs) as stub:
        for answer in REFUSALS:
            stub.add_response("send_message_batch", answer)
        sleeps: list[float] = []
        report = UsageProducer(url, sqs, sleep=sleeps.append).send(events)
        stub.assert_no_pending_responses()
    assert [m.message_id for m in report.sent] == ["id-0", "id-1"]
    assert [m.events[0]["identifier"] for m in report.sent] == ["p-0", "p-1"]
    assert len(report.failed) == 1
    assert report.failed[0][0][0]["identifier"] == "p-2"
    assert "InvalidMessageContents" in report.failed[0][1]
    assert len(sleeps) == 1  # backed off once before the retry


def test_gives_up_after_max_attempts_and_says_why(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-down")["QueueUrl"]
    with Stubber(sqs) as stub:
        for _ in range(3):
            stub.add_response(
                "send_message_batch",
                {
                    "Successful": [],
                    "Failed": [{"Id": "m0", "SenderFault": False, "Code": "InternalError"}],
                },
            )
        report = UsageProducer(url, sqs, max_attempts=3, sleep=lambda _: None).send(usage(1))
    assert report.sent == []
    assert report.events_failed == 1
    assert "InternalError" in report.failed[0][1]


def test_batches_go_as_the_events_come(aws: AwsEnv) -> None:
    """A stream of events is never held whole: a batch goes once its ten messages are made."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-stream")["QueueUrl"]
    pulled = 0

    def stream() -> Iterator[dict[str, Any]]:
        nonlocal pulled
        for event in usage(25):
            pulled += 1
            yield event

    pulled_at_each_call: list[int] = []

    class Counting:
        def send_message_batch(self, **kwargs: Any) -> Any:
            pulled_at_each_call.append(pulled)
            return sqs.send_message_batch(**kwargs)

    report = UsageProducer(url, cast("SQSClient", Counting())).send(stream())
    assert report.events_sent == 25
    # a batch is cut when the message after it is made, a message when the event after it comes
    assert pulled_at_each_call == [12, 22, 25]


def test_envelope_size_and_attempts_are_checked(aws: AwsEnv) -> None:
    with pytest.raises(ValueError, match="envelope_size"):
        UsageProducer("https://queue", aws.client("sqs"), envelope_size=0)
    with pytest.raises(ValueError, match="envelope_size"):
        UsageProducer("https://queue", aws.client("sqs"), envelope_size=1001)
    with pytest.raises(ValueError, match="max_attempts"):
        UsageProducer("https://queue", aws.client("sqs"), max_attempts=0)


def test_an_event_too_big_for_a_message_is_reported_and_the_rest_sent(aws: AwsEnv) -> None:
    """Reported with the reason, not sent; the events around it go as usual."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-oversized")["QueueUrl"]
    small, big, other = usage(3)
    big = {**big, "payload": {**big["payload"], "note": "x" * MAX_MESSAGE_BYTES}}
    report = UsageProducer(url, sqs).send([small, big, other])
    [(events, reason)] = report.failed
    assert [{k: v for k, v in e.items() if k != "timestamp"} for e in events] == [big]
    assert reason.startswith(f"MessageTooLong: {len(message_body(events))} bytes")
    assert sorted(json.loads(body)["identifier"] for body in drain(aws, url)) == ["p-0", "p-2"]


def test_an_envelope_is_cut_before_half_the_largest_message(aws: AwsEnv) -> None:
    """So that big envelopes still travel two or more to a SendMessageBatch call."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-big-envelopes")["QueueUrl"]
    events = [
        {**event, "payload": {**event["payload"], "note": "x" * 20_000}} for event in usage(20)
    ]
    report = UsageProducer(url, sqs, envelope_size=1000).send(events)
    assert report.failed == []
    sizes = [len(message_body(m.events)) for m in report.sent]
    assert len(sizes) > 1
    assert all(size <= MAX_MESSAGE_BYTES // 2 for size in sizes)
    assert [e["identifier"] for m in report.sent for e in m.events] == [f"p-{i}" for i in range(20)]


class AnswerLostOnce:
    """An SQS client whose first SendMessageBatch reaches the queue but whose answer is lost
    (a read timeout): the producer cannot know, and sends the batch again."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.calls = 0

    def send_message_batch(self, **kwargs: Any) -> Any:
        self.calls += 1
        response = self._sqs.send_message_batch(**kwargs)
        if self.calls == 1:
            raise ReadTimeoutError(endpoint_url="http://sqs")
        return response


def test_a_batch_sent_twice_after_a_lost_answer_carries_the_same_identifiers(
    aws: AwsEnv,
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-lost-answer")["QueueUrl"]
    events = [{k: v for k, v in e.items() if k != "identifier"} for e in usage(4)]
    flaky = AnswerLostOnce(sqs)
    report = UsageProducer(
        url, cast("SQSClient", flaky), envelope_size=2, sleep=lambda _: None
    ).send(events)
    assert flaky.calls == 2
    assert report.failed == []
    bodies = [json.loads(body) for body in drain(aws, url)]
    assert len(bodies) == 4  # two envelopes, each on the queue twice
    identifiers = [e["identifier"] for body in bodies for e in body["events"]]
    # each event's identifier appears twice, so Stripe counts the repeated envelope once
    assert len(set(identifiers)) == 4
    assert all(identifiers.count(i) == 2 for i in identifiers)
    # and with the same timestamp: a copy stamped by its own message's send would differ,
    # and two copies in one forwarder batch would dead-letter the second as a duplicate
    copies = {(e["identifier"], e["timestamp"]) for body in bodies for e in body["events"]}
    assert len(copies) == 4
    assert all("identifier" not in e and "timestamp" not in e for e in events)  # untouched


def test_events_the_forwarder_could_only_dead_letter_are_reported_not_sent(
    aws: AwsEnv,
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-unsendable")["QueueUrl"]
    good, *others = usage(6)
    bad = [
        {**others[0], "identifier": 12345},  # an order id given as a number
        {**others[1], "identifier": "x" * 101},
        {**others[2], "payload": {**others[2]["payload"], "value": float("nan")}},
        {**others[3], "timestamp": datetime(2026, 12, 1, tzinfo=UTC)},
    ]
    dynamo = {  # as DynamoDB gives numbers
        **others[4],
        "payload": {**others[4]["payload"], "value": Decimal("25"), "rate": Decimal("2.50")},
        "timestamp": Decimal("1780315200"),
    }
    report = UsageProducer(url, sqs, envelope_size=10).send([good, *bad, dynamo])
    reasons = [reason for _, reason in report.failed]
    assert [events[0]["identifier"] for events, _ in report.failed] == [
        12345,
        "x" * 101,
        "p-3",
        "p-4",
    ]
    assert reasons[:2] == ["identifier is a string of 1 to 100 characters"] * 2
    assert reasons[2].startswith("not JSON: Out of range float values")
    assert reasons[3].startswith("not JSON: Object of type datetime")
    [body] = drain(aws, url)
    good_sent, dynamo_sent = json.loads(body)["events"]
    assert (good_sent["identifier"], good_sent["payload"]["value"]) == ("p-0", "1")
    # whole numbers as integers (epoch seconds stay a number), the others as their exact text
    assert (dynamo_sent["payload"], dynamo_sent["timestamp"]) == (
        {"stripe_customer_id": "cus_2", "value": 25, "rate": "2.50"},
        1780315200,
    )


def test_an_event_is_sent_as_it_was_read_whatever_its_caller_does_next(aws: AwsEnv) -> None:
    """A producer that fills one payload dict again for each event (a template) sends each
    event's own value: the helper copies an event, payload and all, when it reads it."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-template")["QueueUrl"]
    payload: dict[str, Any] = {"stripe_customer_id": "cus_1"}

    def stream() -> Iterator[dict[str, Any]]:
        for i in range(3):
            payload["value"] = str(i + 1)
            yield {"event_name": "api_requests", "identifier": f"t-{i}", "payload": payload}

    report = UsageProducer(url, sqs, envelope_size=3).send(stream())
    assert report.events_sent == 3
    [body] = drain(aws, url)
    assert [e["payload"]["value"] for e in json.loads(body)["events"]] == ["1", "2", "3"]


def test_a_send_that_stops_part_way_says_what_it_sent(aws: AwsEnv) -> None:
    """Sent again from the caller's own dicts, events without an identifier would get new
    ones and be counted twice: the report of what went is kept on the exception."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-interrupted")["QueueUrl"]

    def stream() -> Iterator[dict[str, Any]]:
        yield from [{k: v for k, v in e.items() if k != "identifier"} for e in usage(25)]
        raise ConnectionError("the database went away")

    with pytest.raises(SendInterrupted) as interrupted:
        UsageProducer(url, sqs).send(stream())
    report = interrupted.value.report
    assert isinstance(interrupted.value.__cause__, ConnectionError)
    assert report.events_sent == 20  # two batches of ten went before the stream failed
    on_queue = sorted(json.loads(body)["identifier"] for body in drain(aws, url))
    assert on_queue == sorted(m.events[0]["identifier"] for m in report.sent)
    # the five read but not sent yet are in the report, with the identifiers they were given
    [(unsent, reason)] = report.failed
    assert len(unsent) == 5
    assert reason.startswith("not sent, or sent without an answer: send interrupted")
    assert not {e["identifier"] for e in unsent} & set(on_queue)


def test_identifiers_can_be_left_to_the_forwarder(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName="usage-derived")["QueueUrl"]
    events = [{k: v for k, v in e.items() if k != "identifier"} for e in usage(3)]
    UsageProducer(url, sqs, assign_identifiers=False).send(events)
    assert all("identifier" not in json.loads(body) for body in drain(aws, url))
