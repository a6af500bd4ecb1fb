"""The forwarder records what Stripe accepted in the delivery ledger (S3, moto): one object per
invocation, partitioned by the hour of delivery, up to 100 delivered events a line; a write that
fails never fails the delivery, and is counted (LedgerGap)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meter_relay.events import format_timestamp, parse_rfc3339
from meter_relay.forwarder import ledger_s3_config
from meter_relay.ledger import compress, decode
from tests.integration.test_forwarder import counted, event, failures
from tests.plugins.aws import AwsEnv
from tests.plugins.relay import LEDGER_BUCKET, Relay, emf_sums

pytestmark = pytest.mark.integration


def ledger_objects(relay: Relay) -> dict[str, list[Any]]:
    s3 = relay.aws.client("s3")
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=LEDGER_BUCKET):
        for item in page.get("Contents", []):
            data = s3.get_object(Bucket=LEDGER_BUCKET, Key=item["Key"])["Body"].read()
            found[item["Key"]] = decode(data)
    return found


def test_each_delivered_event_is_recorded_once_with_where_it_came_from(
    relay: Relay, capfd: pytest.CaptureFixture[str]
) -> None:
    relay.put_session()
    search = {
        "event_name": "search_calls",
        "identifier": "ledger-search",
        "payload": {"customer": "cus_s", "calls": "4", "region": "eu"},
    }
    bodies: list[Any] = [
        event("ledger-1", "cus_a", "3"),
        {"events": [event("ledger-2", "cus_b", "5"), event(None, "cus_c", "7")]},
        event("ledger-bad", "cus_a", "0"),  # dead-lettered: not in the ledger
        search,
    ]
    sqs_event = relay.sqs_event(bodies, ["m-1", "m-env", "m-bad", "m-search"])
    keys = '{"search_calls": {"customer_key": "customer", "value_key": "calls"}}'
    with relay.forwarder(env={"METER_KEYS": keys}) as forwarder:
        invocation = forwarder.invoke(sqs_event)
    assert failures(invocation, sqs_event) == set()
    assert "signed PUT failed" not in capfd.readouterr().out  # no PutObject in its place

    objects = ledger_objects(relay)
    (key,) = objects
    now = datetime.now(UTC)
    assert key.startswith(f"events/dt={now:%Y-%m-%d}/hour=")
    assert key.endswith(f"/{invocation.request_id}.jsonl.zst")
    lines = {line.identifier: line for line in objects[key]}
    assert (
        set(lines)
        == set(counted(relay))
        == {
            "ledger-1",
            "ledger-2",
            "m-env-1",
            "ledger-search",
        }
    )
    first = lines["ledger-1"]
    assert (first.event_name, first.customer, first.value) == ("api_requests", "cus_a", "3")
    assert (first.message_id, first.request_id) == ("m-1", invocation.request_id)
    assert lines["m-env-1"].message_id == "m-env"
    assert (lines["ledger-search"].customer, lines["ledger-search"].value) == ("cus_s", "4")
    # the payload as sent, the meter's other keys included
    assert lines["ledger-search"].event.payload == {
        "customer": "cus_s",
        "calls": "4",
        "region": "eu",
    }
    assert first.event.payload == {"stripe_customer_id": "cus_a", "value": "3"}


@pytest.mark.parametrize("one_read_apart", [False, True], ids=["usual", "one-read-apart"])
@pytest.mark.parametrize("records", [5, 250])
def test_a_batch_of_single_events_records_each_with_its_own_message(
    relay: Relay, one_read_apart: bool, records: int
) -> None:
    """The usual batch (a record, an event, all delivered) takes the message ids as read
    (encoded 100 at a time as they are read: 250 records are three such spans); so does one
    with a record read on its own amid the run judged together (a text holding a key twice,
    sent as the event judged rather than as it is): it keeps its place."""
    relay.put_session()
    now = format_timestamp(datetime.now(UTC))
    bodies: list[Any] = [
        json.dumps({**event(f"single-{n}", f"cus_{n}", str(n + 1)), "timestamp": now})
        for n in range(records)
    ]
    if one_read_apart:
        bodies[2] = '{"event_name": "other", ' + bodies[2][1:]  # the later event_name wins
    message_ids = [f"m-single-{n}" for n in range(records)]
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(relay.sqs_event(bodies, message_ids))
    assert invocation.ok
    (lines,) = ledger_objects(relay).values()
    assert [(line.identifier, line.message_id, line.value, line.event_name) for line in lines] == [
        (f"single-{n}", f"m-single-{n}", str(n + 1), "api_requests") for n in range(records)
    ]


def test_delivered_at_is_when_the_invocation_began_sending(relay: Relay) -> None:
    """Stripe reports an event it rejects about 10 s after it received it; an invocation's
    calls can take longer (retries, Stripe's latency). A delivery stamped after its calls
    could read as later than the report on it, as if it were a resend: it is stamped before
    them."""
    relay.put_session()
    relay.emulator.set_faults("stream", latency_ms=1500)
    sqs_event = relay.sqs_event([event("slow-1", "cus_a", "3")], ["m-slow"])
    before = datetime.now(UTC)
    with relay.forwarder() as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()
    after = datetime.now(UTC)

    ((line,),) = ledger_objects(relay).values()
    delivered = parse_rfc3339(line.delivered_at)
    assert delivered is not None
    assert before <= delivered < after - timedelta(seconds=1.5)  # before the call's answer


def test_a_ledger_that_cannot_be_written_never_fails_the_delivery(
    relay: Relay, capfd: pytest.CaptureFixture[str]
) -> None:
    relay.put_session()
    sqs_event = relay.sqs_event([event("gap-1"), event("gap-2")])
    with relay.forwarder(env={"LEDGER_BUCKET": "no-such-ledger-bucket"}) as forwarder:
        invocation = forwarder.invoke(sqs_event)
    output = capfd.readouterr().out

    assert failures(invocation, sqs_event) == set()
    assert counted(relay) == {"gap-1": 1, "gap-2": 1}
    assert emf_sums(output)["LedgerGap"] == 2
    assert "ledger gap" in output


def test_nothing_delivered_writes_no_object(relay: Relay) -> None:
    relay.put_session()
    sqs_event = relay.sqs_event(["not json"])
    with relay.forwarder() as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()
    assert ledger_objects(relay) == {}


def test_the_ledgers_object_is_checked_by_its_checksum_not_signed_over_http(aws: AwsEnv) -> None:
    """As over HTTPS, where S3 leaves a checksummed body out of the signature: over moto's
    HTTP, botocore would hash every object into it, a cost the deployed forwarder never pays.
    The object still goes with its CRC32, and arrives whole."""
    s3 = aws.client("s3", ledger_s3_config())
    sent: list[dict[str, str]] = []

    def keep_headers(request: Any, **_: Any) -> None:
        sent.append(
            {
                name.lower(): value.decode() if isinstance(value, bytes) else value
                for name, value in request.headers.items()
            }
        )

    s3.meta.events.register("before-send.s3.PutObject", keep_headers)
    s3.create_bucket(Bucket="ledger-signing")
    body = compress(b'{"line": 1}\n' * 1000)

    s3.put_object(Bucket="ledger-signing", Key="k.jsonl.zst", Body=body)

    (headers,) = sent
    assert headers["x-amz-content-sha256"].startswith(("UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED"))
    assert any(name.startswith("x-amz-checksum-") or "trailer" in name for name in headers)
    assert s3.get_object(Bucket="ledger-signing", Key="k.jsonl.zst")["Body"].read() == body
