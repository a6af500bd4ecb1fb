"""DlqReplayFunction and DlqCancelFunction through the harness (as `sam local invoke` runs
them), with the samples in events/dlq-*.json, against moto and the emulator; their deadline
bound; and their least-privilege IAM in template.yaml.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.endpoint import DEFAULT_TIMEOUT

from devkit.harness import LambdaFunction, load_function, load_template
from tests.plugins.relay import ROOT, SECRET_KEY, TEMPLATE, Relay

pytestmark = pytest.mark.integration

REPLAY = "DlqReplayFunction"
CANCEL = "DlqCancelFunction"
DLQ_SAMPLES = {path.name for path in (ROOT / "events").glob("dlq-*.json")}
MIXED_BATCH = ROOT / "events" / "forwarder-mixed-batch.json"
_M = "5f0c6a1e-0001-4c1b-9a51-00000000000"  # forwarder-mixed-batch.json's message ids


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())
    return data


@pytest.fixture
def tools(relay: Relay) -> Iterator[dict[str, LambdaFunction]]:
    """Both functions, configured as env.json configures them for the local stack."""
    env_vars = relay.env_vars()
    common = {
        "STRIPE_API_BASE": relay.emulator_url,
        "STRIPE_SECRET_ID": relay.secret_id,
        "DEAD_LETTER_QUEUE_URL": relay.dlq_url,
    }
    env_vars[REPLAY] = {**common, "USAGE_QUEUE_URL": relay.queue_url}
    env_vars[CANCEL] = common
    functions = {
        name: load_function(TEMPLATE, name, env_vars=env_vars, extra_env=relay.aws.env)
        for name in (REPLAY, CANCEL)
    }
    yield functions
    for function in functions.values():
        function.close()


def invoke(function: LambdaFunction, event: Any, timeout: float | None = None) -> dict[str, Any]:
    invocation = function.invoke(event, timeout=timeout)
    assert invocation.error is None, invocation.error
    result: dict[str, Any] = invocation.result
    assert SECRET_KEY not in json.dumps(result)
    return result


def forward_mixed_batch(relay: Relay) -> None:
    """The forwarder on forwarder-mixed-batch.json: five events delivered, four dead letters."""
    data: dict[str, Any] = json.loads(MIXED_BATCH.read_text())
    now = str(int(time.time() * 1000))
    for record in data["Records"]:
        record["attributes"]["SentTimestamp"] = now
        record["attributes"]["ApproximateFirstReceiveTimestamp"] = now
    relay.put_session()
    with relay.forwarder() as forwarder:
        assert forwarder.invoke(data).result == {"batchItemFailures": []}


def put_redriven(relay: Relay, body: dict[str, Any]) -> str:
    """A producer's body on the DLQ as SQS's redrive leaves it (no message attributes)."""
    sqs = relay.aws.client("sqs")
    return sqs.send_message(QueueUrl=relay.dlq_url, MessageBody=json.dumps(body))["MessageId"]


def api_event(identifier: str | None, name: str = "api_requests", customer: str = "cus_a") -> Any:
    body: dict[str, Any] = {
        "event_name": name,
        "payload": {"stripe_customer_id": customer, "value": "1"},
    }
    if identifier is not None:
        body["identifier"] = identifier
    return body


def delivered_and_redriven(relay: Relay, identifiers: list[str]) -> None:
    """Events the forwarder delivered whose messages are in the DLQ all the same (redriven)."""
    relay.put_session()
    with relay.forwarder() as forwarder:
        delivered = forwarder.invoke(relay.sqs_event([api_event(i) for i in identifiers]))
    assert delivered.result == {"batchItemFailures": []}
    for identifier in identifiers:
        put_redriven(relay, api_event(identifier))


def dlq_codes(relay: Relay) -> dict[str, str]:
    """SourceMessageId (or messageId) -> ErrorCode of every DLQ message; they stay visible."""
    sqs = relay.aws.client("sqs")
    received = sqs.receive_message(
        QueueUrl=relay.dlq_url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=0,
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    codes = {}
    for message in received:
        attributes = {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}
        source = attributes.get("SourceMessageId", message["MessageId"])
        codes[source] = attributes.get("ErrorCode", "max_receive_count_exceeded")
    return codes


def usage_bodies(relay: Relay) -> list[dict[str, Any]]:
    sqs = relay.aws.client("sqs")
    found: dict[str, Any] = {}
    while True:
        got = sqs.receive_message(QueueUrl=relay.queue_url, MaxNumberOfMessages=10).get(
            "Messages", []
        )
        if not got:
            return [json.loads(body) for body in found.values()]
        found.update({m["MessageId"]: m["Body"] for m in got})


MIXED_LETTERS = {
    f"{_M}4": "message_not_json",
    f"{_M}5": "payload_no_customer_defined",
    f"{_M}6": "payload_invalid_value",
    f"{_M}7": "timestamp_too_far_in_past",
}


# ----- the samples ------------------------------------------------------------------------------


def test_every_dlq_sample_is_run_by_a_test() -> None:
    """Each of these is invoked below; a new sample must be added here, and to a test."""
    run_below = [
        "dlq-cancel-filters.json",
        "dlq-cancel-identifiers.json",
        "dlq-replay-dry-run.json",
        "dlq-replay-queue.json",
        "dlq-replay-sync.json",
    ]
    assert sorted(DLQ_SAMPLES) == run_below
    source = Path(__file__).read_text()
    assert all(source.count(f'sample("{name}")') == 1 for name in run_below)


def test_replay_samples_dry_run_then_fix_to_the_queue(
    relay: Relay, tools: dict[str, LambdaFunction], capfd: pytest.CaptureFixture[str]
) -> None:
    forward_mixed_batch(relay)
    typo = put_redriven(relay, api_event(None, name="api_request"))  # no identifier: derived
    assert dlq_codes(relay) == {**MIXED_LETTERS, typo: "max_receive_count_exceeded"}

    dry = invoke(tools[REPLAY], sample("dlq-replay-dry-run.json"))
    assert dry["complete"] is True
    assert "next" not in dry
    assert sorted((o["action"], o["code"], o["identifiers"]) for o in dry["outcomes"]) == [
        ("kept", "payload_no_customer_defined", []),  # cannot be sent as it is: reported
        ("would_replay", None, [f"{typo}-0"]),
    ]
    assert dlq_codes(relay) == {**MIXED_LETTERS, typo: "max_receive_count_exceeded"}
    assert usage_bodies(relay) == []

    fixed = invoke(tools[REPLAY], sample("dlq-replay-queue.json"))
    assert fixed["complete"] is True
    assert fixed["counts"] == {"replayed": 1}
    assert fixed["outcomes"][0]["identifiers"] == [f"{typo}-0"]
    (body,) = usage_bodies(relay)
    assert body["event_name"] == "api_requests"  # renamed by the sample's fix
    assert body["identifier"] == f"{typo}-0"  # derived from the messageId SQS kept
    assert dlq_codes(relay) == MIXED_LETTERS
    assert SECRET_KEY not in capfd.readouterr().out


def test_replay_sample_through_the_sync_endpoint(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    good = put_redriven(relay, {"events": [api_event(None), api_event("sync-given")]})
    bad = put_redriven(relay, api_event("sync-no-meter", name="no_such_meter"))

    result = invoke(tools[REPLAY], sample("dlq-replay-sync.json"))
    assert result["complete"] is True
    assert result["counts"] == {"replayed": 1, "kept": 1}
    identifiers = relay.emulator.identifiers()
    assert identifiers == {
        f"{good}-0": {"received": 1, "counted": 1},
        "sync-given": {"received": 1, "counted": 1},
    }
    assert {e["source"] for e in relay.emulator.events()} == {"sync"}
    assert dlq_codes(relay) == {bad: "no_meter"}  # kept, with Stripe's new reason


def test_cancel_samples(relay: Relay, tools: dict[str, LambdaFunction]) -> None:
    forward_mixed_batch(relay)  # delivers order-1001-search and batch-7-0 (api_requests)
    # and a message of cus_alpha's that SQS moved after maxReceiveCount: Stripe may have it
    put_redriven(relay, api_event("moved-1", customer="cus_alpha"))

    dry = invoke(tools[CANCEL], sample("dlq-cancel-filters.json"))
    assert dry["complete"] is True
    # of the DLQ letters of cus_alpha (first seen now, after the sample's "since"), the moved
    # one: the forwarder's two refused neg-1 and old-1 before sending, so Stripe never had them
    assert [(a["identifier"], a["status"]) for a in dry["audit"]] == [("moved-1", "would_cancel")]
    assert dry["never_sent"] == {"payload_invalid_value": 1, "timestamp_too_far_in_past": 1}
    assert relay.emulator.requests(endpoint="adjustments") == []

    done = invoke(tools[CANCEL], sample("dlq-cancel-identifiers.json"))
    assert done["complete"] is True
    assert [(a["identifier"], a["event_name"], a["status"]) for a in done["audit"]] == [
        ("order-1001-search", "api_requests", "pending"),
        ("batch-7-0", "api_requests", "pending"),
    ]
    assert all(a["adjustment_id"].startswith("mtradj") and a["at"] for a in done["audit"])
    assert {a["status"] for a in relay.emulator.adjustments()} == {"complete"}
    statuses = {e["identifier"]: e["status"] for e in relay.emulator.events()}
    assert statuses["order-1001-search"] == statuses["batch-7-0"] == "cancelled"
    assert statuses["batch-7-1"] == "counted"
    letters = dlq_codes(relay)
    assert {k: v for k, v in letters.items() if k in MIXED_LETTERS} == MIXED_LETTERS
    assert len(letters) == len(MIXED_LETTERS) + 1  # the DLQ is read, never consumed


def test_bad_input_is_refused_before_anything_happens(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    put_redriven(relay, api_event("untouched"))
    unknown = tools[REPLAY].invoke({"filter": {"code": ["x"]}})
    assert unknown.error is not None
    assert unknown.error["errorType"] == "ValueError"
    assert "unknown options ['filter']" in unknown.error["errorMessage"]
    bad_rate = tools[REPLAY].invoke({"rate": "fast"})
    assert bad_rate.error is not None
    assert "rate is a positive number" in bad_rate.error["errorMessage"]
    bad_retried = tools[REPLAY].invoke({"retried_messages": "m-1"})
    assert bad_retried.error is not None
    assert "retried_messages is a list" in bad_retried.error["errorMessage"]
    bad_max = tools[REPLAY].invoke({"filters": {"max": 0}})
    assert bad_max.error is not None
    assert "max is a whole number above 0, not 0" in bad_max.error["errorMessage"]
    bad_skip = tools[CANCEL].invoke({"filters": {}, "skip": "k-1"})
    assert bad_skip.error is not None
    assert "skip is a list of identifiers" in bad_skip.error["errorMessage"]
    bad_date = tools[CANCEL].invoke({"filters": {"since": "last week"}})
    assert bad_date.error is not None
    assert "since must be an RFC 3339 date-time" in bad_date.error["errorMessage"]
    assert list(dlq_codes(relay).values()) == ["max_receive_count_exceeded"]


def test_a_cancel_that_chooses_nothing_is_refused_and_cancels_nothing(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    """Stripe cannot undo a cancel, and the function asks no one: an input that names no
    event (empty, a stray event_name, an unset variable's empty customer, identifiers beside
    filters) is refused; every delivered event of the DLQ only with "all": true."""
    identifiers = ["c-0", "c-1"]
    delivered_and_redriven(relay, identifiers)

    refused = {
        "{}": ({}, "a cancel chooses nothing by default"),
        "event_name": ({"event_name": "api_requests"}, "a cancel chooses nothing by default"),
        "empty filters": ({"filters": {}}, "a cancel chooses nothing by default"),
        "empty customer": ({"filters": {"customer": ""}}, "customer is a text or a list"),
        "both": (
            {"identifiers": ["c-0"], "event_name": "api_requests", "filters": {"customer": "x"}},
            "identifiers and filters are two ways to choose: give one",
        ),
        "all not true": ({"all": "yes"}, "all is true or false"),
    }
    for name, (event, said) in refused.items():
        answer = tools[CANCEL].invoke(event)
        assert answer.error is not None, name
        assert said in answer.error["errorMessage"], name
    assert relay.emulator.requests(endpoint="adjustments") == []

    listed = invoke(tools[CANCEL], {"all": True, "dry_run": True})
    assert sorted(a["identifier"] for a in listed["audit"]) == identifiers
    assert {a["status"] for a in listed["audit"]} == {"would_cancel"}


def test_a_dry_run_cancel_with_max_goes_through_with_next(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    """Each call of a dry run lists the next `max`: its `next` skips what it listed."""
    for n in range(3):
        put_redriven(relay, api_event(f"d-{n}"))
    event: dict[str, Any] = {"filters": {"max": 1}, "all": True, "dry_run": True}
    listed = []
    for _ in range(5):
        result = invoke(tools[CANCEL], event)
        listed += [a["identifier"] for a in result["audit"]]
        if result["complete"]:
            break
        event = result["next"]
    assert sorted(listed) == ["d-0", "d-1", "d-2"]  # each once, then complete
    assert result["complete"] is True
    assert relay.emulator.requests(endpoint="adjustments") == []


# ----- the Lambda deadline ----------------------------------------------------------------------


def test_replay_stops_before_the_deadline_and_a_second_call_continues(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    ids = [put_redriven(relay, api_event(None, customer=f"cus_{n}")) for n in range(12)]
    event = {"filters": {"code": ["max_receive_count_exceeded"]}, "via": "queue", "rate": 2}
    # 14 s: 9 s before the 5 s margin, and a message needs 6 s in hand (the DLQ writes and
    # one attempt), so each call has about three seconds, six messages at 2 a second
    calls = []
    given = event
    for _ in range(8):
        result = invoke(tools[REPLAY], given, timeout=14)  # an error if it ran past 14 s
        calls.append(result)
        if result["complete"]:
            break
        given = result["next"]
    first = calls[0]
    assert first["complete"] is False
    assert first["next"] == {**event, "skip_messages": []}  # nothing it handled stayed
    assert 1 <= first["counts"]["replayed"] < 12
    assert calls[-1]["complete"] is True
    assert sum(r["counts"].get("replayed", 0) for r in calls) == 12
    assert all(set(r["counts"]) <= {"replayed"} for r in calls)

    bodies = usage_bodies(relay)
    assert sorted(b["identifier"] for b in bodies) == sorted(f"{i}-0" for i in ids)  # once each
    assert dlq_codes(relay) == {}


def test_sync_replay_stops_inside_a_message_and_the_next_call_sends_the_rest(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    relay.emulator.set_faults("meter_events", latency_ms=1000)  # each event takes a second
    envelope = put_redriven(
        relay, {"events": [api_event(None, customer=f"cus_{n}") for n in range(6)]}
    )
    event = {"filters": {"code": ["max_receive_count_exceeded"]}, "via": "sync"}
    # 14 s: 9 s before the margin, 5 s of them kept for the DLQ writes: at most four events
    first = invoke(tools[REPLAY], event, timeout=14)
    assert first["complete"] is False
    assert first["next"] == {**event, "skip_messages": []}  # the rest letter is the next's
    (outcome,) = first["outcomes"]
    assert outcome["action"] == "partly_replayed"
    sent, kept = outcome["identifiers"], [e["identifier"] for e in outcome["kept_events"]]
    assert 1 <= len(sent) <= 4
    assert sent + kept == [f"{envelope}-{n}" for n in range(6)]
    counted = relay.emulator.identifiers()
    assert counted == {i: {"received": 1, "counted": 1} for i in sent}
    # what was not sent stays in the DLQ, together, with the message's own reason
    assert list(dlq_codes(relay).items()) == [(envelope, "max_receive_count_exceeded")]

    second = invoke(tools[REPLAY], first["next"], timeout=60)
    assert second["complete"] is True
    assert second["counts"] == {"replayed": 1}
    assert second["outcomes"][0]["identifiers"] == kept
    counted = relay.emulator.identifiers()
    assert counted == {f"{envelope}-{n}": {"received": 1, "counted": 1} for n in range(6)}
    assert dlq_codes(relay) == {}


def test_cancel_reports_what_is_left_when_out_of_time(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    event = {"identifiers": ["a-1", "a-2"], "event_name": "api_requests"}
    result = invoke(tools[CANCEL], event, timeout=24)  # under the 25 s one cancel needs
    assert result["complete"] is False
    assert result["audit"] == []
    assert result["remaining"] == [
        {"identifier": "a-1", "event_name": "api_requests"},
        {"identifier": "a-2", "event_name": "api_requests"},
    ]
    assert result["next"] == event  # the input that continues: nothing was done
    assert relay.emulator.requests(endpoint="adjustments") == []


def test_cancel_by_filters_stops_at_max_and_its_next_input_continues_without_cancelling_twice(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    identifiers = [f"k-{n}" for n in range(7)]
    delivered_and_redriven(relay, identifiers)

    event: dict[str, Any] = {"filters": {"code": ["max_receive_count_exceeded"], "max": 3}}
    calls = []
    for _ in range(5):
        result = invoke(tools[CANCEL], event)
        calls.append(result)
        if result["complete"]:
            break
        event = result["next"]
    assert [len(r["audit"]) for r in calls] == [3, 3, 1]
    assert [r["complete"] for r in calls] == [False, False, True]
    assert calls[0]["next"]["filters"] == {"code": ["max_receive_count_exceeded"], "max": 3}
    assert len(calls[1]["next"]["skip"]) == 6
    audited = sorted(a["identifier"] for r in calls for a in r["audit"])
    assert audited == identifiers  # each once
    assert {a["status"] for r in calls for a in r["audit"]} == {"pending"}
    assert len(relay.emulator.requests(endpoint="adjustments")) == 7  # none twice
    assert {e["identifier"]: e["status"] for e in relay.emulator.events()} == dict.fromkeys(
        identifiers, "cancelled"
    )
    assert len(dlq_codes(relay)) == 7  # read, never consumed


# ----- sam remote invoke: an answer before botocore's read timeout, and `next` ----------------


def test_a_replay_too_long_for_one_call_answers_in_time_and_its_next_finishes(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    """With the template's own Timeout: `sam remote invoke` reads for botocore's
    DEFAULT_TIMEOUT and retries a read that timed out (a second run beside the first). A
    replay of 120 messages at 2 a second cannot finish in one call: it answers before that
    timeout, complete false, with `next`; invoking `next` finishes; every event is sent once."""
    function = tools[REPLAY]
    template_timeout = load_template(TEMPLATE)["Resources"][REPLAY]["Properties"]["Timeout"]
    assert function.spec.timeout == template_timeout < DEFAULT_TIMEOUT
    ids = [put_redriven(relay, api_event(None, customer=f"cus_{n}")) for n in range(120)]
    event = {"via": "queue", "rate": 2}

    first = function.invoke(event)  # the template's Timeout: an error had it run past it
    assert first.error is None, first.error
    assert first.duration_ms < DEFAULT_TIMEOUT * 1000
    assert first.result["complete"] is False
    assert first.result["stopped"] == "time"
    assert first.result["next"] == {**event, "skip_messages": []}
    done = first.result["counts"]["replayed"]
    assert 40 <= done < 120

    second = invoke(function, first.result["next"])
    assert second["complete"] is True
    assert second["counts"] == {"replayed": 120 - done}

    bodies = usage_bodies(relay)
    assert sorted(b["identifier"] for b in bodies) == sorted(f"{i}-0" for i in ids)  # once each
    relay.put_session()
    with relay.forwarder() as forwarder:
        forwarded = forwarder.invoke(relay.sqs_event(bodies))
    assert forwarded.result == {"batchItemFailures": []}
    assert relay.emulator.identifiers() == {
        f"{i}-0": {"received": 1, "counted": 1} for i in ids
    }  # no event sent, nor counted, twice
    assert dlq_codes(relay) == {}


def test_a_sync_replay_in_parallel_continues_with_next_and_sends_nothing_twice(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    relay.emulator.set_faults("meter_events", latency_ms=500)
    envelopes = [
        put_redriven(
            relay, {"events": [api_event(None, customer=f"cus_{n}_{k}") for k in range(3)]}
        )
        for n in range(12)
    ]
    event: dict[str, Any] = {"via": "sync"}
    calls = []
    for _ in range(6):
        result = invoke(tools[REPLAY], event, timeout=16)  # 5 s in hand after the margins
        calls.append(result)
        if result["complete"]:
            break
        event = result["next"]
    assert len(calls) > 1
    assert calls[0]["complete"] is False
    assert calls[-1]["complete"] is True
    expected = {f"{m}-{k}" for m in envelopes for k in range(3)}
    counted = relay.emulator.identifiers()
    assert set(counted) == expected
    assert {c["received"] for c in counted.values()} == {1}  # none sent twice
    assert dlq_codes(relay) == {}


def test_a_dry_run_too_long_for_one_call_goes_on_with_next(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    """A dry run leaves every message where it was: `next` skips the ones it looked at."""
    ids = [put_redriven(relay, api_event(None, customer=f"cus_{n}")) for n in range(9)]
    event: dict[str, Any] = {"dry_run": True, "rate": 1}
    seen: list[str] = []
    for _ in range(10):
        # a message or two a call: none begun whose rate-limit wait would eat the reserve
        result = invoke(tools[REPLAY], event, timeout=13)
        seen += [o["message_id"] for o in result["outcomes"]]
        if result["complete"]:
            break
        event = result["next"]
    assert sorted(seen) == sorted(ids)  # each once
    assert sorted(event.get("skip_messages", [])) == sorted(
        seen[: len(event.get("skip_messages", []))]
    )
    assert len(dlq_codes(relay)) == 9


def test_a_cancel_out_of_time_continues_with_next_and_cancels_nothing_twice(
    relay: Relay, tools: dict[str, LambdaFunction]
) -> None:
    identifiers = [f"t-{n}" for n in range(5)]
    delivered_and_redriven(relay, identifiers)
    relay.emulator.set_faults("adjustments", latency_ms=1500)

    event: dict[str, Any] = {"filters": {"code": ["max_receive_count_exceeded"]}}
    calls = []
    for _ in range(6):
        # 30 s: 25 after the margin, and no cancel starts with less than 20 left
        result = invoke(tools[CANCEL], event, timeout=30)
        calls.append(result)
        if result["complete"]:
            break
        event = result["next"]
    assert len(calls) > 1
    assert calls[0]["next"]["filters"] == {"code": ["max_receive_count_exceeded"]}
    audited = sorted(a["identifier"] for r in calls for a in r["audit"])
    assert audited == identifiers  # each once
    assert len(relay.emulator.requests(endpoint="adjustments")) == 5  # none twice
    assert {e["status"] for e in relay.emulator.events()} == {"cancelled"}


# ----- least privilege --------------------------------------------------------------------------


def statements(logical_id: str) -> list[dict[str, Any]]:
    function = load_template(TEMPLATE)["Resources"][logical_id]
    policies = function["Properties"]["Policies"]
    assert all(isinstance(p, dict) and "Statement" in p for p in policies)  # documents only
    return [s for policy in policies for s in policy["Statement"]]


def grants(logical_id: str) -> dict[str, list[Any]]:
    """action -> the resources it is allowed on."""
    found: dict[str, list[Any]] = {}
    for statement in statements(logical_id):
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        resources = statement["Resource"]
        for action in [actions] if isinstance(actions, str) else actions:
            found.setdefault(action, []).extend(
                resources if isinstance(resources, list) else [resources]
            )
    return found


DLQ_ARN = {"Fn::GetAtt": ["UsageDeadLetterQueue", "Arn"]}
USAGE_ARN = {"Fn::GetAtt": ["UsageQueue", "Arn"]}
SECRET = {"Ref": "StripeSecretKey"}
CATALOG = {  # the meter catalog's parts: each meter's payload keys, to judge letters by
    "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
    "/${AWS::StackName}/stripe/meter-catalog"
}


def test_dlq_cancel_can_read_the_dlq_and_the_key_and_nothing_else() -> None:
    assert grants(CANCEL) == {
        "sqs:ReceiveMessage": [DLQ_ARN],
        "sqs:ChangeMessageVisibility": [DLQ_ARN],
        "sqs:GetQueueAttributes": [DLQ_ARN],
        "secretsmanager:GetSecretValue": [SECRET],
        "ssm:GetParametersByPath": [CATALOG],
    }  # no sqs:DeleteMessage, no sqs:SendMessage


def test_dlq_replay_sends_only_to_the_usage_queue_and_the_dlq() -> None:
    granted = grants(REPLAY)
    assert sorted(granted["sqs:SendMessage"], key=json.dumps) == sorted(
        [DLQ_ARN, USAGE_ARN], key=json.dumps
    )
    assert granted == {
        "sqs:ReceiveMessage": [DLQ_ARN],
        "sqs:DeleteMessage": [DLQ_ARN],
        "sqs:ChangeMessageVisibility": [DLQ_ARN],
        "sqs:GetQueueAttributes": [DLQ_ARN],
        "sqs:SendMessage": granted["sqs:SendMessage"],
        "secretsmanager:GetSecretValue": [SECRET],
        "ssm:GetParametersByPath": [CATALOG],
    }


@pytest.mark.parametrize("logical_id", [REPLAY, CANCEL])
def test_no_dlq_tool_reads_the_session_parameter_or_holds_a_wildcard(logical_id: str) -> None:
    text = json.dumps(statements(logical_id))
    assert [action for action in grants(logical_id) if action.startswith("ssm:")] == [
        "ssm:GetParametersByPath"  # the meter catalog only: never the session's parameter
    ]
    assert "meter-event-session" not in text
    assert "SessionTokenParameterName" not in text
    assert "*" not in text
    properties = load_template(TEMPLATE)["Resources"][logical_id]["Properties"]
    assert "Events" not in properties  # operators invoke them; nothing triggers them
    variables = properties["Environment"]["Variables"]
    assert "SESSION_TOKEN_PARAMETER" not in variables
    assert ("USAGE_QUEUE_URL" in variables) == (logical_id == REPLAY)


def test_env_json_configures_both_tools() -> None:
    env = json.loads(Path(ROOT / "events" / "env.json").read_text())
    assert set(env[REPLAY]) >= {"DEAD_LETTER_QUEUE_URL", "USAGE_QUEUE_URL", "STRIPE_SECRET_ID"}
    assert set(env[CANCEL]) >= {"DEAD_LETTER_QUEUE_URL", "STRIPE_SECRET_ID"}
    assert "USAGE_QUEUE_URL" not in env[CANCEL]
