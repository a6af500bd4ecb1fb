"""The dead-letter operations as Lambda entry points (for `sam remote invoke`).

Same options as the CLI, as JSON. A run stops cleanly before the Lambda deadline and says
how far it got; what it replayed has left the DLQ, so calling again with the same input
continues with what is left.

    replay: {"filters": {"code": [...], "event_name": [...], "customer": [...],
                         "since": "...", "until": "...", "max": 100},
             "via": "queue" | "sync", "fix": {...}, "dry_run": false, "rate": 10}
    cancel: {"identifiers": ["..."], "event_name": "...", "dry_run": false, "rate": 10}
            or {"filters": {...}, "skip": ["identifier", ...], "dry_run": false}

Cancelling reads the DLQ without consuming it, so a cancel that stops early answers, in
"next", the input that continues it: the identifiers left, or the same filters with every
identifier already handled (audited) in "skip".
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
_KNOWN_CANCEL = {"filters", "identifiers", "event_name", "skip", "dry_run", "rate"}


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
    base = os.environ.get("STRIPE_API_BASE", "").strip() or DEFAULT_API_BASE
    key = read_secret_key(
        SecretsProvider(boto3_client=secrets), _env("STRIPE_SECRET_ID"), api_base=base
    )
    http = StripeHttp(
        base, os.environ.get("STRIPE_API_VERSION", "").strip() or DEFAULT_API_VERSION, pool_size=1
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


def _strings(event: dict[str, Any], key: str) -> list[str]:
    values = event.get(key)
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{key} is a list of identifiers (non-empty strings)")
    return values


def cancel_events(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _check(event, _KNOWN_CANCEL)
    dry_run = bool(event.get("dry_run", False))
    skip = _strings(event, "skip")
    scanned_all = True
    if event.get("identifiers") is not None:
        name = event.get("event_name")
        identifiers = _strings(event, "identifiers")
        if not isinstance(name, str) or not name:
            raise ValueError("identifiers (a list) needs an event_name")
        targets = [CancelTarget(i, name) for i in dict.fromkeys(identifiers) if i not in skip]
    else:
        # keep half of the time for the cancels themselves
        targets, scanned_all = targets_from_dlq(
            _reader(),
            Filters.from_dict(event.get("filters") or {}),
            remaining=lambda: _remaining(context),
            reserve=_remaining(context) / 2,
            skip=skip,
        )
    audit, cancelled_all = cancel(
        None if dry_run else _api(),
        targets,
        dry_run=dry_run,
        rate=RateLimit(_rate(event)),
        remaining=lambda: _remaining(context),
    )
    for line in audit:
        logger.info("cancel", extra=line.to_json())
    complete = scanned_all and cancelled_all
    result: dict[str, Any] = {"complete": complete, "audit": [line.to_json() for line in audit]}
    if not complete:
        done = {(line.identifier, line.event_name) for line in audit}
        left = [t for t in targets if (t.identifier, t.event_name) not in done]
        result["remaining"] = [
            {"identifier": t.identifier, "event_name": t.event_name} for t in left
        ]
        # the input of the call that continues: nothing handled here is cancelled again
        options = {k: event[k] for k in ("dry_run", "rate") if k in event}
        if event.get("identifiers") is not None:
            ids = [t.identifier for t in left]
            result["next"] = {"identifiers": ids, "event_name": event["event_name"], **options}
        else:
            handled = list(dict.fromkeys([*skip, *(line.identifier for line in audit)]))
            result["next"] = {"filters": event.get("filters") or {}, "skip": handled, **options}
    return result
