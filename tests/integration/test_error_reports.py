"""Stripe's error reports back into the dead-letter queue, end to end: the emulator rejects
events after answering 200, reports them in thin events, pushes them to a webhook (signed) or
puts them on an EventBridge bus (moto); ErrorReportsFunction, run by the harness from
template.yaml, gets them as Lambda would, fetches each event from the emulator, and writes one
letter per sample error into the DLQ (moto), once per Stripe event (DynamoDB, moto).
`errors pull` reads the same events from Stripe's list."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
)

from devkit.harness import load_template
from meter_relay.dead_letter import DeadLetterQueue
from meter_relay.error_reports import (
    IDEMPOTENCY_KEY_PREFIX,
    EventUnavailable,
    FetchFailed,
    ReportProcessor,
    StripeEvents,
    TimeBudget,
    pull,
)
from meter_relay.stripe_client import StripeApi, StripeHttp
from meter_relay.webhook_signature import verify_signature
from tests.integration.error_report_helpers import (
    BUS,
    EVENTS,
    NO_METER,
    REJECTED,
    REJECTED_CODES,
    SAMPLE_WEBHOOK_SECRET,
    TABLE,
    TEMPLATE,
    TRIGGERED,
    WEBHOOK_SECRET_ID,
    Reports,
    answer,
    codes_and_identifiers,
    function_url_request,
    signed_request,
    usage,
)
from tests.integration.error_report_helpers import reports as reports  # the fixture
from tests.plugins.relay import emf_metrics, emf_sums
from tests.plugins.stripe_emulator import WEBHOOK_SECRET, Received

pytestmark = pytest.mark.integration


# ----- webhooks -----------------------------------------------------------------------------------
def test_stripes_webhook_becomes_letters_with_stripes_codes_and_identifiers(
    reports: Reports,
) -> None:
    pushed = reports.pushed(*REJECTED)
    listed = {e["id"]: e for e in reports.emulator.list_events()["data"]}
    assert len(pushed) == 2

    with reports.function() as function:
        answers = [answer(function.invoke(function_url_request(r))) for r in pushed]

    assert [status for status, _ in answers] == [200, 200]
    assert {body["status"] for _, body in answers} == {"processed"}
    letters = reports.letters()
    assert codes_and_identifiers(letters) == REJECTED_CODES
    for letter in letters:
        attributes = letter["attributes"]
        event = listed[attributes["StripeEventId"]]
        assert attributes["ReportedBy"] == "stripe, body unknown"
        assert letter["json"]["note"] == "reported by Stripe, body unknown"
        assert attributes["ValidationStart"] == event["data"]["validation_start"]
        assert attributes["ValidationEnd"] == event["data"]["validation_end"]
        assert attributes["FirstSeen"] == event["data"]["validation_start"]
        if event["type"] == TRIGGERED:
            assert attributes["MeterId"] == "mtr_test_api_requests"
            assert attributes["ErrorMessage"]  # Stripe's words
        else:
            assert "MeterId" not in attributes
            assert "nobody_meters_this" in attributes["ErrorMessage"]
    assert len(reports.remembered()) == 2


def test_the_same_stripe_event_delivered_twice_or_by_both_routes_writes_its_letters_once(
    reports: Reports, aws_bus_queue: str
) -> None:
    reports.use_eventbridge()
    pushed = reports.pushed(usage("twice", value="0"))
    (envelope,) = bus_events(reports, aws_bus_queue)

    with reports.function() as function:
        first = answer(function.invoke(function_url_request(pushed[0])))
        again = answer(function.invoke(function_url_request(pushed[0])))
        by_eventbridge = function.invoke(envelope)

    assert first[1]["status"] == "processed"
    assert first[1]["letters"] == 1
    assert again[0] == 200
    assert again[1]["status"] == "duplicate"
    assert by_eventbridge.ok
    assert by_eventbridge.result["status"] == "duplicate"
    assert envelope["detail"]["id"] == first[1]["event_id"]
    assert codes_and_identifiers(reports.letters()) == {"twice": "meter_event_invalid_value"}


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(
            lambda r: {k: v for k, v in r.headers.items() if k != "stripe-signature"}, id="unsigned"
        ),
        pytest.param("wrong secret", id="wrong-secret"),
        pytest.param("tampered", id="tampered-body"),
        pytest.param("too old", id="too-old"),
    ],
)
def test_an_unsigned_or_wrongly_signed_webhook_gets_400_and_nothing_is_written(
    reports: Reports, forge: Any
) -> None:
    (received,) = reports.pushed(usage("lost-x", name="nobody_meters_this"))
    if forge == "wrong secret":
        request = signed_request(received.body, secret="whsec_not_the_endpoints_secret")
    elif forge == "tampered":
        request = function_url_request(received)
        request["body"] = request["body"].replace("no_meter_found", "error_report_triggered")
    elif forge == "too old":
        request = signed_request(received.body, at=int(time.time()) - 301)
    else:
        request = function_url_request(Received(forge(received), received.body))
    fetched_before = len(reports.emulator.requests(endpoint="events"))

    with reports.function() as function:
        status, body = answer(function.invoke(request))

    assert status == 400
    assert "signature" in body["error"].lower() or "old" in body["error"]
    assert reports.letters() == []
    assert reports.remembered() == []
    assert len(reports.emulator.requests(endpoint="events")) == fetched_before  # not even read


def test_no_secret_or_signature_is_ever_logged(
    reports: Reports, capfd: pytest.CaptureFixture[str]
) -> None:
    (received,) = reports.pushed(usage("quiet", value="0"))
    good = function_url_request(received)
    forged = signed_request(received.body, secret="whsec_forged_by_someone")
    capfd.readouterr()
    with reports.function() as function:
        assert answer(function.invoke(good))[0] == 200
        assert answer(function.invoke(forged))[0] == 400
    out, err = capfd.readouterr()
    for text in (
        WEBHOOK_SECRET,
        reports.relay.secret_key,
        received.headers["stripe-signature"].split("v1=")[1],
        forged["headers"]["stripe-signature"].split("v1=")[1],
    ):
        assert text not in out + err


def test_a_webhook_before_its_signing_secret_is_set_is_retried_not_refused(
    reports: Reports,
) -> None:
    (received,) = reports.pushed(usage("early", value="0"))
    reports.relay.aws.client("secretsmanager").delete_secret(
        SecretId=WEBHOOK_SECRET_ID, ForceDeleteWithoutRecovery=True
    )
    with reports.function() as function:
        status, _ = answer(function.invoke(function_url_request(received)))
    assert status == 500  # Stripe retries: the operator has days to set it
    assert reports.letters() == []


def test_a_notification_of_another_type_is_acknowledged_and_ignored_with_a_log_line(
    reports: Reports, capfd: pytest.CaptureFixture[str]
) -> None:
    other = json.dumps(
        {"id": "evt_test_other", "object": "v2.core.event", "type": "v1.billing.meter.created"}
    ).encode()
    envelope = json.loads((EVENTS / "error-reports-eventbridge-triggered.json").read_text())
    envelope["detail-type"] = envelope["detail"]["type"] = "v1.billing.meter.created"

    with reports.function() as function:
        status, body = answer(function.invoke(signed_request(other)))
        by_eventbridge = function.invoke(envelope)

    assert (status, body["ignored"]) == (200, "v1.billing.meter.created")
    assert by_eventbridge.ok
    assert by_eventbridge.result["ignored"] == "v1.billing.meter.created"
    logged = [json.loads(line) for line in capfd.readouterr().out.splitlines() if '"level"' in line]
    assert sum(1 for line in logged if line["message"].startswith("ignored")) == 2
    assert reports.letters() == []
    assert reports.remembered() == []
    assert reports.emulator.requests(endpoint="events") == []


# ----- EventBridge --------------------------------------------------------------------------------
@pytest.fixture
def aws_bus_queue(reports: Reports) -> str:
    """A bus with the template's own rule pattern, and an SQS target standing for the function:
    what the rule hands its target, as EventBridge delivers it."""
    aws = reports.relay.aws
    events, sqs = aws.client("events"), aws.client("sqs")
    rule = load_template(TEMPLATE)["Resources"]["StripeErrorReportsRule"]["Properties"]
    events.create_event_bus(Name=BUS)
    queue_url = sqs.create_queue(QueueName="rule-target")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    events.put_rule(
        Name="stripe-error-reports", EventBusName=BUS, EventPattern=json.dumps(rule["EventPattern"])
    )
    events.put_targets(
        Rule="stripe-error-reports",
        EventBusName=BUS,
        Targets=[{"Id": "function", "Arn": queue_arn["Attributes"]["QueueArn"]}],
    )
    return str(queue_url)


def bus_events(reports: Reports, queue_url: str) -> list[dict[str, Any]]:
    messages = reports.relay.aws.client("sqs").receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    )
    return [json.loads(m["Body"]) for m in messages.get("Messages", [])]


def test_eventbridge_events_become_letters_and_counts_per_code_add_up(
    reports: Reports, aws_bus_queue: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Stripe sends samples only (here 3 per code): the letters are the samples, the metrics
    count every rejected event, and they add up to each report's error_count."""
    reports.use_eventbridge()
    many = [usage(f"zero-{i}", value="0") for i in range(5)] + [usage("text", value="x")]
    created = reports.reject(*many, usage("lost-2", name="nobody_meters_this"))
    reports.emulator.wait_for_deliveries()
    envelopes = bus_events(reports, aws_bus_queue)
    assert {e["detail-type"] for e in envelopes} == {TRIGGERED, NO_METER}
    capfd.readouterr()

    with reports.function() as function:
        results = [function.invoke(envelope) for envelope in envelopes]

    assert all(r.ok for r in results), [r.error for r in results]
    out = capfd.readouterr().out
    error_count = sum(e["data"]["reason"]["error_count"] for e in created)
    assert error_count == 7
    assert emf_sums(out)["StripeRejectedEvents"] == error_count
    by_code = rejected_by_code(out)
    assert by_code == {"meter_event_invalid_value": 6, "no_meter": 1}
    assert sum(by_code.values()) == error_count
    assert "ErrorReportCountMismatch" not in emf_metrics(out)
    letters = reports.letters()
    assert len(letters) == 3 + 1  # three samples of 6 invalid values, the one no_meter
    assert emf_sums(out)["ErrorReportLetters"] == len(letters)
    assert Counter(letter["attributes"]["ErrorCode"] for letter in letters) == {
        "meter_event_invalid_value": 3,
        "no_meter": 1,
    }


def rejected_by_code(out: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for line in out.splitlines():
        if line.startswith("{") and '"StripeRejectedEventsByCode"' in line:
            document = json.loads(line)
            values = document["StripeRejectedEventsByCode"]
            found[document["ErrorCode"]] += sum(values if isinstance(values, list) else [values])
    return found


# ----- failures -----------------------------------------------------------------------------------
def test_stripe_unreachable_fails_the_eventbridge_run_and_answers_5xx_then_a_retry_writes(
    reports: Reports, aws_bus_queue: str
) -> None:
    reports.use_eventbridge()
    (received,) = reports.pushed(usage("later", value="0"))
    (envelope,) = bus_events(reports, aws_bus_queue)
    reports.emulator.set_faults("events", error_rate=1.0, error_statuses=[503])

    with reports.function() as function:
        by_eventbridge = function.invoke(envelope)
        status, _ = answer(function.invoke(function_url_request(received)))
        assert by_eventbridge.error is not None
        assert by_eventbridge.error["errorType"] == "FetchFailed"  # Lambda retries, then DLQ
        assert status == 502  # Stripe retries
        assert reports.letters() == []
        assert reports.remembered() == []

        reports.emulator.configure(clear_faults=True)
        retried = function.invoke(envelope)

    assert retried.ok
    assert retried.result["status"] == "processed"
    assert codes_and_identifiers(reports.letters()) == {"later": "meter_event_invalid_value"}


def test_a_dlq_that_refuses_the_letters_fails_the_delivery_and_a_retry_writes_them(
    reports: Reports, capfd: pytest.CaptureFixture[str]
) -> None:
    """The report is fetched but SQS refuses its letters: 500, nothing remembered (Stripe
    delivers it again), counted as ErrorReportsFailed; the retry, SQS back, writes them once."""
    (received,) = reports.pushed(usage("refused-letters", value="0"))
    gone = f"{reports.relay.dlq_url}-deleted"
    capfd.readouterr()
    with reports.function(DEAD_LETTER_QUEUE_URL=gone) as function:
        status, _ = answer(function.invoke(function_url_request(received)))
    assert status == 500
    assert reports.remembered() == []
    assert emf_sums(capfd.readouterr().out)["ErrorReportsFailed"] == 1
    assert reports.letters() == []

    with reports.function() as function:
        status, outcome = answer(function.invoke(function_url_request(received)))
    assert (status, outcome["status"]) == (200, "processed")
    assert codes_and_identifiers(reports.letters()) == {
        "refused-letters": "meter_event_invalid_value"
    }


def test_a_report_held_by_another_delivery_is_409_and_busy_for_a_pull(reports: Reports) -> None:
    """Two deliveries of one report at once (EventBridge and a webhook, or a pull): the one
    that finds it claimed answers 409 (Stripe retries), and a pull counts it busy."""
    (received,) = reports.pushed(usage("held", value="0"))
    event_id = json.loads(received.body)["id"]
    since = datetime.now(UTC) - timedelta(hours=1)
    events, processor = puller(reports)
    claim = DynamoDBPersistenceLayer(table_name=TABLE, boto3_session=boto3.session.Session())
    claim.configure(IdempotencyConfig(), key_prefix=IDEMPOTENCY_KEY_PREFIX)
    claim.save_inprogress(data=event_id, remaining_time_in_millis=600_000)  # another run's
    with reports.function() as function:
        status, _ = answer(function.invoke(function_url_request(received)))
    assert status == 409
    assert pull(events, processor, since).busy == [event_id]
    assert reports.letters() == []


def test_a_request_stripe_calls_bad_is_retried_never_acknowledged_unread(
    reports: Reports,
) -> None:
    """A 400 on the fetch says this side asked wrongly (a Stripe-Version, a restricted key):
    fixed, the retry must still find the report; acknowledged, it would be lost for good."""
    (received,) = reports.pushed(usage("asked-badly", value="0"))
    reports.emulator.set_faults("events", error_rate=1.0, error_statuses=[400])
    with reports.function() as function:
        status, _ = answer(function.invoke(function_url_request(received)))
        assert status == 502  # Stripe delivers it again
        assert reports.remembered() == []
        reports.emulator.configure(clear_faults=True)
        status, outcome = answer(function.invoke(function_url_request(received)))
    assert (status, outcome["status"]) == (200, "processed")
    assert codes_and_identifiers(reports.letters()) == {"asked-badly": "meter_event_invalid_value"}


def test_an_unreachable_stripe_is_a_failed_run_not_a_lost_report(reports: Reports) -> None:
    (received,) = reports.pushed(usage("nowhere", value="0"))
    with reports.function(STRIPE_API_BASE="http://127.0.0.1:9") as function:  # nothing listens
        status, _ = answer(function.invoke(function_url_request(received)))
    assert status == 502
    assert reports.remembered() == []  # the claim was released: a retry does the work


def test_a_report_stripe_no_longer_keeps_is_acknowledged_never_retried_forever(
    reports: Reports, capfd: pytest.CaptureFixture[str]
) -> None:
    """Stripe keeps events 30 days: a delivery retried past that (a finalized period) gets
    Stripe's 404; it is acknowledged, counted and logged each time, and never remembered
    (a 404 may also be the wrong account's key: errors pull must redo it once fixed)."""
    (received,) = reports.pushed(usage("too-late", value="0"))
    reports.emulator.advance_clock(31 * 86_400)
    capfd.readouterr()

    with reports.function() as function:
        first = answer(function.invoke(signed_request(received.body)))
        again = answer(function.invoke(signed_request(received.body)))

    assert first[0] == 200
    assert first[1]["status"] == "unavailable"
    assert "resource_missing" in first[1]["reason"]
    assert again[0] == 200
    assert again[1]["status"] == "unavailable"  # acknowledged again: Stripe stops retrying
    assert reports.letters() == []
    assert reports.remembered() == []
    assert emf_sums(capfd.readouterr().out)["ErrorReportsUnavailable"] == 2  # each delivery


def test_the_samples_run_through_the_function(reports: Reports) -> None:
    """events/: the EventBridge samples name events this account does not have (acknowledged
    as unavailable); the webhook sample is signed, years ago (refused as too old)."""
    reports.relay.aws.client("secretsmanager").put_secret_value(
        SecretId=WEBHOOK_SECRET_ID, SecretString=SAMPLE_WEBHOOK_SECRET
    )
    sample = json.loads((EVENTS / "error-reports-webhook.json").read_text())
    header = sample["headers"]["stripe-signature"]
    signed_at = int(header.split(",")[0].removeprefix("t="))
    body = sample["body"].encode()
    assert verify_signature(body, header, SAMPLE_WEBHOOK_SECRET, now=signed_at) == signed_at

    with reports.function() as function:
        for name in ("error-reports-eventbridge-triggered", "error-reports-eventbridge-no-meter"):
            result = function.invoke(EVENTS / f"{name}.json")
            assert result.ok, result.error
            assert result.result["status"] == "unavailable"
        status, answered = answer(function.invoke(EVENTS / "error-reports-webhook.json"))
    assert status == 400
    assert "old" in answered["error"]


# ----- errors pull --------------------------------------------------------------------------------
def stripe_api(reports: Reports) -> StripeApi:
    relay = reports.relay
    return StripeApi(StripeHttp(relay.emulator_url, "2026-09-30.preview"), relay.secret_key)


def puller(reports: Reports) -> tuple[StripeEvents, ReportProcessor]:
    relay = reports.relay
    session = boto3.session.Session(region_name=relay.aws.region)
    api = stripe_api(reports)
    events = StripeEvents(lambda: api, 10.0)
    processor = ReportProcessor(
        events,
        DeadLetterQueue(relay.dlq_url, session.client("sqs")),
        DynamoDBPersistenceLayer(table_name=TABLE, boto3_session=session),
    )
    return events, processor


class KeyOfAnotherAccount(StripeEvents):
    """Stripe answers 404 for an event of another account than the key's."""

    def fetch(self, event_id: str) -> dict[str, Any]:
        raise EventUnavailable(f"HTTP 404 resource_missing: No such event: '{event_id}'")


def test_a_report_stripe_would_not_show_is_written_by_a_pull_once_the_key_is_fixed(
    reports: Reports,
) -> None:
    """The function ran with the wrong account's key: Stripe's 404, acknowledged. The report is
    not remembered, so the pull the alarm asks for, with the right key, writes its letters."""
    since = datetime.now(UTC) - timedelta(hours=1)
    (report,) = reports.reject(usage("hidden", name="nobody_meters_this"))
    events, processor = puller(reports)
    wrong = ReportProcessor(
        KeyOfAnotherAccount(events._api, 10.0),
        processor.dead_letters,
        DynamoDBPersistenceLayer(table_name=TABLE, boto3_session=boto3.session.Session()),
    )
    assert wrong.process(report["id"], TimeBudget(60)).status == "unavailable"

    fixed = pull(events, processor, since)

    assert [(o.event_id, o.status) for o in fixed.outcomes] == [(report["id"], "processed")]
    assert codes_and_identifiers(reports.letters()) == {"hidden": "no_meter"}


def test_errors_pull_finds_the_same_events_and_writes_nothing_twice(reports: Reports) -> None:
    since = datetime.now(UTC) - timedelta(hours=1)
    delivered = reports.pushed(usage("pushed", value="0"))
    with reports.function() as function:
        assert answer(function.invoke(function_url_request(delivered[0])))[0] == 200
    reports.emulator.set_webhooks()  # then an account without a destination
    missed = reports.reject(usage("missed", name="nobody_meters_this"))
    events, processor = puller(reports)

    first = pull(events, processor, since, datetime.now(UTC) + timedelta(days=1))
    second = pull(events, processor, since)

    assert Counter(o.status for o in first.outcomes) == {"duplicate": 1, "processed": 1}
    assert [o.event_id for o in first.outcomes if o.status == "processed"] == [missed[0]["id"]]
    assert Counter(o.status for o in second.outcomes) == {"duplicate": 2}
    assert codes_and_identifiers(reports.letters()) == {
        "pushed": "meter_event_invalid_value",
        "missed": "no_meter",
    }
    later = pull(events, processor, datetime.now(UTC) + timedelta(days=2))
    assert later.outcomes == []


class ListedWithoutData(StripeEvents):
    """A list whose events come without their data object (null)."""

    def listed(
        self, types: Sequence[str], since: datetime, until: datetime | None = None
    ) -> Iterator[dict[str, Any]]:
        for event in super().listed(types, since, until):
            yield {**event, "data": None}


def test_a_listed_event_without_its_data_is_fetched_by_id_not_remembered_empty(
    reports: Reports,
) -> None:
    """Taken as it was, it made a report of no samples, remembered for 31 days: every later
    pull or delivery a duplicate, its letters never written."""
    since = datetime.now(UTC) - timedelta(hours=1)
    reports.emulator.set_webhooks()
    reports.reject(usage("listed-bare", name="nobody_meters_this"))
    _, processor = puller(reports)
    api = stripe_api(reports)
    bare = ListedWithoutData(lambda: api, 10.0)

    outcome = pull(bare, processor, since)

    assert [o.status for o in outcome.outcomes] == ["processed"]
    assert codes_and_identifiers(reports.letters()) == {"listed-bare": "no_meter"}


def test_a_pull_sets_aside_an_event_stripe_gives_without_its_data_and_goes_on(
    reports: Reports,
) -> None:
    since = datetime.now(UTC) - timedelta(hours=1)
    reports.emulator.set_webhooks()
    bare_id = reports.reject(usage("bare", name="nobody_meters_this"))[0]["id"]
    reports.reject(usage("whole", value="0"))
    api = stripe_api(reports)

    class OneBare(StripeEvents):
        """Stripe gives one event without its data, listed or fetched."""

        def listed(
            self, types: Sequence[str], since: datetime, until: datetime | None = None
        ) -> Iterator[dict[str, Any]]:
            for event in super().listed(types, since, until):
                yield {**event, "data": None} if event["id"] == bare_id else event

        def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
            found = super()._get(path, params)
            return {**found, "data": None} if path.endswith(bare_id) else found

    _, processor = puller(reports)
    processor.events = OneBare(lambda: api, 10.0)
    outcome = pull(OneBare(lambda: api, 10.0), processor, since)

    assert outcome.incomplete == [bare_id]
    assert [o.status for o in outcome.outcomes] == ["processed"]
    assert codes_and_identifiers(reports.letters()) == {"whole": "meter_event_invalid_value"}
    again = pull(StripeEvents(lambda: api, 10.0), processor, since)  # Stripe gives it whole
    assert Counter(o.status for o in again.outcomes) == {"processed": 1, "duplicate": 1}


def test_an_event_stripe_answers_without_its_data_is_retried(reports: Reports) -> None:
    class AnsweredBare(StripeEvents):
        def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
            return {"id": "evt_bare", "object": "v2.core.event", "data": None}

    api = stripe_api(reports)
    with pytest.raises(FetchFailed, match="without its data"):
        AnsweredBare(lambda: api, 10.0).fetch("evt_bare")


def test_an_unknown_code_is_written_as_stripe_gave_it(reports: Reports) -> None:
    """Stripe's enum of codes is open: a code this project has never seen is kept as it is."""
    _, processor = puller(reports)
    event: dict[str, Any] = {
        "id": "evt_test_new_code",
        "object": "v2.core.event",
        "type": TRIGGERED,
        "related_object": {"id": "mtr_test_api_requests", "type": "billing.meter"},
        "data": {
            "reason": {
                "error_count": 2,
                "error_types": [
                    {
                        "code": "meter_event_some_future_rule",
                        "error_count": 2,
                        "sample_errors": [
                            {
                                "error_message": "A rule Stripe added.",
                                "request": {"identifier": "f1"},
                            }
                        ],
                    }
                ],
            },
            "validation_start": "2026-11-21T10:00:00.000Z",
            "validation_end": "2026-11-21T10:00:10.000Z",
        },
    }
    outcome = processor.process(event["id"], TimeBudget(30), fetched=event)
    assert outcome.counts == {"meter_event_some_future_rule": 2}
    assert codes_and_identifiers(reports.letters()) == {"f1": "meter_event_some_future_rule"}


def test_the_samples_are_what_the_template_and_the_emulator_send() -> None:
    """The EventBridge samples match the template's rule and carry thin notifications."""
    rule = load_template(TEMPLATE)["Resources"]["StripeErrorReportsRule"]["Properties"]
    pattern = rule["EventPattern"]
    for name in ("error-reports-eventbridge-triggered", "error-reports-eventbridge-no-meter"):
        sample = json.loads((EVENTS / f"{name}.json").read_text())
        assert sample["detail-type"] in pattern["detail-type"]
        assert sample["source"].startswith(pattern["source"][0]["prefix"])
        assert "data" not in sample["detail"]
        assert sample["detail"]["type"] == sample["detail-type"]
