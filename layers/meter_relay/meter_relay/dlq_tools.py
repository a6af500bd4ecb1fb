"""The dead-letter operations as Lambda entry points (for `sam remote invoke`).

Same options as the CLI, as JSON. A run stops cleanly before the Lambda deadline and says
how far it got; what it replayed has left the DLQ, so calling again with the same input
continues with what is left.

    replay: {"filters": {"code": [...], "event_name": [...], "customer": [...],
                         "since": "...", "until": "...", "max": 100},
             "via": "queue" | "sync", "fix": {...}, "dry_run": false, "rate": 10}
    cancel: {"identifiers": ["..."], "event_name": "...", "dry_run": false, "rate": 10}
            or {"filters": {...}, "dry_run": false}
"""

from __future__ import annotations

import math
import os
from typing import Any

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.typing import LambdaContext

from meter_relay.config import (
    AWS_CLIENT_CONFIG,
    DEFAULT_API_BASE,
    DEFAULT_API_VERSION,
    ConfigError,
)
from meter_relay.dlq import (
    CancelTarget,
    DeadLetterReader,
    Filters,
    Fix,
    RateLimit,
    Replayer,
    cancel,
    targets_from_dlq,
)
from meter_relay.events import ValidationRules
from meter_relay.observability import logger
from meter_relay.secret_key import read_secret_key
from meter_relay.stripe_client import StripeApi, StripeHttp

DEADLINE_MARGIN_SECONDS = 5.0
_KNOWN_REPLAY = {"filters", "via", "fix", "dry_run", "rate"}
_KNOWN_CANCEL = {"filters", "identifiers", "event_name", "dry_run", "rate"}


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def _reader() -> DeadLetterReader:
    rules = ValidationRules.from_settings(
        os.environ.get("METER_KEYS", "{}"), os.environ.get("VALUE_RULE", "") or "positive_integer"
    )
    sqs = boto3.client("sqs", config=AWS_CLIENT_CONFIG)
    return DeadLetterReader(sqs, _env("DEAD_LETTER_QUEUE_URL"), rules)


def _api() -> StripeApi:
    secrets = boto3.client("secretsmanager", config=AWS_CLIENT_CONFIG)
    key = read_secret_key(SecretsProvider(boto3_client=secrets), _env("STRIPE_SECRET_ID"))
    http = StripeHttp(
        os.environ.get("STRIPE_API_BASE", "").strip() or DEFAULT_API_BASE,
        os.environ.get("STRIPE_API_VERSION", "").strip() or DEFAULT_API_VERSION,
        pool_size=1,
    )
    return StripeApi(http, key)


def _check(event: dict[str, Any], known: set[str]) -> None:
    if not isinstance(event, dict):
        raise ValueError("the input is a JSON object")
    unknown = set(event) - known
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(known)}")


def _rate(event: dict[str, Any]) -> float | None:
    rate = event.get("rate")
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf:
        raise ValueError(f"rate is a positive number (per second), not {rate!r}")
    return float(rate)


def _remaining(context: LambdaContext) -> float:
    return context.get_remaining_time_in_millis() / 1000.0 - DEADLINE_MARGIN_SECONDS


def replay(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _check(event, _KNOWN_REPLAY)
    via = event.get("via", "queue")
    if via not in ("queue", "sync"):
        raise ValueError("via is 'queue' or 'sync'")
    reader = _reader()
    replayer = Replayer(
        reader,
        reader.rules,
        usage_queue_url=_env("USAGE_QUEUE_URL") if via == "queue" else None,
        api=_api() if via == "sync" else None,
        fix=Fix.from_dict(event.get("fix") or {}),
        dry_run=bool(event.get("dry_run", False)),
        rate=RateLimit(_rate(event)),
    )
    summary = replayer.replay(
        Filters.from_dict(event.get("filters") or {}), via, remaining=lambda: _remaining(context)
    )
    result = {
        "complete": summary.complete,
        "counts": summary.counts(),
        "outcomes": [o.to_json() for o in summary.outcomes],
    }
    if not summary.complete:
        result["next"] = "stopped early: invoke again with the same input to continue"
    logger.info("dlq replay", extra={"counts": result["counts"], "complete": summary.complete})
    return result


def cancel_events(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _check(event, _KNOWN_CANCEL)
    dry_run = bool(event.get("dry_run", False))
    if event.get("identifiers") is not None:
        name = event.get("event_name")
        identifiers = event["identifiers"]
        if not isinstance(name, str) or not name or not isinstance(identifiers, list):
            raise ValueError("identifiers (a list) needs an event_name")
        targets = [CancelTarget(str(i), name) for i in identifiers]
    else:
        # keep half of the time for the cancels themselves
        targets = targets_from_dlq(
            _reader(),
            Filters.from_dict(event.get("filters") or {}),
            remaining=lambda: _remaining(context),
            reserve=_remaining(context) / 2,
        )
    audit, complete = cancel(
        None if dry_run else _api(),
        targets,
        dry_run=dry_run,
        rate=RateLimit(_rate(event)),
        remaining=lambda: _remaining(context),
    )
    for line in audit:
        logger.info("cancel", extra=line.to_json())
    result: dict[str, Any] = {"complete": complete, "audit": [line.to_json() for line in audit]}
    if not complete:
        done = {(line.identifier, line.event_name) for line in audit}
        result["remaining"] = [
            {"identifier": t.identifier, "event_name": t.event_name}
            for t in targets
            if (t.identifier, t.event_name) not in done
        ]
        result["next"] = "stopped early: cancel the remaining ones with another call"
    return result
