"""`meter-relay trace` and `meter-relay reconcile` against moto (the ledger's bucket, the DLQ,
the secret) and the emulator: events delivered by the forwarder (through the harness), one
cancelled through `dlq cancel`, one refused by the forwarder, one dropped later by Stripe and
pulled back with `errors pull`; then a discrepancy planted at Stripe (an event the relay never
sent, and a cancel it never made) that reconcile must report, exactly. The engine is DuckDB
(no Athena workgroup is known): the same SQL Athena runs (test_ledger_queries)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from meter_relay.ledger import decode, decompress
from meter_relay.stripe_client import StripeApi
from tests.integration.dlq_helpers import (
    api_event,
    deliver_sync,
    forward,
    run,
    run_json,
)
from tests.integration.dlq_helpers import cli as cli  # the fixture
from tests.integration.error_report_helpers import TABLE
from tests.integration.test_dlq_operator import create_stack
from tests.integration.test_ledger_queries import athena_results
from tests.plugins.relay import API_VERSION, LEDGER_BUCKET, Relay

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
HOUR = NOW.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)  # settled long ago


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def at(minutes: float) -> str:
    return iso(HOUR + timedelta(minutes=minutes))


@pytest.fixture
def ledger(cli: Relay, monkeypatch: pytest.MonkeyPatch) -> Relay:
    """The operator's environment, with the ledger's bucket (no workgroup: DuckDB)."""
    monkeypatch.setenv("LEDGER_BUCKET", LEDGER_BUCKET)
    return cli


def usage(identifier: str, customer: str, value: str, minutes: float) -> dict[str, Any]:
    return api_event(identifier, customer, value, timestamp=at(minutes))


def cancel_at_stripe(relay: Relay, identifier: str) -> None:
    """A cancel made at Stripe by someone else (the dashboard, another tool): not recorded."""
    response = requests.post(
        f"{relay.emulator_url}/v2/billing/meter_event_adjustments",
        json={"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": identifier}},
        headers={"Authorization": f"Bearer {relay.secret_key}", "Stripe-Version": API_VERSION},
        timeout=10,
    )
    response.raise_for_status()


def cancel(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, *identifiers: str
) -> tuple[int, str]:
    """`meter-relay dlq cancel` of these api_requests identifiers: (exit status, stdout)."""
    listed = tmp_path / "cancel.txt"
    listed.write_text("".join(f"{i}\n" for i in identifiers))
    code, out, _ = run(
        capsys,
        "dlq",
        "cancel",
        "--identifiers",
        str(listed),
        "--event-name",
        "api_requests",
        "--yes",
    )
    return code, out


# the two hours of the planted test: settled long ago
TWO_HOURS = ["--since", iso(HOUR), "--until", iso(HOUR + timedelta(hours=2))]


def reconcile(capsys: pytest.CaptureFixture[str], *more: str) -> tuple[int, dict[str, Any]]:
    return run_json(capsys, "reconcile", "--event-name", "api_requests", *TWO_HOURS, *more)


def mismatches(document: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    return {(m["customer"], m["start"], m["ledger"], m["stripe"]) for m in document["mismatches"]}


def test_reconcile_finds_exactly_the_planted_discrepancies(
    ledger: Relay, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    forward(
        ledger,
        [
            {"events": [usage("a-1", "cus_a", "2", 5), usage("a-2", "cus_a", "3", 10)]},
            usage("a-3", "cus_a", "4", 70),  # the next hour
            {"events": [usage("b-1", "cus_b", "5", 15), usage("b-2", "cus_b", "6", 20)]},
            usage("c-1", "cus_c", "7", 25),
            usage("c-2", "cus_c", "1", 30),
        ],
        ["m-a", "m-a3", "m-b", "m-c1", "m-c2"],
    )
    # an SQS retry of a message already delivered: Stripe counts it once, so does the ledger
    forward(ledger, [usage("c-2", "cus_c", "1", 30)], ["m-c2"])
    code, out = cancel(capsys, tmp_path, "a-2")
    assert code == 0, out

    code, clean = reconcile(capsys)
    assert (code, clean["mismatches"]) == (0, [])
    assert clean["customers"] == ["cus_a", "cus_b", "cus_c"]
    assert clean["compared"] == 4  # cus_a twice (two hours), cus_b, cus_c
    assert clean["formula"] == "sum"

    # planted: an event counted at Stripe that the relay never sent, and a cancel it never made
    deliver_sync(ledger, usage("x-1", "cus_b", "100", 40))
    cancel_at_stripe(ledger, "c-1")

    # the ledger's events were delivered moments ago: Stripe's summaries may not have them yet,
    # so by default the two windows are unsettled, not mismatches (the emulator's summaries
    # are at once: --settle-minutes 0 compares them)
    code, recent = reconcile(capsys)
    assert (code, recent["mismatches"]) == (0, [])
    assert {(u["customer"], u["start"]) for u in recent["unsettled"]} == {
        ("cus_b", at(0)),
        ("cus_c", at(0)),
    }

    code, planted = reconcile(capsys, "--settle-minutes", "0")
    assert code == 1
    assert planted["unsettled"] == []
    assert mismatches(planted) == {
        ("cus_b", at(0), "11", "111"),
        ("cus_c", at(0), "8", "1"),
    }
    by_customer = {m["customer"]: m for m in planted["mismatches"]}
    assert by_customer["cus_b"]["difference"] == "100"
    assert by_customer["cus_c"]["end"] == at(60)

    # --json, the spelling, is --output json
    settle = ("--settle-minutes", "0")
    code, out, _ = run(
        capsys, "reconcile", "--event-name", "api_requests", *TWO_HOURS, *settle, "--json"
    )
    assert (code, json.loads(out)) == (1, planted)

    code, out, err = run(capsys, "reconcile", "--event-name", "api_requests", *TWO_HOURS, *settle)
    assert code == 1
    assert "2 mismatches" in out
    assert f"cus_b     {at(0)}  11      111     100" in out
    assert "name others with --customer" in err


def test_reconcile_leaves_out_the_last_minutes_and_says_so(
    ledger: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    recent = datetime.now(UTC) - timedelta(minutes=2)
    forward(ledger, [api_event("now-1", "cus_a", "3", timestamp=iso(recent))], ["m-now"])
    since = iso(recent - timedelta(minutes=30))
    code, document = run_json(capsys, "reconcile", "--event-name", "api_requests", "--since", since)
    assert code == 0
    settled = datetime.fromisoformat(document["left_out_after"])
    assert settled <= datetime.now(UTC) - timedelta(minutes=5)
    assert settled > datetime.now(UTC) - timedelta(minutes=7)
    assert document["compared"] == 0  # its event is in the minutes left out
    code, out, _ = run(
        capsys,
        "reconcile",
        "--event-name",
        "api_requests",
        "--since",
        since,
        "--settle-minutes",
        "0",
    )
    assert code == 0
    assert "1 customers, 1 customer-windows with usage, 0 mismatches" in out
    # nothing left for Stripe to settle: only the seconds of --until's (now's) minute
    assert "Stripe's summaries are by whole minutes (--until cut to its minute)" in out
    assert "eventually consistent" not in out


def test_a_backlog_stripe_has_not_summarised_yet_is_unsettled_until_it_has(
    ledger: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against an emulator whose summaries lag its stream by 10 minutes, as Stripe's may: old-
    stamped events delivered just now (a backlog) are in the ledger and not yet in Stripe's
    summaries. By default their window is unsettled (exit 0); compared at once it would be a
    false mismatch; once Stripe has them, it agrees."""
    ledger.emulator.configure(summaries_lag_s=600)
    forward(ledger, [usage("late-1", "cus_l", "9", 15)], ["m-late"])

    code, waiting = reconcile(capsys)
    assert (code, waiting["mismatches"]) == (0, [])
    assert waiting["unsettled"] == [{"customer": "cus_l", "start": at(0), "end": at(60)}]
    code, hasty = reconcile(capsys, "--settle-minutes", "0")
    assert (code, mismatches(hasty)) == (1, {("cus_l", at(0), "9", "0")})

    ledger.emulator.configure(summaries_lag_s=0)  # Stripe has caught up
    code, caught_up = reconcile(capsys)
    assert (code, caught_up["mismatches"], caught_up["unsettled"]) == (0, [], [])
    assert caught_up["compared"] == 1


def test_reconcile_refuses_what_it_cannot_do_in_one_line(
    ledger: Relay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(
        capsys, "reconcile", "--event-name", "nobody_meters_this", "--since", iso(HOUR)
    )
    assert (code, out) == (2, "")
    assert (
        err == "meter-relay: Stripe: no meter for event_name 'nobody_meters_this' in the account\n"
    )
    code, _, err = run(
        capsys, "reconcile", "--event-name", "api_requests", "--since", iso(datetime.now(UTC))
    )
    assert code == 2
    assert "nothing to compare" in err
    code, _, err = run(
        capsys,
        "reconcile",
        "--event-name",
        "api_requests",
        "--since",
        iso(HOUR),
        "--engine",
        "athena",
    )
    assert code == 2
    assert "--engine duckdb" in err
    monkeypatch.delenv("LEDGER_BUCKET")
    code, _, err = run(capsys, "reconcile", "--event-name", "api_requests", "--since", iso(HOUR))
    assert code == 2
    assert "the delivery ledger is not known" in err


def test_reconcile_says_when_stripe_cannot_be_reached(
    ledger: Relay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:9")  # nothing listens there
    code, out, err = run(capsys, "reconcile", "--event-name", "api_requests", "--since", iso(HOUR))
    assert (code, out) == (3, "")
    assert err.startswith("meter-relay: Stripe: ")
    assert len(err.splitlines()) == 1


def test_reconcile_says_a_refused_key_is_the_setups_fault(
    ledger: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stripe answered, and refused the key (revoked, or another account's): exit 2, not
    "could not be reached" (3), which would send the operator to wait and retry."""
    forward(ledger, [usage("k-1", "cus_a", "2", 5)], ["m-k"])
    ledger.emulator.configure(accepted_keys=["sk_test_another_accounts"])  # ours is revoked
    code, out, err = run(capsys, "reconcile", "--event-name", "api_requests", "--since", iso(HOUR))
    assert (code, out) == (2, "")
    assert err.startswith("meter-relay: Stripe: ")
    assert "401" in err or "Invalid API Key" in err


def test_reconcile_says_a_meter_of_another_event_name_is_the_callers_mistake(
    ledger: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    other = ledger.emulator.create_meter("searches_other")
    code, out, err = run(
        capsys,
        "reconcile",
        "--event-name",
        "api_requests",
        "--meter-id",
        other["id"],
        "--since",
        iso(HOUR),
    )
    assert (code, out) == (2, "")
    assert f"meter {other['id']} is for event_name 'searches_other'" in err


# ----- trace -------------------------------------------------------------------------------------
@pytest.fixture
def reports_table(ledger: Relay, monkeypatch: pytest.MonkeyPatch) -> str:
    ledger.aws.client("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    monkeypatch.setenv("ERROR_REPORTS_TABLE", TABLE)
    return TABLE


def test_trace_says_where_each_event_is(
    ledger: Relay, reports_table: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ledger.emulator.set_known_customers("cus_a")
    forward(
        ledger,
        [
            usage("t-delivered", "cus_a", "2", 5),
            usage("t-cancelled", "cus_a", "3", 6),
            usage("t-refused", "cus_a", "0", 7),  # the forwarder dead-letters it
            usage("t-rejected", "cus_gone", "4", 8),  # Stripe takes it, then drops it
        ],
        ["m-1", "m-2", "m-3", "m-4"],
    )
    assert cancel(capsys, tmp_path, "t-cancelled")[0] == 0
    ledger.emulator.close_error_windows()
    since = iso(NOW - timedelta(hours=1))
    assert run(capsys, "errors", "pull", "--since", since)[0] == 0

    code, document = run_json(
        capsys, "trace", "t-delivered", "t-cancelled", "t-refused", "t-rejected", "t-never"
    )
    assert code == 1  # t-never is unknown
    events = {e["identifier"]: e for e in document["events"]}
    assert {i: e["where"] for i, e in events.items()} == {
        "t-delivered": "delivered",
        "t-cancelled": "cancelled",
        "t-refused": "dead-lettered",
        "t-rejected": "rejected by Stripe",
        "t-never": "unknown",
    }
    assert document["unknown"] == ["t-never"]
    code, out, err = run(capsys, "trace", "t-delivered", "t-never", "--json")
    assert code == 1
    assert json.loads(out)["events"] == [events["t-delivered"], events["t-never"]]
    assert err == ("1 of 2 events are unknown: not in the ledger (widen --since?) nor in the DLQ\n")
    code, _, err = run(capsys, "trace", "t-never", "--no-dlq")
    assert (code, err) == (
        1,
        "1 of 1 events are unknown: not in the ledger (widen --since?); the DLQ was not read\n",
    )
    (delivered,) = events["t-delivered"]["records"]
    assert (delivered["kind"], delivered["message_id"], delivered["customer"]) == (
        "delivered",
        "m-1",
        "cus_a",
    )
    assert delivered["request_id"]  # the invocation that delivered it
    cancelled = events["t-cancelled"]["records"][-1]
    assert (cancelled["kind"], cancelled["status"]) == ("cancelled", "pending")
    assert cancelled["adjustment_id"]
    (refused,) = events["t-refused"]["records"]
    assert (refused["kind"], refused["code"]) == ("dead_lettered", "payload_invalid_value")
    kinds = [r["kind"] for r in events["t-rejected"]["records"]]
    assert kinds == ["delivered", "rejected", "dead_lettered"]  # the letter errors pull wrote
    rejected = events["t-rejected"]["records"][1]
    assert rejected["code"] == "meter_event_customer_not_found"
    assert rejected["stripe_event_id"].startswith("evt_")
    assert document["searched"]["engine"] == "duckdb"

    identifiers = tmp_path / "ids.txt"
    identifiers.write_bytes("\ufefft-delivered\r\n\r\nt-refused\r\n".encode())  # from Excel
    code, out, err = run(capsys, "trace", "--file", str(identifiers))
    assert code == 0, (out, err)
    assert out.splitlines()[0] == "t-delivered  delivered"
    assert "in the DLQ: payload_invalid_value" in out
    assert "searched the ledger recorded" in out
    assert err == ""

    # the letter of the reported event carries its body, read back from the ledger
    (letter,) = [
        m for m in ledger.dlq_messages() if (m["json"] or {}).get("identifier") == "t-rejected"
    ]
    assert letter["json"]["payload"] == {"stripe_customer_id": "cus_gone", "value": "4"}
    assert letter["attributes"]["ReportedBy"] == "stripe"


def test_trace_needs_identifiers_and_the_ledger(
    ledger: Relay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "trace")
    assert code == 2
    assert err == (
        "meter-relay: name the events: IDENTIFIER... or --file FILE (one identifier a line)\n"
    )
    code, _, err = run(capsys, "trace", "--file", "/no/such/file")
    assert (code, err) == (2, "meter-relay: cannot read /no/such/file: No such file or directory\n")
    # reversed, every event would be "unknown": the caller's to fix, not a finding
    times = ("--since", "2026-12-02T00:00:00Z", "--until", "2026-12-01T00:00:00Z")
    code, out, err = run(capsys, "trace", "x", *times)
    assert (code, out) == (2, "")
    assert (
        err == "meter-relay: --until 2026-12-01T00:00:00Z is before --since 2026-12-02T00:00:00Z\n"
    )
    monkeypatch.setenv("LEDGER_BUCKET", "no-such-ledger")
    code, _, err = run(capsys, "trace", "x")
    assert code == 3  # AWS said the bucket is not there: one line
    assert err.startswith("meter-relay: AWS failed: ListObjectsV2: NoSuchBucket")


def test_cancels_are_recorded_in_the_ledger_once_per_run(
    ledger: Relay, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    forward(ledger, [usage("r-1", "cus_a", "2", 5), usage("r-2", "cus_a", "2", 6)], ["m1", "m2"])
    code, _ = cancel(capsys, tmp_path, "r-1", "r-2", "r-unknown")
    assert code == 1  # Stripe refused r-unknown
    s3 = ledger.aws.client("s3")
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=LEDGER_BUCKET, Prefix="cancellations/").get(
            "Contents", []
        )
    ]
    (key,) = keys
    lines = [json.loads(x) for x in decode_text(s3.get_object(Bucket=LEDGER_BUCKET, Key=key))]
    assert [(x["identifier"], x["status"]) for x in lines] == [
        ("r-1", "pending"),
        ("r-2", "pending"),
    ]
    assert all(x["adjustment_id"] for x in lines)


def test_a_cancel_run_interrupted_records_what_stripe_took(
    ledger: Relay,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C after Stripe took the first cancel: the rerun skips it (--skip AUDIT_FILE), so
    this run is the only one that can record it."""
    forward(ledger, [usage("i-1", "cus_a", "2", 5), usage("i-2", "cus_a", "2", 6)], ["m1", "m2"])
    cancel_at = StripeApi.cancel_meter_event
    calls: list[str] = []

    def interrupted_on_the_second(
        self: StripeApi, event_name: str, identifier: str, timeout: float, **options: Any
    ) -> Any:
        calls.append(identifier)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return cancel_at(self, event_name, identifier, timeout, **options)

    monkeypatch.setattr(StripeApi, "cancel_meter_event", interrupted_on_the_second)
    code, _ = cancel(capsys, tmp_path, "i-1", "i-2")

    assert code == 130
    s3 = ledger.aws.client("s3")
    (item,) = s3.list_objects_v2(Bucket=LEDGER_BUCKET, Prefix="cancellations/")["Contents"]
    lines = [
        json.loads(x) for x in decode_text(s3.get_object(Bucket=LEDGER_BUCKET, Key=item["Key"]))
    ]
    assert [(x["identifier"], x["status"]) for x in lines] == [("i-1", "pending")]


def decode_text(response: Any) -> list[str]:
    return decompress(response["Body"].read()).decode().splitlines()


def test_decode_reads_what_the_forwarder_wrote(ledger: Relay) -> None:
    """The ledger's own reader (ledger.decode) and DuckDB read the same objects."""
    forward(ledger, [usage("d-1", "cus_a", "2", 5)], ["m1"])
    s3 = ledger.aws.client("s3")
    (item,) = s3.list_objects_v2(Bucket=LEDGER_BUCKET, Prefix="events/")["Contents"]
    (line,) = decode(s3.get_object(Bucket=LEDGER_BUCKET, Key=item["Key"])["Body"].read())
    assert line.timestamp == at(5)


def test_a_stack_with_the_ledger_is_traced_through_its_athena_workgroup(
    relay: Relay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--stack-name alone: the bucket, workgroup and database from the stack's outputs, and
    Athena chosen for them (moto's Athena answers what it is given: the rows below)."""
    for name, value in relay.aws.env.items():
        monkeypatch.setenv(name, value)
    create_stack(
        relay,
        "billing",
        LedgerBucketName=LEDGER_BUCKET,
        LedgerWorkGroupName="billing-ledger",
        LedgerDatabaseName="meter_relay_billing",
    )
    relay.aws.client("athena").create_work_group(Name="billing-ledger", Configuration={})
    row = {
        "kind": "delivered",
        "identifier": "s-1",
        "event_name": "api_requests",
        "customer": "cus_a",
        "value": "2",
        "event_time": at(5),
        "recorded_at": at(6),
        "reference": "req-1",
        "detail": "m-1",
        "code": None,
    }
    athena_results(relay.aws, [row], list(row))
    code, document = run_json(capsys, "--stack-name", "billing", "trace", "s-1", "--no-dlq")
    assert code == 0
    assert document["searched"]["engine"] == "athena"
    (event,) = document["events"]
    assert (event["where"], event["records"][0]["request_id"]) == ("delivered", "req-1")
    athena = relay.aws.client("athena")
    (execution,) = athena.list_query_executions(WorkGroup="billing-ledger")["QueryExecutionIds"]
    sent = athena.get_query_execution(QueryExecutionId=execution)["QueryExecution"]
    assert '"meter_relay_billing"."events"' in sent["Query"]
