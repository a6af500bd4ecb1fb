"""After every supported recovery path, every identifier is unchanged and Stripe counts every
event exactly once (issue 10, point 3).

Producers' messages (single events and envelopes, with and without identifiers) go on the usage
queue in moto; some of their events reach Stripe (the emulator) before the failure, as the
forwarder sends them (identifiers derived from the messageId, the default timestamp from
SentTimestamp); then SQS moves every message to the DLQ after maxReceiveCount receives. Each
path takes it from there: `dlq redrive` and `dlq replay --via queue` put the events back on
the usage queue, where the forwarder (through the harness) delivers them; `dlq replay --via
sync` sends them itself. The console's "Start DLQ redrive" (new messageIds, bodies unchanged)
is played too, to show what the stack's deny prevents.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from meter_relay.events import format_timestamp
from tests.integration.dlq_helpers import (
    ago,
    api_event,
    forward,
    peek,
    put_letter,
    run,
    run_json,
    take_usage_queue,
)
from tests.integration.dlq_helpers import cli as cli  # the fixture
from tests.plugins.relay import API_VERSION, MAX_RECEIVE_COUNT, Relay

pytestmark = pytest.mark.integration

SEARCH = {"event_name": "search_calls", "payload": {"customer": "cus_s", "calls": "3"}}


def producers_messages() -> list[tuple[dict[str, Any], list[int]]]:
    """Bodies, each with the indexes of its events Stripe counted before the failure."""
    return [
        (api_event("p-single", "cus_1"), []),
        (api_event(None, "cus_2"), []),
        (api_event("p-delivered", "cus_3"), [0]),  # counted, yet its message kept failing
        (
            {
                "events": [
                    api_event("p-env-0", "cus_4"),
                    api_event(None, "cus_4"),
                    SEARCH,
                    api_event("p-env-3", "cus_5", value="7"),
                ]
            },
            [0, 2],
        ),
        ({"events": [api_event(None, "cus_6") for _ in range(3)]}, [1]),
        ({"events": [api_event(None, "cus_7"), api_event("p-late", "cus_7")]}, []),
    ]


def stream(relay: Relay, token: str, events: list[dict[str, Any]]) -> None:
    response = requests.post(
        f"{relay.emulator_url}/v2/billing/meter_event_stream",
        json={"events": events},
        headers={"Authorization": f"Bearer {token}", "Stripe-Version": API_VERSION},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def fail_into_the_dlq(relay: Relay) -> dict[str, str]:
    """The messages sent, partly delivered, and moved by SQS: identifier -> timestamp of every
    event, as the forwarder derived them from the original messages. (The events counted
    "before the failure" are streamed once the messages are in the DLQ, whose SentTimestamp
    is the original one: the same calls, in an order Stripe cannot tell apart.)"""
    sqs = relay.aws.client("sqs")
    bodies = {}
    for body, delivered in producers_messages():
        sent = sqs.send_message(QueueUrl=relay.queue_url, MessageBody=json.dumps(body))
        bodies[sent["MessageId"]] = (body, delivered)
    for _ in range(MAX_RECEIVE_COUNT + 1):  # received, never deleted: moved to the DLQ
        while sqs.receive_message(
            QueueUrl=relay.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
        ).get("Messages"):
            pass
    moved = peek(relay)
    assert set(moved) == set(bodies)  # SQS keeps the messageId on that move
    token = relay.put_session()["token"]
    expected: dict[str, str] = {}
    for message_id, (body, delivered) in bodies.items():
        millis = int(moved[message_id]["Attributes"]["SentTimestamp"])
        default = format_timestamp(datetime.fromtimestamp(millis / 1000, UTC))
        events = body.get("events", [body])
        identified = [
            {**e, "identifier": e.get("identifier") or f"{message_id}-{n}", "timestamp": default}
            for n, e in enumerate(events)
        ]
        expected.update({e["identifier"]: e["timestamp"] for e in identified})
        if delivered:  # as the forwarder sent them, before their message failed
            stream(relay, token, [identified[n] for n in delivered])
    return expected


def forward_usage_queue(relay: Relay) -> None:
    """The forwarder (through the harness) on what is on the usage queue."""
    messages = take_usage_queue(relay)
    assert messages
    forward(relay, [m["Body"] for m in messages], [m["MessageId"] for m in messages])


def counted_once(relay: Relay, expected: dict[str, str]) -> None:
    """Every event counted exactly once, under its original identifier and timestamp."""
    identifiers = relay.emulator.identifiers()
    assert set(identifiers) == set(expected)  # no new identifier: nothing counted twice
    assert {i: c["counted"] for i, c in identifiers.items()} == dict.fromkeys(expected, 1)
    assert relay.emulator.counted_more_than_once() == []
    stored = {e["identifier"]: e["timestamp"] for e in relay.emulator.events()}
    assert stored == expected
    assert relay.emulator.errors()["total"] == 0


@pytest.mark.parametrize("path", ["redrive", "replay-queue", "replay-sync"])
def test_every_supported_path_keeps_identifiers_and_counts_each_event_once(
    path: str, cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = fail_into_the_dlq(cli)
    if path == "redrive":
        code, result = run_json(capsys, "dlq", "redrive")
        assert (code, result["counts"]) == (0, {"redriven": 6})
        forward_usage_queue(cli)
    elif path == "replay-queue":
        code, result = run_json(capsys, "dlq", "replay")
        assert (code, result["counts"]) == (0, {"replayed": 6})
        forward_usage_queue(cli)
    else:
        code, result = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes")
        assert (code, result["counts"]) == (0, {"replayed": 6})
    assert result["complete"] is True
    counted_once(cli, expected)
    assert peek(cli) == {}


def test_a_redrive_leaves_letters_of_a_permanent_reason_and_says_why(
    cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = fail_into_the_dlq(cli)
    put_letter(cli, api_event("refused", value="-1"), "payload_invalid_value", ago(minutes=5))
    code, out, err = run(capsys, "dlq", "redrive")
    assert code == 0  # every message it took went; what it left is said
    assert "redriven         6" in out
    assert "not chosen (left in the DLQ), by reason" in out
    assert "payload_invalid_value         1" in out
    assert "1 messages stayed: their reason is not a passing one" in err
    assert "dlq replay --fix FILE" in err
    assert "--code CODE or --all" in err
    forward_usage_queue(cli)
    counted_once(cli, expected)
    (left,) = peek(cli).values()
    assert left["MessageAttributes"]["ErrorCode"]["StringValue"] == "payload_invalid_value"


def test_the_consoles_redrive_would_count_partly_delivered_events_twice(cli: Relay) -> None:
    """What the stack's deny on sqs:StartMessageMoveTask prevents: the console moves each body
    as it is under a new messageId, and events without an identifier take new ones."""
    expected = fail_into_the_dlq(cli)
    sqs = cli.aws.client("sqs")
    for message in peek(cli).values():  # "Start DLQ redrive": same body, a new messageId
        sqs.send_message(QueueUrl=cli.queue_url, MessageBody=message["Body"])
        sqs.delete_message(QueueUrl=cli.dlq_url, ReceiptHandle=message["ReceiptHandle"])
    forward_usage_queue(cli)
    identifiers = cli.emulator.identifiers()
    new = set(identifiers) - set(expected)
    assert len(new) == 7  # every event without a producer identifier got another one
    counted = sum(c["counted"] for c in identifiers.values())
    # the two events without a producer identifier that were counted before the failure
    # (the search_calls event of one envelope, the second event of another) count twice
    assert counted == len(expected) + 2
