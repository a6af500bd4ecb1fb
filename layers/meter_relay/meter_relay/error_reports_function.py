"""The error reports function: Stripe's error-report events, from EventBridge or a webhook, into
the dead-letter queue (error_reports.py does the work; this is the Lambda's composition).

Two triggers, one function:
- an EventBridge rule on the bus of Stripe's partner event source: the event's `detail` is the
  thin notification (no signature: the partner source and the bus are the trust); a failure
  raises, so that Lambda retries the event and then puts it in the function's dead-letter queue;
- a Function URL (payload format 2.0) that Stripe's webhook destination posts to: the
  `Stripe-Signature` is the authentication; 400 and nothing written when it does not hold, 200
  when done, 5xx when the work must be retried (Stripe retries any non-2xx for days).
A notification of another type is acknowledged and ignored, with a log line.

Per processed report, metrics (namespace MeterRelay): `StripeRejectedEvents` (Stripe's
error_count), `StripeRejectedEventsByCode` (dimension ErrorCode), `ErrorReportLetters`; and
`ErrorReportCountMismatch` when the counts per code do not add up to error_count,
`ErrorReportsUnavailable`, `ErrorReportsDuplicate`, `ErrorReportsFailed`, `WebhooksRefused`,
`NotificationsIgnored`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
)
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.config import (
    AWS_CLIENT_CONFIG,
    DEFAULT_API_BASE,
    DEFAULT_API_VERSION,
    StripeMode,
    _base_url,
    _live_on_stripe,
    _number,
    _required,
    stripe_mode,
)
from meter_relay.dead_letter import DeadLetterQueue
from meter_relay.error_reports import (
    DUPLICATE,
    PROCESSED,
    REPORT_TYPES,
    UNAVAILABLE,
    FetchFailed,
    LettersNotSent,
    Notification,
    NotificationError,
    Outcome,
    ReportProcessor,
    StripeEvents,
)
from meter_relay.ledger_store import LedgerBodies, LedgerBucket
from meter_relay.observability import logger, metrics
from meter_relay.secret_key import SECRET_MAX_AGE_SECONDS, SecretKeyError, read_secret_key
from meter_relay.stripe_client import StripeApi, StripeHttp
from meter_relay.webhook_signature import SIGNATURE_HEADER, SignatureError, verify_signature

# How long a report may wait for the ledger to hold its events' bodies (ledger_store's
# SETTLED_AFTER past the window's end, the forwarder that sent them being still at work): the
# template's Timeout leaves 30 s beside it for Stripe and the letters.
BODIES_BUDGET_SECONDS = 90.0
STRIPE_PARTNER_SOURCE = "aws.partner/stripe.com"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix of Stripe's signing secrets)


@dataclass(frozen=True)
class ErrorReportsConfig:
    api_base: str
    api_version: str
    mode: StripeMode
    secret_id: str
    dead_letter_queue_url: str
    table_name: str
    webhook_secret_id: str | None = None  # set when the stack has a webhook endpoint
    request_timeout: float = 10.0
    ledger_bucket: str | None = None  # the delivery ledger: bodies read, rejections recorded
    ledger_prefix: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ErrorReportsConfig:
        env = os.environ if env is None else env
        mode = stripe_mode(env)
        base = _base_url(env, "STRIPE_API_BASE", DEFAULT_API_BASE)
        return cls(
            api_base=_live_on_stripe(mode, "STRIPE_API_BASE", base),
            api_version=env.get("STRIPE_API_VERSION", "").strip() or DEFAULT_API_VERSION,
            mode=mode,
            secret_id=_required(env, "STRIPE_SECRET_ID"),
            dead_letter_queue_url=_required(env, "DEAD_LETTER_QUEUE_URL"),
            table_name=_required(env, "ERROR_REPORTS_TABLE"),
            webhook_secret_id=env.get("STRIPE_WEBHOOK_SECRET_ID", "").strip() or None,
            request_timeout=_number(env, "REQUEST_TIMEOUT_SECONDS", 10, 0.1, 120),
            ledger_bucket=env.get("LEDGER_BUCKET", "").strip() or None,
            ledger_prefix=env.get("LEDGER_PREFIX", "").strip().strip("/"),
        )


# What makes a report wait for a retry besides Stripe (FetchFailed): AWS, the secret key.
_RETRIED = (
    LettersNotSent,
    SecretKeyError,
    IdempotencyPersistenceLayerError,
    BotoCoreError,
    ClientError,
)


class SetupError(Exception):
    """Something the operator must set (a secret): the delivery is retried meanwhile."""


def response(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """A Function URL answer."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body),
    }


class ErrorReportsFunction:
    """What lives across invocations: clients, the HTTP pool, the cached secrets."""

    def __init__(
        self, config: ErrorReportsConfig, processor: ReportProcessor, secrets: SecretsProvider
    ) -> None:
        self.config = config
        self.processor = processor
        self._secrets = secrets

    @classmethod
    def from_environment(cls) -> ErrorReportsFunction:
        config = ErrorReportsConfig.from_env()
        session = boto3.session.Session()
        secrets = SecretsProvider(
            boto3_client=session.client("secretsmanager", config=AWS_CLIENT_CONFIG)
        )
        http = StripeHttp(config.api_base, config.api_version, pool_size=2)

        def stripe_api() -> StripeApi:  # the key is cached by the provider (5 minutes)
            key = read_secret_key(
                secrets, config.secret_id, api_base=config.api_base, mode=config.mode
            )
            return StripeApi(http, key)

        ledger = None
        if config.ledger_bucket:
            s3 = session.client("s3", config=AWS_CLIENT_CONFIG)
            ledger = LedgerBucket(config.ledger_bucket, config.ledger_prefix, s3)
        processor = ReportProcessor(
            StripeEvents(stripe_api, config.request_timeout),
            DeadLetterQueue(
                config.dead_letter_queue_url, session.client("sqs", config=AWS_CLIENT_CONFIG)
            ),
            DynamoDBPersistenceLayer(
                table_name=config.table_name, boto3_session=session, boto_config=AWS_CLIENT_CONFIG
            ),
            LedgerBodies(ledger, budget_seconds=BODIES_BUDGET_SECONDS) if ledger else None,
            ledger=ledger,
        )
        return cls(config, processor, secrets)

    # ----- the two triggers -------------------------------------------------------------------
    def handle(self, event: Any, context: LambdaContext) -> dict[str, Any]:
        if isinstance(event, dict) and "detail-type" in event:
            return self.eventbridge(event, context)
        if isinstance(event, dict) and "http" in (event.get("requestContext") or {}):
            return self.webhook(event, context)
        logger.warning("ignored: neither an EventBridge event nor a Function URL request")
        return {"ignored": "not an EventBridge event or a Function URL request"}

    def eventbridge(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        """Raises when the report must be retried (Lambda retries, then dead-letters)."""
        detail_type, source = str(event.get("detail-type")), str(event.get("source", ""))
        if detail_type not in REPORT_TYPES or not source.startswith(STRIPE_PARTNER_SOURCE):
            metrics.add_metric("NotificationsIgnored", MetricUnit.Count, 1)
            logger.info(
                "ignored: not a Stripe error report",
                extra={"detail_type": detail_type, "source": source, "id": event.get("id")},
            )
            return {"ignored": detail_type, "source": source}
        detail = event.get("detail")
        try:
            notification = Notification.from_document(
                json.loads(detail) if isinstance(detail, str) else detail
            )
        except (NotificationError, ValueError) as error:
            # Stripe's own source and an error report's type: a report lost (retrying the same
            # detail would not mend it), found again by `errors pull`
            metrics.add_metric("ErrorReportsFailed", MetricUnit.Count, 1)
            logger.error("ignored: the detail is not a notification", extra={"why": str(error)})
            return {"ignored": f"detail: {error}"}
        if notification.type != detail_type:
            return self._ignored(notification)
        return self._process(notification, context).to_json()

    def webhook(self, request: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        headers = {str(k).lower(): str(v) for k, v in (request.get("headers") or {}).items()}
        method = str(((request.get("requestContext") or {}).get("http") or {}).get("method", ""))
        if method.upper() != "POST" or SIGNATURE_HEADER.lower() not in headers:
            # the URL is public: scanners' requests are not Stripe's, and must not page anyone
            # (WebhooksRefused is for a signed request whose signature does not match)
            why = "not a POST" if method.upper() != "POST" else "no Stripe-Signature header"
            metrics.add_metric("WebhooksUnsigned", MetricUnit.Count, 1)
            logger.info("refused: not a signed POST", extra={"why": why})
            return response(400, {"error": f"{why}: not a Stripe webhook"})
        try:
            body = _raw_body(request)
            verify_signature(body, headers.get(SIGNATURE_HEADER.lower()), self._webhook_secret())
            notification = Notification.from_body(body)
        except SetupError as error:
            metrics.add_metric("ErrorReportsFailed", MetricUnit.Count, 1)
            logger.error("webhook not verified: setup", extra={"why": str(error)})
            return response(500, {"error": "the endpoint is not set up yet"})
        except (SignatureError, NotificationError) as error:
            metrics.add_metric("WebhooksRefused", MetricUnit.Count, 1)
            logger.warning("webhook refused", extra={"why": str(error)})
            return response(400, {"error": str(error)})
        if not notification.is_error_report:
            return response(200, self._ignored(notification))
        try:
            outcome = self._process(notification, context)
        except IdempotencyAlreadyInProgressError:
            return response(409, {"error": "being processed by another delivery; retry later"})
        except FetchFailed:
            return response(502, {"error": "Stripe could not be reached; retry later"})
        except _RETRIED as error:  # logged by _process; anything else fails the invocation
            return response(500, {"error": f"not processed ({type(error).__name__}); retry"})
        return response(200, {"received": True, **outcome.to_json()})

    # ----- the work -----------------------------------------------------------------------------
    def _process(self, notification: Notification, context: LambdaContext) -> Outcome:
        try:
            outcome = self.processor.process(notification.id, context)
        except IdempotencyAlreadyInProgressError:
            logger.info("error report held by another delivery", extra={"event": notification.id})
            raise
        except (FetchFailed, *_RETRIED) as error:
            metrics.add_metric("ErrorReportsFailed", MetricUnit.Count, 1)
            logger.error(
                "error report not processed; it will be retried",
                extra={"event": notification.id, "why": f"{type(error).__name__}: {error}"},
            )
            raise
        _publish(outcome)
        return outcome

    def _ignored(self, notification: Notification) -> dict[str, Any]:
        metrics.add_metric("NotificationsIgnored", MetricUnit.Count, 1)
        logger.info(
            "ignored: not an error report",
            extra={"event": notification.id, "type": notification.type},
        )
        return {"ignored": notification.type, "event_id": notification.id}

    def _webhook_secret(self) -> str:
        secret_id = self.config.webhook_secret_id
        if secret_id is None:
            raise SetupError("STRIPE_WEBHOOK_SECRET_ID is not set (StripeWebhookEndpoint false)")
        try:
            value = str(self._secrets.get(secret_id, max_age=SECRET_MAX_AGE_SECONDS)).strip()
        except GetParameterError as error:
            cause = type(error.__cause__ or error).__name__
            raise SetupError(f"cannot read the signing secret {secret_id}: {cause}") from None
        if not value.startswith(WEBHOOK_SECRET_PREFIX):
            raise SetupError(
                f"the secret {secret_id} holds no webhook signing secret (whsec_...) yet: "
                "set it (docs/deploy.md)"
            )
        return value


def _raw_body(request: Mapping[str, Any]) -> bytes:
    """The body's bytes as Stripe signed them."""
    body = request.get("body") or ""
    if request.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise NotificationError("the body is not valid base64") from None
    return str(body).encode()


def _publish(outcome: Outcome) -> None:
    """The outcome's log line and metrics (a processed report's only once: a duplicate counts
    as a duplicate)."""
    details = outcome.to_json()
    if outcome.status == PROCESSED:
        logger.info("error report processed", extra=details)
        metrics.add_metric("StripeRejectedEvents", MetricUnit.Count, outcome.rejected)
        metrics.add_metric("ErrorReportLetters", MetricUnit.Count, outcome.letters)
        for code, count in outcome.counts.items():
            with single_metric(
                name="StripeRejectedEventsByCode",
                unit=MetricUnit.Count,
                value=count,
                namespace=metrics.namespace,
                default_dimensions=metrics.default_dimensions,
            ) as metric:
                metric.add_dimension(name="ErrorCode", value=code)
        if outcome.unrecorded:  # the ledger's alarm (LedgerGap) watches this
            metrics.add_metric("LedgerGap", MetricUnit.Count, outcome.unrecorded)
            logger.error("ledger gap: the report's samples are not recorded", extra=details)
        if not outcome.counts_match:
            metrics.add_metric("ErrorReportCountMismatch", MetricUnit.Count, 1)
            logger.error(
                "error report: the counts per code do not add up to error_count",
                extra={"counted": outcome.counted, **details},
            )
    elif outcome.status == DUPLICATE:
        logger.info("error report already processed: nothing written", extra=details)
        metrics.add_metric("ErrorReportsDuplicate", MetricUnit.Count, 1)
    elif outcome.status == UNAVAILABLE:
        logger.error("error report unavailable from Stripe: acknowledged", extra=details)
        metrics.add_metric("ErrorReportsUnavailable", MetricUnit.Count, 1)


@functools.cache
def error_reports() -> ErrorReportsFunction:
    return ErrorReportsFunction.from_environment()
