"""Replays and redrives consult the delivery ledger: an event Stripe already has (delivered by
the forwarder, not reported rejected since) is not sent again and its letter is settled, also
when it was first seen more than 24 hours ago, when Stripe's own deduplication no longer
protects it. Against moto and the emulator; the CLI on DuckDB, DlqReplayFunction (through the
harness) on Athena in moto."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devkit.harness import load_function
from meter_relay.events import format_timestamp
from meter_relay.ledger_store import LedgerBucket, LedgerUnavailable
from tests.integration.dlq_helpers import (
    ago,
    api_event,
    by_message,
    forward,
    peek,
    put_letter,
    put_redriven,
    run,
    run_json,
    take_usage_queue,
)
from tests.integration.dlq_helpers import cli as cli  # the fixture
from tests.integration.test_ledger_queries import athena_results
from tests.plugins.relay import LEDGER_BUCKET, TEMPLATE, Relay

pytestmark = pytest.mark.integration

OLD = {"hours": 30}  # first seen past Stripe's 24 hours


@pytest.fixture
def ledger(cli: Relay, monkeypatch: pytest.MonkeyPatch) -> Relay:
    monkeypatch.setenv("LEDGER_BUCKET", LEDGER_BUCKET)
    return cli


def delivered_and_dead_lettered(relay: Relay) -> dict[str, str]:
    """Two old letters: one of an event the forwarder delivered since (the ledger has it), one
    of an event never delivered (Stripe answered 429: it has not). Their DLQ message ids by
    identifier."""
    forward(relay, [api_event("done-1", "cus_a", "2")], ["m-done"])
    return {
        "done-1": put_letter(relay, api_event("done-1", "cus_a", "2"), "rate_limit", ago(**OLD)),
        "new-1": put_letter(relay, api_event("new-1", "cus_a", "3"), "rate_limit", ago(**OLD)),
    }


def sent_identifiers(relay: Relay) -> list[str]:
    return [json.loads(m["Body"])["identifier"] for m in take_usage_queue(relay)]


def test_a_replay_sends_only_what_stripe_does_not_have(
    ledger: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = delivered_and_dead_lettered(ledger)

    code, dry = run_json(capsys, "dlq", "replay", "--dry-run")
    assert code == 0
    planned = by_message(dry["outcomes"])
    assert planned[letters["done-1"]]["action"] == "would_settle"
    assert planned[letters["done-1"]]["already_delivered"] == ["done-1"]
    assert planned[letters["new-1"]]["action"] == "would_replay"
    assert len(peek(ledger)) == 2

    code, done = run_json(capsys, "dlq", "replay", "--yes")
    outcomes = by_message(done["outcomes"])
    assert code == 0
    assert outcomes[letters["done-1"]]["action"] == "already_delivered"
    assert outcomes[letters["done-1"]]["identifiers"] == []
    assert outcomes[letters["new-1"]]["action"] == "replayed"
    # 30 hours old, and no warning that Stripe would count them again: the ledger knows
    assert [o["warnings"] for o in done["outcomes"]] == [[], []]
    assert sent_identifiers(ledger) == ["new-1"]
    assert peek(ledger) == {}  # both letters settled


def test_an_old_letter_whose_outcome_stripe_never_gave_is_replayed_with_a_warning(
    ledger: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    """No answer, a 500, or receives spent on them: Stripe may have taken the events without
    the ledger knowing. Past Stripe's 24 hours the ledger cannot vouch for them: warned."""
    forward(ledger, [api_event("done-2", "cus_a", "2")], ["m-done"])
    letters = {
        code: put_letter(ledger, api_event(f"{code}-1", "cus_a", "1"), code, ago(**OLD))
        for code in ("no_answer", "api_error", "http_502", "rate_limit")
    }
    letters["done"] = put_letter(ledger, api_event("done-2", "cus_a", "2"), "no_answer", ago(**OLD))
    letters["recent"] = put_letter(
        ledger, api_event("recent-1", "cus_a", "1"), "no_answer", ago(hours=2)
    )

    code, dry = run_json(capsys, "dlq", "replay", "--dry-run")

    assert code == 0
    warned = {name for name, m in letters.items() if by_message(dry["outcomes"])[m]["warnings"]}
    assert warned == {"no_answer", "api_error", "http_502"}
    (warning,) = by_message(dry["outcomes"])[letters["no_answer"]]["warnings"]
    assert "leaves open whether Stripe took it" in warning


def test_a_sync_replay_never_bills_a_delivered_event_twice(
    ledger: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    delivered_and_dead_lettered(ledger)
    code, done = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes")
    assert code == 0
    assert done["counts"] == {"already_delivered": 1, "replayed": 1}
    received = ledger.emulator.identifiers()
    assert received["done-1"] == {"received": 1, "counted": 1}  # the forwarder's only
    assert received["new-1"]["counted"] == 1


def test_what_a_sync_replay_bills_is_in_the_ledger_and_never_billed_again(
    ledger: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sync replay reaches Stripe without the forwarder: it records what Stripe counted, so
    trace finds it, and a copy dead-lettered again is not sent past Stripe's 24 hours."""
    put_letter(ledger, api_event("sync-1", "cus_a", "3"), "rate_limit", ago(**OLD), "m-sync")

    code, done = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes")
    assert (code, done["counts"]) == (0, {"replayed": 1})
    assert [o["warnings"] for o in done["outcomes"]] == [[]]

    code, traced = run_json(capsys, "trace", "sync-1", "--no-dlq")
    assert code == 0
    ((event,),) = [e["records"] for e in traced["events"]]
    assert (event["kind"], event["message_id"], event["customer"], event["value"]) == (
        "delivered",
        "m-sync",
        "cus_a",
        "3",
    )
    assert event["request_id"].startswith("sync-replay-")
    code, out, _ = run(capsys, "trace", "sync-1", "--no-dlq")
    assert f"by a sync replay {event['request_id']} (SQS message m-sync;" in out

    again = put_letter(ledger, api_event("sync-1", "cus_a", "3"), "rate_limit", ago(**OLD))
    code, done = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes")
    assert (code, by_message(done["outcomes"])[again]["action"]) == (0, "already_delivered")
    assert ledger.emulator.identifiers()["sync-1"] == {"received": 1, "counted": 1}


def test_a_sync_replay_the_ledger_cannot_record_says_so(
    ledger: Relay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stripe counted them: the letters are settled, and the run warns of the ledger's gap."""
    letter = put_letter(ledger, api_event("gap-1", "cus_a", "3"), "api_error", ago(minutes=5))

    def unwritable(*_: Any) -> str:
        raise LedgerUnavailable("s3://ledger/events/...: AccessDenied")

    monkeypatch.setattr(LedgerBucket, "put", unwritable)
    code, done = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes")

    outcome = by_message(done["outcomes"])[letter]
    assert (code, outcome["action"]) == (0, "replayed")
    (warning,) = outcome["warnings"]
    assert warning.startswith("Stripe counted these events, but the delivery ledger could not")
    assert ledger.emulator.identifiers()["gap-1"]["counted"] == 1
    assert peek(ledger) == {}


def test_a_redrive_leaves_out_what_stripe_has(
    ledger: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    forward(ledger, [api_event("env-1", "cus_a", "1"), api_event("all-1")], ["m-1", "m-2"])
    partly = put_redriven(
        ledger, {"events": [api_event("env-1", "cus_a", "1"), api_event("env-2", "cus_b", "2")]}
    )
    wholly = put_redriven(ledger, {"events": [api_event("all-1")]})

    code, done = run_json(capsys, "dlq", "redrive")
    outcomes = by_message(done["outcomes"])
    assert code == 0
    assert (outcomes[partly]["action"], outcomes[partly]["already_delivered"]) == (
        "redriven",
        ["env-1"],
    )
    assert outcomes[partly]["identifiers"] == ["env-2"]
    assert outcomes[wholly]["action"] == "already_delivered"
    assert outcomes[partly]["warnings"] == []
    (copy,) = take_usage_queue(ledger)
    (sent,) = json.loads(copy["Body"])["events"]  # an envelope still, of the other event only
    assert (sent["identifier"], sent["payload"]["stripe_customer_id"]) == ("env-2", "cus_b")
    assert peek(ledger) == {}


def test_a_ledger_that_cannot_be_read_keeps_every_message(
    ledger: Relay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    letters = delivered_and_dead_lettered(ledger)
    monkeypatch.setenv("LEDGER_BUCKET", "no-such-ledger")
    code, done = run_json(capsys, "dlq", "replay", "--yes")
    assert code == 3  # AWS could not be read: nothing sent
    assert len(done["outcomes"]) == 2
    for outcome in done["outcomes"]:
        assert outcome["action"] == "kept"
        assert outcome["detail"].startswith("kept whole: the ledger: s3://no-such-ledger")
    assert take_usage_queue(ledger) == []
    assert set(peek(ledger)) == set(letters.values())


# ----- the function, on Athena -------------------------------------------------------------------
def test_the_replay_function_asks_athena_and_settles_what_it_says_was_delivered(
    relay: Relay,
) -> None:
    done = put_letter(relay, api_event("fn-done", "cus_a", "2"), "api_error", ago(**OLD))
    new = put_letter(relay, api_event("fn-new", "cus_a", "3"), "api_error", ago(**OLD))
    athena = relay.aws.client("athena")
    athena.create_work_group(Name="local-ledger", Configuration={})
    delivered: dict[str, str | None] = {
        "identifier": "fn-done",
        "delivered_at": format_timestamp(ago(hours=29)),
    }
    athena_results(relay.aws, [delivered], ["identifier", "delivered_at"])
    env_vars = relay.env_vars()
    env_vars["DlqReplayFunction"] = {
        "STRIPE_API_BASE": relay.emulator_url,
        "STRIPE_SECRET_ID": relay.secret_id,
        "DEAD_LETTER_QUEUE_URL": relay.dlq_url,
        "USAGE_QUEUE_URL": relay.queue_url,
        "LEDGER_BUCKET": LEDGER_BUCKET,
        "LEDGER_WORKGROUP": "local-ledger",
        "LEDGER_DATABASE": "meter_relay_local",
    }
    with load_function(
        TEMPLATE, "DlqReplayFunction", env_vars=env_vars, extra_env=relay.aws.env
    ) as function:
        invocation = function.invoke({})
    assert invocation.error is None, invocation.error
    result: dict[str, Any] = invocation.result
    outcomes = by_message(result["outcomes"])
    assert outcomes[done]["action"] == "already_delivered"
    assert outcomes[new]["action"] == "replayed"
    assert sent_identifiers(relay) == ["fn-new"]
    (execution,) = athena.list_query_executions(WorkGroup="local-ledger")["QueryExecutionIds"]
    query = athena.get_query_execution(QueryExecutionId=execution)["QueryExecution"]
    assert query["QueryExecutionContext"]["Database"] == "meter_relay_local"
    assert "'fn-done'" in query["Query"]
    assert "'fn-new'" in query["Query"]
    assert '"meter_relay_local"."events"' in query["Query"]
    # the letters' events were first seen 30 hours ago: their day (less an hour) is read on
    first_day = (datetime.now(UTC) - timedelta(hours=31)).strftime("%Y-%m-%d")
    assert f"e.dt BETWEEN '{first_day}'" in query["Query"]
