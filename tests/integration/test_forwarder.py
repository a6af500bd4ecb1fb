"""ForwarderFunction through the harness, against moto (SQS, SSM) and the Stripe emulator.

Every path of a batch: delivered, dead-lettered with Stripe's codes, or returned to the queue
in `batchItemFailures`; never lost and never counted twice. Batches are small and retry delays
short (tests/plugins/relay.py); fault sequences are seeded, and a single stream call's worth of
events keeps its requests in order, so each scenario is deterministic.
"""

from __future__ import annotations

import contextlib
import gc
import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devkit.harness import Invocation
from tests.plugins.relay import DEAD_LETTER_QUEUE, ROOT, Relay, emf_sums, queue_url

pytestmark = pytest.mark.integration

FORWARDER_SAMPLES = sorted((ROOT / "events").glob("forwarder-*.json"))
DLQ_ATTRIBUTES = {"ErrorCode", "ErrorMessage", "SourceMessageId", "FirstSeen"}


def event(
    identifier: str | None, customer: str = "cus_a", value: str | int = "1"
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": customer, "value": value},
    }
    if identifier is not None:
        body["identifier"] = identifier
    return body


def hours_ago(hours: float) -> str:
    moment = datetime.now(UTC) - timedelta(hours=hours)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def failures(invocation: Invocation, sqs_event: dict[str, Any]) -> set[str]:
    """The failed message ids, after checking the response is what ReportBatchItemFailures
    accepts: only `batchItemFailures`, each item only an `itemIdentifier` of the batch."""
    assert invocation.error is None, invocation.error
    result = invocation.result
    assert isinstance(result, dict)
    assert set(result) == {"batchItemFailures"}
    items = result["batchItemFailures"]
    assert isinstance(items, list)
    assert all(isinstance(item, dict) and set(item) == {"itemIdentifier"} for item in items)
    ids = [item["itemIdentifier"] for item in items]
    assert len(ids) == len(set(ids))
    assert set(ids) <= {record["messageId"] for record in sqs_event["Records"]}
    return set(ids)


def counted(relay: Relay) -> dict[str, int]:
    return {k: v["counted"] for k, v in relay.emulator.identifiers().items() if v["counted"]}


def stream_statuses(relay: Relay) -> list[int]:
    return [entry["status"] for entry in relay.emulator.requests(endpoint="stream")]


def dead_letters(relay: Relay) -> dict[tuple[str, str | None], dict[str, Any]]:
    """DLQ messages by (SourceMessageId, Identifier), checking what every letter carries."""
    found: dict[tuple[str, str | None], dict[str, Any]] = {}
    for message in relay.dlq_messages():
        attributes = message["attributes"]
        assert attributes.keys() >= DLQ_ATTRIBUTES, attributes
        identifier = attributes.get("Identifier")
        if identifier is not None:
            assert "EventIndex" in attributes
            if isinstance(message["json"], dict):  # written into the body: a replay keeps it
                assert message["json"]["identifier"] == identifier
        key = (attributes["SourceMessageId"], identifier)
        assert key not in found, f"dead-lettered twice: {key}"
        found[key] = message
    return found


def codes(
    letters: dict[tuple[str, str | None], dict[str, Any]],
) -> dict[tuple[str, str | None], str]:
    return {key: message["attributes"]["ErrorCode"] for key, message in letters.items()}


# ----- the sample events ----------------------------------------------------------------------


@dataclass
class Expected:
    delivered: set[str]
    dead: dict[tuple[str, str | None], str] = field(default_factory=dict)


_M = "5f0c6a1e-0001-4c1b-9a51-00000000000"  # forwarder-mixed-batch.json's message ids
_E = "7d1e0c55-0002-4a8e-b7c4-000000000001"  # forwarder-envelope.json's
_I = "9a8b7c6d-0003-4b2a-8c1d-00000000000"  # forwarder-all-invalid.json's
SAMPLE_OUTCOMES = {
    "forwarder-mixed-batch.json": Expected(
        delivered={"order-1001-search", f"{_M}2-0", "batch-7-0", "batch-7-1", f"{_M}3-2"},
        dead={
            (f"{_M}4", None): "message_not_json",
            (f"{_M}5", f"{_M}5-0"): "payload_no_customer_defined",
            (f"{_M}6", "neg-1"): "payload_invalid_value",
            (f"{_M}7", "old-1"): "timestamp_too_far_in_past",
        },
    ),
    "forwarder-envelope.json": Expected(
        delivered={f"env-demo-{i}" for i in range(5)},
        dead={
            (_E, "env-demo-bad"): "payload_invalid_value",
            (_E, f"{_E}-6"): "parameter_unknown",
        },
    ),
    "forwarder-all-invalid.json": Expected(
        delivered=set(),
        dead={
            (f"{_I}1", None): "message_not_json",
            (f"{_I}2", None): "message_not_contract",
            (f"{_I}3", None): "message_not_contract",
            (f"{_I}4", "bad-value"): "payload_invalid_value",
            (f"{_I}5", None): "parameter_invalid",  # its identifier is too long to keep
        },
    ),
}


def refreshed_sample(path: Path) -> dict[str, Any]:
    """A sample with its SQS timestamps moved to now (the files are static)."""
    sample: dict[str, Any] = json.loads(path.read_text())
    now = str(int(time.time() * 1000))
    for record in sample["Records"]:
        record["attributes"]["SentTimestamp"] = now
        record["attributes"]["ApproximateFirstReceiveTimestamp"] = now
    return sample


def test_every_forwarder_sample_has_expected_outcomes() -> None:
    assert {path.name for path in FORWARDER_SAMPLES} == set(SAMPLE_OUTCOMES)


@pytest.mark.parametrize("sample", FORWARDER_SAMPLES, ids=lambda path: path.name)
def test_sample_event(relay: Relay, sample: Path) -> None:
    expected = SAMPLE_OUTCOMES[sample.name]
    sqs_event = refreshed_sample(sample)
    relay.put_session()
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    assert counted(relay) == dict.fromkeys(expected.delivered, 1)
    letters = dead_letters(relay)
    assert codes(letters) == expected.dead
    now = int(sqs_event["Records"][0]["attributes"]["ApproximateFirstReceiveTimestamp"])
    for message in letters.values():
        first_seen = message["attributes"]["FirstSeen"]
        assert first_seen.endswith("Z")
        assert abs(_epoch_ms(first_seen) - now) < 1000
    assert relay.emulator.errors()["total"] == 0
    assert relay.emulator.counted_more_than_once() == []


def _epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


# ----- mixed batches and envelopes --------------------------------------------------------------


def test_mixed_batch_delivers_the_valid_and_dead_letters_the_invalid(relay: Relay) -> None:
    bodies: list[dict[str, Any] | str] = [
        event("mixed-1"),
        event(None, "cus_b", "7"),  # no identifier: derived from the message id
        {"events": [event("mixed-env-0"), event(None, value="2"), event("mixed-env-2", value="x")]},
        {"event_name": "api_requests", "identifier": "mixed-no-payload"},
        "not json at all",
    ]
    ids = ["m-valid", "m-derived", "m-envelope", "m-no-payload", "m-not-json"]
    sqs_event = relay.sqs_event(bodies, ids)
    relay.put_session()
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    assert counted(relay) == {
        "mixed-1": 1,
        "m-derived-0": 1,
        "mixed-env-0": 1,
        "m-envelope-1": 1,
    }
    letters = dead_letters(relay)
    assert codes(letters) == {
        ("m-envelope", "mixed-env-2"): "payload_invalid_value",
        ("m-no-payload", "mixed-no-payload"): "parameter_missing",
        ("m-not-json", None): "message_not_json",
    }
    invalid_value = letters[("m-envelope", "mixed-env-2")]
    assert invalid_value["attributes"]["EventIndex"] == "2"
    assert invalid_value["attributes"]["EventName"] == "api_requests"
    assert invalid_value["attributes"]["ErrorParam"] == "payload.value"
    assert "'x'" in invalid_value["attributes"]["ErrorMessage"]
    assert invalid_value["json"]["payload"] == {"stripe_customer_id": "cus_a", "value": "x"}
    assert letters[("m-not-json", None)]["body"] == "not json at all"  # kept as it came
    first_seen = sqs_event["Records"][0]["attributes"]["ApproximateFirstReceiveTimestamp"]
    assert {_epoch_ms(m["attributes"]["FirstSeen"]) for m in letters.values()} == {int(first_seen)}


def test_envelopes_of_mixed_validity(relay: Relay) -> None:
    bodies: list[dict[str, Any]] = [
        {"events": [event("all-good-0"), event("all-good-1", value=5)]},  # a number: normalised
        {"events": [event("half-0"), event("half-1", value="0"), event(None, "")]},
        {"events": [event("none-0", value="-1"), {"payload": {}}, "not an event"]},
        {"events": []},
        {"events": [event("extra")], "meta": 1},
    ]
    ids = ["env-good", "env-half", "env-none", "env-empty", "env-extra"]
    sqs_event = relay.sqs_event(bodies, ids)
    relay.put_session()
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    assert counted(relay) == {"all-good-0": 1, "all-good-1": 1, "half-0": 1}
    delivered = relay.emulator.events(identifier="all-good-1")
    assert delivered[0]["payload"]["value"] == "5"
    letters = dead_letters(relay)
    assert codes(letters) == {
        ("env-half", "half-1"): "payload_invalid_value",
        ("env-half", "env-half-2"): "payload_no_customer_defined",
        ("env-none", "none-0"): "payload_invalid_value",
        ("env-none", "env-none-1"): "parameter_missing",
        ("env-none", "env-none-2"): "parameter_invalid",
        ("env-empty", None): "message_not_contract",
        ("env-extra", None): "message_not_contract",
    }
    assert {
        key: letter["attributes"]["EventIndex"]
        for key, letter in letters.items()
        if key[0] == "env-none"
    } == {
        ("env-none", "none-0"): "0",
        ("env-none", "env-none-1"): "1",
        ("env-none", "env-none-2"): "2",
    }


def test_many_dead_letters_from_one_message(relay: Relay) -> None:
    # 25 letters: more than one SendMessageBatch (10 entries at most)
    bodies = [{"events": [event(f"many-{n}", value="0") for n in range(25)] + [event("many-ok")]}]
    sqs_event = relay.sqs_event(bodies, ["many"])
    relay.put_session()
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    assert counted(relay) == {"many-ok": 1}
    letters = dead_letters(relay)
    assert codes(letters) == {("many", f"many-{n}"): "payload_invalid_value" for n in range(25)}
    assert sorted(int(m["attributes"]["EventIndex"]) for m in letters.values()) == list(range(25))


# ----- exactly once: identifiers and redelivery -----------------------------------------------


def test_redelivery_reuses_identifiers_and_counts_nothing_twice(relay: Relay) -> None:
    bodies = [
        event(None, "cus_a", "3"),
        {"events": [event(None, "cus_b", str(n + 1)) for n in range(120)]},  # 2 stream calls
        event("given-id"),
    ]
    ids = ["redeliver-a", "redeliver-b", "redeliver-c"]
    relay.put_session()
    with relay.forwarder() as forwarder:
        first = relay.sqs_event(bodies, ids)
        assert failures(forwarder.invoke(first), first) == set()
        after_first = counted(relay)
        again = relay.sqs_event(bodies, ids, receive_count=2)  # SQS delivers at least once
        assert failures(forwarder.invoke(again), again) == set()

    expected = {"redeliver-a-0", "given-id", *(f"redeliver-b-{n}" for n in range(120))}
    assert set(after_first) == expected
    identifiers = relay.emulator.identifiers()
    assert {k: v["received"] for k, v in identifiers.items()} == dict.fromkeys(expected, 2)
    assert counted(relay) == dict.fromkeys(expected, 1)
    assert relay.emulator.counted_more_than_once() == []


def test_a_batch_read_a_stream_calls_worth_at_a_time_judges_as_one_read_record_by_record(
    relay: Relay,
) -> None:
    """Single events in Stripe's form are judged together, a stream call's worth (100 records)
    at a time, each other record read on its own in its turn; the batch is still one: an
    identifier seen before in it is the same event again (sent, counted once) or, with other
    contents, refused as Stripe would count only the first."""
    now = hours_ago(0.1)

    def stripe_form(identifier: str, value: str = "1") -> dict[str, Any]:
        return {**event(identifier, value=value), "timestamp": now}

    bodies: list[dict[str, Any] | str] = [stripe_form(f"run-{n}") for n in range(250)]
    bodies[150] = stripe_form("run-5")  # the same event as message 5's: Stripe counts it once
    bodies[160] = stripe_form("run-6", value="2")  # message 6's identifier, other contents
    bodies[180] = {"events": [stripe_form("run-180a"), stripe_form("run-180b")]}
    bodies[201] = "not json"  # early in its run: the rest of the run is read one by one
    bodies[220] = stripe_form("run-220", value="x")
    ids = [f"m-run-{n}" for n in range(250)]
    sqs_event = relay.sqs_event(bodies, ids)
    relay.put_session()
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    assert codes(dead_letters(relay)) == {
        ("m-run-160", "run-6"): "duplicate_identifier_in_batch",
        ("m-run-201", None): "message_not_json",
        ("m-run-220", "run-220"): "payload_invalid_value",
    }
    delivered = {f"run-{n}" for n in range(250)} - {f"run-{n}" for n in (150, 160, 180, 201, 220)}
    assert counted(relay) == dict.fromkeys({*delivered, "run-180a", "run-180b"}, 1)
    assert relay.emulator.identifiers()["run-5"]["received"] == 2
    assert relay.emulator.counted_more_than_once() == []


def test_no_ssm_call_per_warm_invocation(relay: Relay, capfd: pytest.CaptureFixture[str]) -> None:
    relay.put_session()
    with relay.forwarder() as forwarder:
        first = relay.sqs_event([event("warm-1")])
        assert failures(forwarder.invoke(first), first) == set()
        cold_metrics = emf_sums(capfd.readouterr().out)
        # the parameter is gone: a warm invocation that still delivers never read it
        relay.aws.client("ssm").delete_parameter(Name=relay.parameter)
        second = relay.sqs_event([event("warm-2")])
        invocation = forwarder.invoke(second)
        assert invocation.cold_start is False
        assert failures(invocation, second) == set()
        warm_metrics = emf_sums(capfd.readouterr().out)

    assert counted(relay) == {"warm-1": 1, "warm-2": 1}
    assert cold_metrics["TokenParameterReads"] == 1
    assert warm_metrics["TokenParameterReads"] == 0
    assert warm_metrics["EventsDelivered"] == 1


# ----- the session token ------------------------------------------------------------------------


def test_expired_token_is_renewed_through_the_refresher_and_delivered(relay: Relay) -> None:
    stored = relay.put_session()
    with relay.forwarder(refresher=True) as forwarder:
        first = relay.sqs_event([event("before-expiry")])
        assert failures(forwarder.invoke(first), first) == set()
        # Stripe ends the session early: the cached token and the stored one are refused
        assert relay.emulator.expire_sessions() == 1
        # three stream calls at once all meet the expired token; one renewal serves them all
        second = relay.sqs_event(
            [{"events": [event(f"after-{m}-{n}") for n in range(90)]} for m in range(3)]
        )
        assert failures(forwarder.invoke(second), second) == set()

    renewed = relay.stored_session()
    assert renewed is not None
    assert renewed["session_id"] != stored["session_id"]  # the refresher replaced it
    expected = {"before-expiry", *(f"after-{m}-{n}" for m in range(3) for n in range(90))}
    assert counted(relay) == dict.fromkeys(expected, 1)
    assert stream_statuses(relay).count(401) >= 1
    assert len(relay.emulator.requests(endpoint="session")) == 2  # ours, then the refresher's
    assert relay.emulator.counted_more_than_once() == []


@pytest.mark.parametrize("stored", ["missing", "stale"])
def test_missing_or_stale_parameter_asks_the_refresher(relay: Relay, stored: str) -> None:
    if stored == "stale":
        relay.put_session(expires_at=hours_ago(1))
    sqs_event = relay.sqs_event([event(f"{stored}-0"), event(f"{stored}-1")])
    with relay.forwarder(refresher=True) as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    assert counted(relay) == {f"{stored}-0": 1, f"{stored}-1": 1}
    session = relay.stored_session()
    assert session is not None
    assert datetime.fromisoformat(session["expires_at"]) > datetime.now(UTC)


def test_refresher_failure_returns_the_messages(relay: Relay) -> None:
    relay.put_session(expires_at=hours_ago(1))
    relay.emulator.set_faults("session", error_rate=1.0)  # the refresher cannot get a session
    sqs_event = relay.sqs_event([event("no-session-0"), {"events": [event("no-session-1")]}])
    with relay.forwarder(refresher=True) as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == {r["messageId"] for r in sqs_event["Records"]}
    assert stream_statuses(relay) == []
    assert relay.dlq_messages() == []


def test_an_outage_asks_the_refresher_once_per_invocation_not_once_per_call(
    relay: Relay,
) -> None:
    relay.put_session(expires_at=hours_ago(1))  # one session request of the test's own
    relay.emulator.set_faults("session", error_rate=1.0)  # every refresh fails
    sqs_event = relay.sqs_event(
        [{"events": [event(f"outage-{m}-{n}") for n in range(100)]} for m in range(3)]
    )
    with relay.forwarder(refresher=True) as forwarder:
        first = forwarder.invoke(sqs_event)
        assert failures(first, sqs_event) == {r["messageId"] for r in sqs_event["Records"]}
        # three stream calls needed a session: the refresher was asked once for all of them
        assert len(relay.emulator.requests(endpoint="session")) == 1 + 1
        relay.emulator.set_faults("session", error_rate=0.0)  # Stripe is back
        second = forwarder.invoke(sqs_event)  # a new invocation tries again
        assert failures(second, sqs_event) == set()
    assert len(counted(relay)) == 300


def test_slow_refresher_does_not_carry_the_forwarder_past_its_deadline(relay: Relay) -> None:
    stale = relay.put_session(expires_at=hours_ago(1))
    relay.emulator.set_faults("session", latency_ms=3000)  # the refresher waits on Stripe
    bodies = [event("slow-refresh-0"), event("slow-refresh-1")]
    ids = ["slow-refresh-a", "slow-refresh-b"]
    with relay.forwarder(refresher=True, extra_env={"DEADLINE_MARGIN_MS": "1000"}) as forwarder:
        first = relay.sqs_event(bodies, ids)
        invocation = forwarder.invoke(first, timeout=3.0)
        assert invocation.error is None, invocation.error  # never Sandbox.Timedout
        assert failures(invocation, first) == set(ids)

        # the refresher finishes in the background; its session serves the next invocation
        for _ in range(100):
            renewed = relay.stored_session()
            if renewed is not None and renewed["session_id"] != stale["session_id"]:
                break
            time.sleep(0.1)
        again = relay.sqs_event(bodies, ids, receive_count=2)
        assert failures(forwarder.invoke(again), again) == set()
    assert counted(relay) == {"slow-refresh-0": 1, "slow-refresh-1": 1}


def test_stale_parameter_without_refresher_returns_every_message(relay: Relay) -> None:
    relay.put_session(expires_at=hours_ago(1))
    sqs_event = relay.sqs_event(
        [event("stale-0"), {"events": [event("stale-1"), event("stale-2")]}, event(None)]
    )
    with relay.forwarder(refresher=False) as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == {r["messageId"] for r in sqs_event["Records"]}
    assert stream_statuses(relay) == []
    assert relay.dlq_messages() == []


# ----- transient failures -----------------------------------------------------------------------


def test_429_storm_is_waited_out_and_delivered(relay: Relay) -> None:
    # seed 4: the first four stream calls are answered 429, then the storm passes
    relay.emulator.set_faults(
        "stream", seed=4, burst_429_rate=0.5, burst_429_length=2, retry_after_s=0
    )
    sqs_event = relay.sqs_event([event("storm-0"), {"events": [event("storm-1")]}])
    relay.put_session()
    with relay.forwarder(extra_env={"MAX_ATTEMPTS": "8"}) as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    statuses = stream_statuses(relay)
    assert statuses[0] == 429
    assert statuses[-1] == 200
    assert counted(relay) == {"storm-0": 1, "storm-1": 1}


def test_429_storm_outlasting_the_invocation_returns_the_messages_before_the_deadline(
    relay: Relay,
) -> None:
    """429s are retried for as long as the deadline allows (not a fixed number of times), and
    the messages go back to the queue in time: nothing dead-lettered, nothing counted."""
    relay.emulator.set_faults(
        "stream", burst_429_rate=1.0, burst_429_length=10_000, retry_after_s=0
    )
    sqs_event = relay.sqs_event([event("long-storm-0"), event("long-storm-1")])
    relay.put_session()
    with relay.forwarder(extra_env={"MAX_ATTEMPTS": "3", "DEADLINE_MARGIN_MS": "1000"}) as f:
        started = time.monotonic()
        invocation = f.invoke(sqs_event, timeout=4.0)
        took = time.monotonic() - started

    assert invocation.error is None, invocation.error  # never Sandbox.Timedout
    assert took < 4.0
    assert failures(invocation, sqs_event) == {r["messageId"] for r in sqs_event["Records"]}
    statuses = stream_statuses(relay)
    assert len(statuses) > 3  # more than MAX_ATTEMPTS: 429s do not use the attempts
    assert set(statuses) == {429}
    assert counted(relay) == {}
    assert relay.dlq_messages() == []


def test_5xx_and_dropped_connections_are_retried_and_delivered(relay: Relay) -> None:
    # seed 6: drop, drop, 5xx, drop, 5xx, then an answer
    relay.emulator.set_faults("stream", seed=6, error_rate=0.35, drop_rate=0.35)
    sqs_event = relay.sqs_event([event("flaky-0"), {"events": [event("flaky-1"), event(None)]}])
    relay.put_session()
    with relay.forwarder(extra_env={"MAX_ATTEMPTS": "8"}) as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    faults = [entry["fault"] for entry in relay.emulator.requests(endpoint="stream")]
    assert "error" in faults
    assert "drop" in faults
    assert faults[-1] is None
    second = sqs_event["Records"][1]["messageId"]
    assert counted(relay) == {"flaky-0": 1, "flaky-1": 1, f"{second}-1": 1}


def test_ambiguous_500_after_processing_counts_nothing_twice(relay: Relay) -> None:
    # received and processed, then answered 500
    relay.emulator.set_faults("stream", error_after_rate=1.0, error_statuses=[500])
    bodies = [event("ambiguous-0"), {"events": [event(None), event("ambiguous-2")]}]
    ids = ["ambiguous-a", "ambiguous-b"]
    relay.put_session()
    with relay.forwarder(extra_env={"MAX_ATTEMPTS": "3"}) as forwarder:
        first = relay.sqs_event(bodies, ids)
        assert failures(forwarder.invoke(first), first) == set(ids)  # retried, then returned
        assert stream_statuses(relay) == [500, 500, 500]

        relay.emulator.configure(clear_faults=True)
        again = relay.sqs_event(bodies, ids, receive_count=2)
        assert failures(forwarder.invoke(again), again) == set()

    expected = {"ambiguous-0", "ambiguous-b-0", "ambiguous-2"}
    identifiers = relay.emulator.identifiers()
    assert {k: v["received"] for k, v in identifiers.items()} == dict.fromkeys(expected, 4)
    assert counted(relay) == dict.fromkeys(expected, 1)
    assert relay.emulator.counted_more_than_once() == []


def test_all_failed_batch_lists_every_message(relay: Relay) -> None:
    relay.emulator.set_faults("stream", error_rate=1.0)
    sqs_event = relay.sqs_event(
        [event("down-0"), {"events": [event("down-1"), event("down-2")]}, event(None)]
    )
    relay.put_session()
    with relay.forwarder(extra_env={"MAX_ATTEMPTS": "2"}) as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == {r["messageId"] for r in sqs_event["Records"]}
    assert counted(relay) == {}
    assert relay.dlq_messages() == []


# ----- rejected calls, the deadline, the DLQ ----------------------------------------------------


def test_rejected_call_is_split_down_to_the_bad_events(relay: Relay) -> None:
    # An event the forwarder accepts but the stream refuses (400) for the whole call: with no
    # identifier, it gets one derived from its message id, which here (unlike SQS's UUIDs) is
    # long enough to make it 101 characters, over Stripe's 100.
    long_a, long_b = "a" * 99, "b" * 99
    message_ids = ["split-0", "split-1", long_a, "split-2", "split-3", "split-4", long_b, "split-5"]
    bodies = [event(None if m in (long_a, long_b) else m) for m in message_ids]
    sqs_event = relay.sqs_event(bodies, message_ids)
    relay.put_session()
    with relay.forwarder() as forwarder:
        invocation = forwarder.invoke(sqs_event)

    assert failures(invocation, sqs_event) == set()
    assert counted(relay) == {f"split-{n}": 1 for n in range(6)}
    statuses = stream_statuses(relay)
    assert statuses[0] == 400
    assert 200 in statuses
    letters = dead_letters(relay)
    assert set(letters) == {(long_a, f"{long_a}-0"), (long_b, f"{long_b}-0")}
    for letter in letters.values():
        attributes = letter["attributes"]
        assert attributes["ErrorCode"] == "parameter_invalid"  # the emulator's code
        assert attributes["ErrorParam"].endswith(".identifier")
        assert "100 characters" in attributes["ErrorMessage"]
        assert attributes["EventIndex"] == "0"


def test_deadline_cut_off_returns_undelivered_messages_before_the_timeout(relay: Relay) -> None:
    relay.emulator.set_faults("stream", latency_ms=3000)
    bodies = [event("late-0"), {"events": [event("late-1"), event("late-2")]}]
    ids = ["late-a", "late-b"]
    relay.put_session()
    with relay.forwarder(extra_env={"DEADLINE_MARGIN_MS": "1000"}) as forwarder:
        first = relay.sqs_event(bodies, ids)
        invocation = forwarder.invoke(first, timeout=3.0)
        assert invocation.error is None, invocation.error  # never Sandbox.Timedout
        assert failures(invocation, first) == set(ids)

        # the slow call still reaches Stripe after the client gave up: wait for it to land
        for _ in range(100):
            if relay.emulator.requests(endpoint="stream"):
                break
            time.sleep(0.1)
        relay.emulator.configure(clear_faults=True)
        again = relay.sqs_event(bodies, ids, receive_count=2)
        assert failures(forwarder.invoke(again), again) == set()

    assert counted(relay) == {"late-0": 1, "late-1": 1, "late-2": 1}
    assert relay.emulator.counted_more_than_once() == []


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers (an SQS that hangs)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.listen(64)
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            server.settimeout(0.2)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError, OSError):
                    held.append(server.accept()[0])

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            yield f"http://127.0.0.1:{server.getsockname()[1]}"
        finally:
            stop.set()
            acceptor.join()
            for connection in held:
                connection.close()


@pytest.mark.parametrize(
    ("service", "retried", "delivered"),
    [
        # the letters are not confirmed in time: their messages go back to the queue
        ("SQS", {"hang-b", "hang-c"}, {"hang-ok": 1, "hang-env-ok": 1}),
        # no token can be read: every message with a valid event waits (hang-b holds only a
        # bad one, dead-lettered)
        ("SSM", {"hang-a", "hang-c"}, {}),
    ],
)
def test_a_hanging_aws_service_never_carries_the_forwarder_past_its_deadline(
    relay: Relay, service: str, retried: set[str], delivered: dict[str, int]
) -> None:
    bodies = [
        event("hang-ok"),
        event("hang-bad", value="-5"),
        {"events": [event("hang-env-ok"), event("hang-env-bad", value="zero")]},
    ]
    ids = ["hang-a", "hang-b", "hang-c"]
    relay.put_session()
    with silent_endpoint() as silent:
        hanging = {"DEADLINE_MARGIN_MS": "1000", f"AWS_ENDPOINT_URL_{service}": silent}
        with relay.forwarder(extra_env=hanging) as forwarder:
            first = relay.sqs_event(bodies, ids)
            invocation = forwarder.invoke(first, timeout=4.0)
            assert invocation.error is None, invocation.error  # never Sandbox.Timedout
            assert failures(invocation, first) == retried
    assert counted(relay) == delivered


def test_dead_letter_send_failure_returns_those_messages(relay: Relay) -> None:
    bodies = [
        event("dlq-ok"),
        event("dlq-bad", value="-5"),
        {"events": [event("dlq-env-ok"), event("dlq-env-bad", value="zero")]},
    ]
    ids = ["dlq-a", "dlq-b", "dlq-c"]
    missing = {"DEAD_LETTER_QUEUE_URL": queue_url(relay.aws.endpoint_url, "no-such-queue")}
    relay.put_session()
    with relay.forwarder(env=missing) as broken:
        first = relay.sqs_event(bodies, ids)
        assert failures(broken.invoke(first), first) == {"dlq-b", "dlq-c"}
    assert relay.dlq_messages() == []
    assert counted(relay) == {"dlq-ok": 1, "dlq-env-ok": 1}

    # redelivered to a forwarder whose DLQ exists: the letters go, nothing is counted twice
    assert queue_url(relay.aws.endpoint_url, DEAD_LETTER_QUEUE) == relay.dlq_url
    with relay.forwarder() as forwarder:
        again = relay.sqs_event(bodies[1:], ids[1:], receive_count=2)
        assert failures(forwarder.invoke(again), again) == set()
    assert codes(dead_letters(relay)) == {
        ("dlq-b", "dlq-bad"): "payload_invalid_value",
        ("dlq-c", "dlq-env-bad"): "payload_invalid_value",
    }
    assert counted(relay) == {"dlq-ok": 1, "dlq-env-ok": 1}
    assert relay.emulator.counted_more_than_once() == []


def test_a_full_batch_reports_every_metric_in_one_document(
    relay: Relay, capfd: pytest.CaptureFixture[str]
) -> None:
    """100 stream calls: as many latency samples as Powertools holds before flushing by
    itself; the invocation's counts must still be published (and no empty flush)."""
    relay.put_session()
    sqs_event = relay.sqs_event(
        [{"events": [event(f"metrics-{m}-{n}") for n in range(100)]} for m in range(100)]
    )
    with relay.forwarder() as forwarder, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        capfd.readouterr()
        invocation = forwarder.invoke(sqs_event)
    assert failures(invocation, sqs_event) == set()
    assert not [w for w in caught if "No application metrics" in str(w.message)]
    out = capfd.readouterr().out
    documents = [line for line in out.splitlines() if line.startswith('{"_aws"')]
    assert len(documents) == 1  # not flushed early, nothing left for an empty flush
    metrics = emf_sums(out)
    assert metrics["EventsDelivered"] == 10_000
    assert metrics["StreamCalls"] == 100
    document = json.loads(documents[0])
    latencies = document["StreamCallLatency"]
    assert len(latencies) == 99
    assert all(type(ms) is float and ms > 0 for ms in latencies)
    assert {"Name": "StreamCallLatency", "Unit": "Milliseconds"} in (
        document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    )


def test_the_cyclic_collector_never_runs_while_a_batchs_objects_live(relay: Relay) -> None:
    """A batch allocates tens of thousands of objects that reference counting frees; the cyclic
    collector is paused for it. Run while they live (it did, once it was turned back on before
    the batch's objects were freed), it traverses every one and promotes them to the older
    generations, whose full passes then cost every later invocation: 5-8% of the forwarder's
    CPU per event, in paired rounds."""
    relay.put_session()
    sqs_event = relay.sqs_event([event(f"gc-{n}") for n in range(3000)])
    events_alive: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            events_alive.append(
                sum(
                    type(o).__name__ == "MeterEvent" and o.identifier.startswith("gc-")
                    for o in gc.get_objects()
                )
            )

    with relay.forwarder() as forwarder:
        gc.callbacks.append(watch)
        try:
            invocation = forwarder.invoke(sqs_event)
        finally:
            gc.callbacks.remove(watch)
    assert failures(invocation, sqs_event) == set()
    assert len(counted(relay)) == 3000
    assert events_alive, "no collection ran at all: the batch is too small to tell"
    assert max(events_alive) == 0, events_alive
