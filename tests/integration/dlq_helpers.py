"""Helpers of the `meter-relay` integration tests: the environment an operator sets (the `cli`
fixture), running the CLI in-process, and DLQ messages of both kinds, real (through the
forwarder and SQS's own redrive) or forged with the forwarder's own DeadLetter where a test
needs a past FirstSeen. Queues stay shallow (moto slows down on deep ones).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from meter_relay.cli import main
from meter_relay.dead_letter import DeadLetter
from meter_relay.events import ValidationRules, format_timestamp
from tests.plugins.relay import API_VERSION, MAX_RECEIVE_COUNT, SECRET_KEY, Relay

METER_KEYS = {"search_calls": {"customer_key": "customer", "value_key": "calls"}}
RULES = ValidationRules.from_settings(json.dumps(METER_KEYS), "positive_integer")

METER_KEYS = {"search_calls": {"customer_key": "customer", "value_key": "calls"}}
RULES = ValidationRules.from_settings(json.dumps(METER_KEYS), "positive_integer")


@pytest.fixture
def cli(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> Relay:
    """The relay stack, with the environment the CLI reads (as an operator would set it)."""
    for name, value in relay.aws.env.items():  # AWS_ENDPOINT_URL at moto, dummy credentials
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", relay.dlq_url)
    monkeypatch.setenv("USAGE_QUEUE_URL", relay.queue_url)
    monkeypatch.setenv("STRIPE_SECRET_ID", relay.secret_id)
    monkeypatch.setenv("STRIPE_API_BASE", relay.emulator_url)
    monkeypatch.setenv("STRIPE_API_VERSION", API_VERSION)
    monkeypatch.setenv("METER_KEYS", json.dumps(METER_KEYS))
    return relay


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`meter-relay ARGV` in-process: (exit status, stdout, stderr); never the secret key."""
    capsys.readouterr()  # what came before (the forwarder's logs and metrics) is not its own
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert SECRET_KEY not in out
    assert SECRET_KEY not in err
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = run(capsys, *argv, "--output", "json")
    document: dict[str, Any] = json.loads(out)
    return code, document


def api_event(
    identifier: str | None, customer: str = "cus_a", value: str = "1", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": customer, "value": value},
        **extra,
    }
    if identifier is not None:
        body["identifier"] = identifier
    return body


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def forward(relay: Relay, bodies: list[Any], ids: list[str]) -> None:
    """Run the forwarder (through the harness) on one batch; every record must settle."""
    relay.put_session()
    with relay.forwarder(env={"METER_KEYS": json.dumps(METER_KEYS)}) as forwarder:
        invocation = forwarder.invoke(relay.sqs_event(bodies, ids))
    assert invocation.error is None, invocation.error
    assert invocation.result == {"batchItemFailures": []}


def put_redriven(relay: Relay, body: dict[str, Any] | str) -> str:
    """A producer's body straight on the DLQ, as SQS's redrive leaves it (no attributes)."""
    text = body if isinstance(body, str) else json.dumps(body)
    return relay.aws.client("sqs").send_message(QueueUrl=relay.dlq_url, MessageBody=text)[
        "MessageId"
    ]


def redrive(relay: Relay, body: dict[str, Any]) -> str:
    """Through SQS's own redrive: received more than maxReceiveCount times, never deleted."""
    sqs = relay.aws.client("sqs")
    message_id = sqs.send_message(QueueUrl=relay.queue_url, MessageBody=json.dumps(body))[
        "MessageId"
    ]
    receipts = 0
    for _ in range(MAX_RECEIVE_COUNT + 1):
        got = sqs.receive_message(QueueUrl=relay.queue_url, VisibilityTimeout=0).get("Messages")
        receipts += len(got or [])
    assert receipts == MAX_RECEIVE_COUNT  # the next receive found it moved
    return message_id


def put_letter(
    relay: Relay,
    body: dict[str, Any],
    code: str,
    first_seen: datetime,
    customer_source: str | None = None,
) -> str:
    """A letter as the forwarder writes it for one event (its own DeadLetter), FirstSeen forged."""
    source = customer_source or str(uuid.uuid4())
    identifier = body.get("identifier") or f"{source}-0"
    letter = DeadLetter(
        json.dumps({**body, "identifier": identifier}),
        code,
        f"forged for a test ({code})",
        source,
        format_timestamp(first_seen),
        event_index=0,
        event_name=body.get("event_name"),
        identifier=identifier,
    )
    return relay.aws.client("sqs").send_message(
        QueueUrl=relay.dlq_url, MessageBody=letter.body, MessageAttributes=letter.attributes()
    )["MessageId"]


def peek(relay: Relay) -> dict[str, Any]:
    """Every DLQ message by id, received with VisibilityTimeout 0 (so it stays visible).

    Asserts first that nothing is hidden: what the tools held, they gave back at once.
    """
    sqs = relay.aws.client("sqs")
    counts = sqs.get_queue_attributes(
        QueueUrl=relay.dlq_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert counts["ApproximateNumberOfMessagesNotVisible"] == "0"
    received = sqs.receive_message(
        QueueUrl=relay.dlq_url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=0,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    assert len(received) == int(counts["ApproximateNumberOfMessages"]) <= 10
    return {m["MessageId"]: m for m in received}


def snapshot(relay: Relay) -> dict[str, tuple[str, dict[str, Any]]]:
    return {i: (m["Body"], m.get("MessageAttributes", {})) for i, m in peek(relay).items()}


def take_usage_queue(relay: Relay) -> list[Any]:
    sqs = relay.aws.client("sqs")
    found: dict[str, Any] = {}
    while True:
        got = sqs.receive_message(
            QueueUrl=relay.queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]
        ).get("Messages", [])
        if not got:
            return list(found.values())
        found.update({m["MessageId"]: m for m in got})


def usage_queue_depth(relay: Relay) -> int:
    attributes = relay.aws.client("sqs").get_queue_attributes(
        QueueUrl=relay.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def deliver_sync(relay: Relay, event: dict[str, Any]) -> None:
    """Count an event at the emulator directly (as if delivered earlier)."""
    response = requests.post(
        f"{relay.emulator_url}/v2/billing/meter_events",
        json=event,
        headers={"Authorization": f"Bearer {relay.secret_key}", "Stripe-Version": API_VERSION},
        timeout=10,
    )
    response.raise_for_status()


def by_message(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["message_id"]: o for o in outcomes}
