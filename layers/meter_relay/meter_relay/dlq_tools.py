"""The dead-letter operations as Lambda entry points (for `sam remote invoke`).

`sam remote invoke` waits for the answer with botocore's read timeout (60 s) and retries a
call that timed out: a run longer than that would be started again while the first still
ran. So the functions' Timeout is under it (template.yaml), a run stops DEADLINE_MARGIN_SECONDS
before its deadline, and a run that did not finish answers `"complete": false` with `"next"`,
the input of the call that continues it. Invoking again with `next` does nothing twice:

    replay: {"filters": {"code": [...], "event_name": [...], "customer": [...],
                         "since": "...", "until": "...", "max": 100},
             "via": "queue" | "sync", "fix": {...}, "dry_run": false, "rate": 10,
             "skip_messages": ["message id", ...], "retried_messages": [...]}
    cancel: {"identifiers": ["..."], "event_name": "...", "dry_run": false, "rate": 10}
            or {"filters": {...}, "skip": ["identifier", ...], "dry_run": false}
            (filters that narrow, or "all": true: a cancel never chooses everything by default)

What a replay sent has left the DLQ; its `next` adds to `skip_messages` the messages it left
there as they were (nothing in them could be sent, or a dry run), so the next call goes on
with the others. A cancel reads the DLQ without consuming it: its `next` holds the identifiers
left, or the same filters with every identifier already handled (audited) in `skip`. `max` is
per call.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from meter_relay.config import ToolsConfig
from meter_relay.dlq.cancel import AuditLine, CancelTarget, cancel, record, targets_from_dlq
from meter_relay.dlq.delivered import LEDGER_UNREADABLE
from meter_relay.dlq.replay import OUT_OF_TIME, UNANSWERED_IN_TIME, Replayer, Resend
from meter_relay.dlq.runs import Outcome, RunSummary
from meter_relay.dlq.selection import Filters, Fix
from meter_relay.dlq.toolkit import Toolkit
from meter_relay.observability import logger
from meter_relay.retry import SETTLE_SECONDS, RateLimit

DEADLINE_MARGIN_SECONDS = 5.0
MAX_OUTCOMES = 1000  # in an answer (Lambda's 6 MB): those that stay first; every one is logged
_KNOWN_REPLAY = {"filters", "via", "fix", "dry_run", "rate", "skip_messages", "retried_messages"}
_KNOWN_CANCEL = {"filters", "identifiers", "event_name", "skip", "dry_run", "rate", "all"}
NOTHING_CHOSEN = (
    "a cancel chooses nothing by default: give identifiers (with event_name), or filters "
    "(code, event_name, customer, since, until); to cancel every event of the DLQ's letters "
    'that may have reached Stripe, add "all": true'
)


@functools.cache
def _toolkit() -> Toolkit:
    """One configuration per execution environment, checked at the first invocation."""
    return Toolkit(ToolsConfig.from_env(mode_required=True))


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


def _strings(event: dict[str, Any], key: str) -> list[str]:
    values = event.get(key)
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{key} is a list of identifiers (non-empty strings)")
    return values


def _remaining(context: LambdaContext) -> float:
    return context.get_remaining_time_in_millis() / 1000.0 - DEADLINE_MARGIN_SECONDS


def _resend(event: dict[str, Any], kit: Toolkit) -> Resend:
    via = event.get("via", "queue")
    if via == "queue":
        return kit.queue_resend()
    if via == "sync":
        return kit.sync_resend()
    raise ValueError(f"via is 'queue' or 'sync', not {via!r}")


def replay(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _check(event, _KNOWN_REPLAY)
    filters = Filters.from_dict(event.get("filters") or {})
    fix = Fix.from_dict(event.get("fix") or {})
    rate = RateLimit(_rate(event))
    skip = _strings(event, "skip_messages")
    _strings(event, "retried_messages")  # checked now: replay_next reads it after the work
    kit = _toolkit()
    replayer = Replayer(
        kit.reader(),
        _resend(event, kit),
        fix=fix,
        dry_run=bool(event.get("dry_run")),
        rate=rate,
        # an Athena wait ends with time left to give the window's letters back
        ledger=kit.delivered_lookup(remaining=lambda: _remaining(context) - SETTLE_SECONDS),
    )
    summary = replayer.replay(filters, remaining=lambda: _remaining(context), skip=frozenset(skip))
    for outcome in summary.outcomes:
        logger.info("dlq replay", extra=outcome.to_json())
    result = _answer(summary)
    if not summary.complete:
        result["next"] = replay_next(event, summary.outcomes)
    logger.info(
        "dlq replay run", extra={"counts": result["counts"], "complete": result["complete"]}
    )
    return result


def replay_next(event: dict[str, Any], outcomes: list[Outcome]) -> dict[str, Any]:
    """The input of the call that continues a replay: the messages it left as they were are
    skipped; one kept because AWS failed is tried again by the next call, once, and skipped
    if it fails again (a chain whose driver follows `next` always ends)."""
    skip = _strings(event, "skip_messages")
    retried = set(_strings(event, "retried_messages"))
    failed = [o.message_id for o in outcomes if _aws_failed(o)]
    done = [o.message_id for o in outcomes if _left_as_it_was(o)]
    done += [m for m in failed if m in retried]
    following = {k: v for k, v in event.items() if k != "retried_messages"}
    following["skip_messages"] = list(dict.fromkeys([*skip, *done]))
    again = [m for m in failed if m not in retried]
    if again:
        following["retried_messages"] = again
    return following


def _left_as_it_was(outcome: Outcome) -> bool:
    """A message a replay handled that is still in the DLQ as it was, and that another call
    would handle the same way: not one the time ran out on, nor one kept whole because AWS
    failed (`_aws_failed`: the next call tries those again)."""
    if not (outcome.action.stays or outcome.action.value.startswith("would_")):
        return False
    if _aws_failed(outcome):
        return False
    return not any(e["detail"] in (OUT_OF_TIME, UNANSWERED_IN_TIME) for e in outcome.kept_events)


def _aws_failed(outcome: Outcome) -> bool:
    """Kept whole because an AWS call failed (the ledger's query too slow or refused, a write
    to SQS), which may pass: worth one more try."""
    return outcome.action.stays and outcome.code == LEDGER_UNREADABLE


def _answer(summary: RunSummary) -> dict[str, Any]:
    """The summary as an answer, with at most MAX_OUTCOMES outcomes (those that stay first)."""
    result = summary.to_json()
    ranked = sorted(summary.outcomes, key=lambda o: not (o.action.stays or o.kept_events))
    result["outcomes"] = [o.to_json() for o in ranked[:MAX_OUTCOMES]]
    if len(ranked) > MAX_OUTCOMES:
        result["outcomes_omitted"] = len(ranked) - MAX_OUTCOMES  # in the function's log
    return result


def cancel_events(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    _check(event, _KNOWN_CANCEL)
    dry_run = bool(event.get("dry_run", False))
    rate = RateLimit(_rate(event))
    skip = _strings(event, "skip")
    kit = _toolkit()
    scanned_all = True
    never_sent: dict[str, int] = {}
    if event.get("identifiers") is not None:
        if event.get("filters") is not None or event.get("all") is not None:
            raise ValueError("identifiers and filters are two ways to choose: give one")
        name = event.get("event_name")
        identifiers = _strings(event, "identifiers")
        if not isinstance(name, str) or not name:
            raise ValueError("identifiers (a list) needs an event_name")
        targets = [CancelTarget(i, name) for i in dict.fromkeys(identifiers) if i not in skip]
    else:
        filters = Filters.from_dict(event.get("filters") or {})
        everything = event.get("all", False)
        if not isinstance(everything, bool):
            raise ValueError(f"all is true or false, not {everything!r}")
        if not (filters.given or everything):  # Stripe cannot undo a cancel: never by default
            raise ValueError(NOTHING_CHOSEN)
        # keep half of the time for the cancels themselves
        chosen = targets_from_dlq(
            kit.reader(),
            filters,
            remaining=lambda: _remaining(context),
            reserve=_remaining(context) / 2,
            skip=skip,
        )
        targets, scanned_all = chosen.targets, chosen.complete
        never_sent = dict(chosen.never_sent)
    audit, cancelled_all = cancel(
        None if dry_run else kit.stripe_api(),
        targets,
        rate=rate,
        remaining=lambda: _remaining(context),
    )
    for line in audit:
        logger.info("cancel", extra=line.to_json())
    unrecorded = record(kit.ledger(), audit, context.aws_request_id)
    if unrecorded:
        logger.error("ledger: %s", unrecorded)
    complete = scanned_all and cancelled_all
    result: dict[str, Any] = {"complete": complete, "audit": [line.to_json() for line in audit]}
    if never_sent:
        result["never_sent"] = never_sent  # letters chosen, but never counted by Stripe
    if unrecorded:
        result["ledger_error"] = unrecorded
    if not complete:
        result.update(_cancel_next(event, skip, targets, audit))
    return result


def _cancel_next(
    event: dict[str, Any], skip: list[str], targets: list[CancelTarget], audit: list[AuditLine]
) -> dict[str, Any]:
    """What is left, and the input of the call that continues: nothing handled here (audited)
    is cancelled again, and a dry run's next call lists the next ones."""
    dry_run = bool(event.get("dry_run"))
    handled_here = [line for line in audit if line.status.settled or dry_run]
    done = {(line.identifier, line.event_name) for line in handled_here}
    left = [t for t in targets if (t.identifier, t.event_name) not in done]
    options: dict[str, Any] = {k: event[k] for k in ("dry_run", "rate", "all") if k in event}
    following: dict[str, Any]
    if event.get("identifiers") is not None:
        ids = [t.identifier for t in left]
        following = {"identifiers": ids, "event_name": event["event_name"], **options}
    else:
        handled = list(dict.fromkeys([*skip, *(line.identifier for line in handled_here)]))
        following = {"filters": event.get("filters") or {}, "skip": handled, **options}
    return {
        "remaining": [{"identifier": t.identifier, "event_name": t.event_name} for t in left],
        "next": following,
    }
