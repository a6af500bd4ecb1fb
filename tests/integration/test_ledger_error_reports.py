"""ErrorReportsFunction with the delivery ledger (through the harness, a webhook from the
emulator): the letter of an event Stripe dropped carries the body the forwarder sent, read
back from the ledger, and the report's samples are recorded under rejections/ (one object per
Stripe event); a ledger that cannot be written costs the letters nothing and is counted."""

from __future__ import annotations

import json

import pytest

from meter_relay.events import format_timestamp, parse_rfc3339
from meter_relay.ledger import decompress
from meter_relay.ledger_store import RejectionLine
from tests.integration.dlq_helpers import METER_KEYS, forward, peek, run_json
from tests.integration.dlq_helpers import cli as cli  # the fixture
from tests.integration.error_report_helpers import (
    Reports,
    answer,
    function_url_request,
)
from tests.integration.error_report_helpers import reports as reports  # the fixture
from tests.plugins.relay import LEDGER_BUCKET, Relay, emf_sums
from tests.plugins.stripe_emulator import WEBHOOK_SECRET

pytestmark = pytest.mark.integration


def search(identifier: str, customer: str) -> dict[str, object]:
    return {
        "event_name": "search_calls",
        "identifier": identifier,
        "payload": {"customer": customer, "calls": "4", "region": "eu"},
    }


def rejected_through_the_forwarder(reports: Reports) -> dict[str, object]:
    """An event for a customer Stripe does not have, delivered by the forwarder (so in the
    ledger), dropped by Stripe in its validation window, and pushed as a webhook."""
    emulator = reports.emulator
    emulator.set_known_customers("cus_known")
    forward(reports.relay, [search("gone-1", "cus_gone")], ["m-gone"])
    emulator.set_webhooks((reports.receiver.url, WEBHOOK_SECRET))
    emulator.close_error_windows()
    emulator.wait_for_deliveries()
    (received,) = reports.receiver.received
    return function_url_request(received)


def test_a_reported_event_comes_back_with_its_body_and_is_recorded(
    reports: Reports, capfd: pytest.CaptureFixture[str]
) -> None:
    request = rejected_through_the_forwarder(reports)
    with reports.function(LEDGER_BUCKET=LEDGER_BUCKET, METER_KEYS=json.dumps(METER_KEYS)) as fn:
        status, outcome = answer(fn.invoke(request))
    assert status == 200
    assert (outcome["bodies_known"], outcome["unrecorded"]) == (1, 0)

    (letter,) = reports.letters()
    assert letter["attributes"]["ReportedBy"] == "stripe"
    assert letter["json"]["payload"] == {"customer": "cus_gone", "calls": "4", "region": "eu"}
    assert letter["json"]["identifier"] == "gone-1"

    s3 = reports.relay.aws.client("s3")
    (item,) = s3.list_objects_v2(Bucket=LEDGER_BUCKET, Prefix="rejections/")["Contents"]
    assert item["Key"].endswith(f"/{outcome['event_id']}.jsonl.zst")
    data = s3.get_object(Bucket=LEDGER_BUCKET, Key=item["Key"])["Body"].read()
    (line,) = decompress(data).splitlines()
    recorded = json.loads(line)
    assert (recorded["identifier"], recorded["code"], recorded["stripe_event_id"]) == (
        "gone-1",
        "meter_event_customer_not_found",
        outcome["event_id"],
    )
    assert set(recorded) <= set(RejectionLine.__struct_fields__)
    # when Stripe reported it, not when it was processed: a report processed again later (a
    # retry, a late errors pull) must not make a replay delivered meanwhile look rejected
    created = parse_rfc3339(json.loads(str(request["body"]))["created"])
    assert created is not None
    assert recorded["reported_at"] == format_timestamp(created)
    assert "ledger gap" not in capfd.readouterr().out


def test_a_reported_events_body_is_the_event_as_the_forwarder_sent_it(
    reports: Reports,
) -> None:
    """The function knows nothing of the meter's payload keys (no METER_KEYS, no catalog): the
    ledger holds the event as the stream call carried it, so the body needs none. (A body
    rebuilt with Stripe's default keys would be one no replay could send.)"""
    request = rejected_through_the_forwarder(reports)
    with reports.function(LEDGER_BUCKET=LEDGER_BUCKET) as fn:
        status, outcome = answer(fn.invoke(request))
    assert (status, outcome["bodies_known"]) == (200, 1)
    (letter,) = reports.letters()
    assert letter["json"]["payload"] == {"customer": "cus_gone", "calls": "4", "region": "eu"}


def test_a_ledger_that_cannot_be_written_costs_the_letters_nothing(
    reports: Reports, capfd: pytest.CaptureFixture[str]
) -> None:
    request = rejected_through_the_forwarder(reports)
    capfd.readouterr()
    with reports.function(LEDGER_BUCKET="no-such-ledger") as fn:
        status, outcome = answer(fn.invoke(request))
    output = capfd.readouterr().out
    assert status == 200
    assert (outcome["bodies_known"], outcome["unrecorded"]) == (0, 1)
    (letter,) = reports.letters()
    assert letter["attributes"]["Identifier"] == "gone-1"  # body unknown, the letter is there
    assert emf_sums(output)["LedgerGap"] == 1
    assert "ledger gap" in output


def test_a_replay_sends_a_reported_event_whose_rejection_the_ledger_missed(
    reports: Reports,
    cli: Relay,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The report's letter is in the DLQ but its rejections/ object is not (the write failed:
    a ledger gap). The ledger then holds only the delivery Stripe dropped; the letter itself
    says Stripe dropped it, so the replay sends it again once the customer exists."""
    monkeypatch.setenv("LEDGER_BUCKET", LEDGER_BUCKET)
    request = rejected_through_the_forwarder(reports)
    with reports.function(LEDGER_BUCKET=LEDGER_BUCKET, METER_KEYS=json.dumps(METER_KEYS)) as fn:
        assert answer(fn.invoke(request))[0] == 200
    s3 = cli.aws.client("s3")
    (written,) = s3.list_objects_v2(Bucket=LEDGER_BUCKET, Prefix="rejections/")["Contents"]
    s3.delete_object(Bucket=LEDGER_BUCKET, Key=written["Key"])  # as if its PUT had failed
    reports.emulator.set_known_customers("cus_known", "cus_gone")  # the operator's fix

    code, done = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes")

    assert code == 0
    (outcome,) = done["outcomes"]
    assert (outcome["action"], outcome["already_delivered"]) == ("replayed", [])
    assert peek(cli) == {}
    assert cli.emulator.identifiers()["gone-1"] == {"received": 2, "counted": 1}
