"""The error reports function's composition (meter_relay.error_reports_function), in-process:
its configuration, which requests it refuses or ignores before any work, and what it reports
about a processed report (metrics, and the log line when Stripe's counts do not add up)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from devkit.emulator.webhooks import signature_header
from meter_relay.config import ConfigError
from meter_relay.error_reports import PROCESSED, Notification, Outcome
from meter_relay.error_reports_function import (
    ErrorReportsConfig,
    ErrorReportsFunction,
    _publish,
)
from meter_relay.observability import metrics
from tests.plugins.relay import emf_metrics, emf_sums

SECRET = "whsec_test_function_0123456789"
ENV = {
    "STRIPE_MODE": "test",
    "STRIPE_API_BASE": "http://127.0.0.1:12111",
    "STRIPE_SECRET_ID": "local/stripe-secret-key",
    "DEAD_LETTER_QUEUE_URL": "http://127.0.0.1:5000/123456789012/local-usage-dlq",
    "ERROR_REPORTS_TABLE": "local-error-reports",
    "STRIPE_WEBHOOK_SECRET_ID": "local/stripe-webhook-signing-secret",
}
NOTIFICATION = {
    "id": "evt_test_1",
    "object": "v2.core.event",
    "type": "v1.billing.meter.no_meter_found",
    "related_object": None,
}


class Secrets:
    def __init__(self, value: str) -> None:
        self.value = value

    def get(self, name: str, **options: Any) -> str:
        return self.value


class Processor:
    """Stands for ReportProcessor: records what it was asked to process."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def process(self, event_id: str, context: Any, **options: Any) -> Outcome:
        self.asked.append(event_id)
        return Outcome(event_id, PROCESSED, error_count=1, counts={"no_meter": 1}, letters=1)


@pytest.fixture(autouse=True)
def no_metrics_left() -> Iterator[None]:
    """The library's Metrics is process-wide: each test starts and ends with none held."""
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def function(secret: str = SECRET) -> tuple[ErrorReportsFunction, Processor]:
    processor = Processor()
    config = ErrorReportsConfig.from_env(ENV)
    return ErrorReportsFunction(config, cast(Any, processor), cast(Any, Secrets(secret))), processor


def request(body: bytes, header: str | None, *, base64_encoded: bool = False) -> dict[str, Any]:
    headers = {} if header is None else {"Stripe-Signature": header}  # any case: Lambda's is lower
    return {
        "version": "2.0",
        "headers": headers,
        "requestContext": {"http": {"method": "POST", "path": "/"}},
        "body": base64.b64encode(body).decode() if base64_encoded else body.decode(),
        "isBase64Encoded": base64_encoded,
    }


def signed(body: bytes, secret: str = SECRET) -> str:
    return signature_header(body, secret, int(time.time()))


# ----- configuration ------------------------------------------------------------------------------
def test_the_configuration_names_what_is_missing() -> None:
    config = ErrorReportsConfig.from_env(ENV)
    assert (config.table_name, config.webhook_secret_id) == (
        "local-error-reports",
        "local/stripe-webhook-signing-secret",
    )
    assert (
        ErrorReportsConfig.from_env({**ENV, "STRIPE_WEBHOOK_SECRET_ID": ""}).webhook_secret_id
        is None
    )
    for name in ("ERROR_REPORTS_TABLE", "DEAD_LETTER_QUEUE_URL", "STRIPE_SECRET_ID", "STRIPE_MODE"):
        with pytest.raises(ConfigError, match=name):
            ErrorReportsConfig.from_env({k: v for k, v in ENV.items() if k != name})


def test_a_live_stack_sends_its_key_to_stripe_only() -> None:
    with pytest.raises(ConfigError, match="STRIPE_API_BASE"):
        ErrorReportsConfig.from_env({**ENV, "STRIPE_MODE": "live"})
    live = ErrorReportsConfig.from_env(
        {**ENV, "STRIPE_MODE": "live", "STRIPE_API_BASE": "https://api.stripe.com"}
    )
    assert live.mode == "live"


# ----- requests refused or ignored before any work ----------------------------------------------
def test_a_signed_base64_body_is_verified_over_its_decoded_bytes() -> None:
    handler, processor = function()
    body = json.dumps(NOTIFICATION).encode()
    answer = handler.handle(request(body, signed(body), base64_encoded=True), cast(Any, None))
    assert answer["statusCode"] == 200
    assert processor.asked == ["evt_test_1"]


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda body: request(body, None), "no Stripe-Signature header"),
        (lambda body: request(body, signed(body, "whsec_other")), "matches the body"),
        (
            lambda body: {**request(body, signed(body), base64_encoded=True), "body": "%%%"},
            "not valid base64",
        ),
        (lambda body: request(b"[1, 2]", signed(b"[1, 2]")), "not a JSON object"),
    ],
)
def test_what_is_not_stripes_notification_gets_400_and_no_work(make: Any, why: str) -> None:
    handler, processor = function()
    answer = handler.handle(make(json.dumps(NOTIFICATION).encode()), cast(Any, None))
    assert answer["statusCode"] == 400
    assert why in json.loads(answer["body"])["error"]
    assert processor.asked == []


@pytest.mark.parametrize("secret", [SECRET, "REPLACE_ME"])
def test_requests_not_signed_are_refused_apart_from_the_alarm(
    capfd: pytest.CaptureFixture[str], secret: str
) -> None:
    """The Function URL is public: a scanner's GET or unsigned POST gets 400 and its own
    metric, before the signing secret is even read, and never the ones the alarm watches
    (WebhooksRefused: a signature that does not match, a rolled secret; ErrorReportsFailed)."""
    handler, processor = function(secret=secret)
    body = json.dumps(NOTIFICATION).encode()
    scanner = {**request(b"", None), "requestContext": {"http": {"method": "GET", "path": "/.env"}}}
    capfd.readouterr()
    answers = [handler.handle(r, cast(Any, None)) for r in (scanner, request(body, None))]
    metrics.flush_metrics()
    out = capfd.readouterr().out
    assert [a["statusCode"] for a in answers] == [400, 400]
    assert "not a POST" in json.loads(answers[0]["body"])["error"]
    assert emf_sums(out)["WebhooksUnsigned"] == 2
    assert "WebhooksRefused" not in emf_metrics(out)
    assert "ErrorReportsFailed" not in emf_metrics(out)
    assert processor.asked == []


def test_a_signature_that_does_not_match_is_counted_for_the_alarm(
    capfd: pytest.CaptureFixture[str],
) -> None:
    handler, _ = function()
    body = json.dumps(NOTIFICATION).encode()
    capfd.readouterr()
    answer = handler.handle(request(body, signed(body, "whsec_rolled")), cast(Any, None))
    metrics.flush_metrics()
    assert answer["statusCode"] == 400
    assert emf_sums(capfd.readouterr().out)["WebhooksRefused"] == 1


def test_an_unreadable_report_from_stripes_source_is_counted_as_failed(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Stripe's own source and an error report's type, but a detail that cannot be read: a
    report lost, which the alarm must see (an `errors pull` finds it again)."""
    handler, processor = function()
    event = {
        "detail-type": "v1.billing.meter.no_meter_found",
        "source": "aws.partner/stripe.com/ed_1",
        "detail": "{not json",
    }
    capfd.readouterr()
    answer = handler.handle(event, cast(Any, None))
    metrics.flush_metrics()
    assert "ignored" in answer
    assert emf_sums(capfd.readouterr().out)["ErrorReportsFailed"] == 1
    assert processor.asked == []


def test_a_signing_secret_not_set_yet_is_a_500_that_stripe_retries() -> None:
    handler, processor = function(secret="REPLACE_ME")
    body = json.dumps(NOTIFICATION).encode()
    answer = handler.handle(request(body, signed(body, "REPLACE_ME")), cast(Any, None))
    assert answer["statusCode"] == 500
    assert processor.asked == []


@pytest.mark.parametrize(
    "event",
    [
        {"Records": []},
        [],
        {"detail-type": "v1.billing.meter.no_meter_found", "source": "my.app", "detail": {}},
        {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}},
        {
            "detail-type": "v1.billing.meter.no_meter_found",
            "source": "aws.partner/stripe.com/ed_1",
            "detail": "not json",
        },
        {
            "detail-type": "v1.billing.meter.no_meter_found",
            "source": "aws.partner/stripe.com/ed_1",
            "detail": {**NOTIFICATION, "type": "v1.billing.meter.error_report_triggered"},
        },
    ],
)
def test_what_is_not_a_stripe_error_report_is_ignored(event: Any) -> None:
    handler, processor = function()
    answer = handler.handle(event, cast(Any, None))
    assert "ignored" in answer
    assert processor.asked == []


def test_an_eventbridge_detail_given_as_text_is_read() -> None:
    handler, processor = function()
    event = {
        "detail-type": NOTIFICATION["type"],
        "source": "aws.partner/stripe.com/ed_1",
        "detail": json.dumps(NOTIFICATION),
    }
    assert handler.handle(event, cast(Any, None))["status"] == "processed"
    assert processor.asked == ["evt_test_1"]
    assert Notification.from_document(NOTIFICATION).is_error_report


# ----- what a processed report reports ----------------------------------------------------------
def test_counts_that_do_not_add_up_are_logged_and_counted(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    capfd.readouterr()
    _publish(Outcome("evt_x", PROCESSED, error_count=5, counts={"no_meter": 2, "new_code": 1}))
    metrics.flush_metrics()
    out = capfd.readouterr().out
    assert emf_sums(out)["ErrorReportCountMismatch"] == 1
    assert emf_sums(out)["StripeRejectedEvents"] == 5  # Stripe's total, whatever the codes say
    assert emf_sums(out)["StripeRejectedEventsByCode"] == 3
    (record,) = [r for r in caplog.records if "do not add up" in r.getMessage()]
    assert record.levelname == "ERROR"
    assert (record.__dict__["counted"], record.__dict__["error_count"]) == (3, 5)


def test_counts_that_add_up_raise_no_alarm(capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    _publish(Outcome("evt_y", PROCESSED, error_count=3, counts={"no_meter": 3}))
    metrics.flush_metrics()
    out = capfd.readouterr().out
    assert "ErrorReportCountMismatch" not in emf_metrics(out)
    assert emf_sums(out)["StripeRejectedEvents"] == 3
