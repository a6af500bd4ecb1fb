"""Cancel delivered events through /v2/billing/meter_event_adjustments (Stripe allows it within
24 hours of receiving the event), chosen by identifier or from the DLQ by filters.

Choosing from the DLQ reads it without consuming it and takes exactly the events every filter
chooses: a message SQS moved whole can be an envelope of many customers, and the other
customers' delivered usage must not be cancelled with it. Only letters whose events may have
reached Stripe are chosen (DlqMessage.may_be_counted: SQS moved them after maxReceiveCount,
Stripe's answer never came or was a 5xx, or the tools wrote them for events of such a letter):
the others' events Stripe never counted, and a cancel by their identifier would cancel another
event that Stripe did count under it (a duplicate in a batch).
"""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from meter_relay.dlq.scan import DeadLetterReader, WhenFull
from meter_relay.dlq.selection import Filters
from meter_relay.events import format_timestamp
from meter_relay.ledger_store import (
    CancellationLine,
    LedgerBucket,
    LedgerUnavailable,
    record_cancellations,
)
from meter_relay.retry import TOOLS_RETRY, Jitter, RateLimit, with_retries
from meter_relay.stripe_client import Kind, StripeAnswer, cancel_key

CANCEL_WINDOW = timedelta(hours=24)


class AdjustmentsApi(Protocol):
    """Stripe's meter event adjustments (StripeApi has it)."""

    def cancel_meter_event(
        self, event_name: str, identifier: str, timeout: float, *, idempotency_key: str | None
    ) -> StripeAnswer: ...


class AuditStatus(StrEnum):
    """What became (or, in a dry run, would become) of one cancellation."""

    PENDING = "pending"  # Stripe accepted it (its own status: pending, then complete)
    COMPLETE = "complete"
    REFUSED = "refused"  # Stripe answered 400 (e.g. an identifier it does not know)
    PAST_CANCEL_WINDOW = "past_cancel_window"  # received by Stripe more than 24 hours ago
    FAILED = "failed"  # no final answer after the retries (Stripe unreachable, 5xx)
    WOULD_CANCEL = "would_cancel"

    @property
    def bad(self) -> bool:
        return self in (AuditStatus.REFUSED, AuditStatus.FAILED, AuditStatus.PAST_CANCEL_WINDOW)

    @property
    def settled(self) -> bool:
        """Stripe gave its last word: a run that continues does not cancel it again."""
        return self not in (AuditStatus.FAILED, AuditStatus.WOULD_CANCEL)


@dataclass(frozen=True)
class CancelTarget:
    identifier: str
    event_name: str
    first_seen: datetime | None = None  # when known (from a DLQ message)
    customer: str | None = None  # when known (from a DLQ message), to show the operator


@dataclass
class AuditLine:
    identifier: str
    event_name: str
    status: AuditStatus
    adjustment_id: str | None = None
    error: str | None = None
    at: str = field(default_factory=lambda: format_timestamp(datetime.now(UTC)))

    def to_json(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "event_name": self.event_name,
            "adjustment_id": self.adjustment_id,
            "status": self.status.value,
            "at": self.at,
            "error": self.error,
        }


def targets_from_file(path: str | Path, event_name: str) -> list[CancelTarget]:
    """One identifier a line (blank lines skipped), each once, in the file's order."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a BOM: an Excel export
    identifiers = dict.fromkeys(line.strip() for line in lines if line.strip())
    return [CancelTarget(identifier, event_name) for identifier in identifiers]


@dataclass
class DlqTargets:
    """What a pass over the DLQ chose to cancel, and what it left alone."""

    targets: list[CancelTarget] = field(default_factory=list)
    complete: bool = True  # every letter the filters choose was seen, none left for `max`
    # letters the filters choose whose events never reached Stripe, by reason
    never_sent: Counter[str] = field(default_factory=Counter)


def targets_from_dlq(
    reader: DeadLetterReader,
    filters: Filters,
    remaining: Callable[[], float] | None = None,
    reserve: float = 0.0,
    skip: Iterable[str] = (),
) -> DlqTargets:
    """The events the filters choose in the DLQ's letters that may have reached Stripe, each
    once, but those whose identifier is in `skip` (done by an earlier call); and whether that
    is all of them. A message whose chosen events are all skipped does not count toward `max`.
    With `remaining` (seconds left), the scan stops once only `reserve` seconds are left: the
    rest is for cancelling. A pass that could not see the whole queue is not complete either."""
    skipped = set(skip)
    found = DlqTargets()
    targets = found.targets
    taken = 0
    with closing(reader.scan(when_full=WhenFull.STOP)) as messages:  # gives every message back
        for message in messages:
            if remaining is not None and remaining() < reserve:
                found.complete = False
                return found
            if not filters.matches(message):
                continue
            if not message.may_be_counted:
                found.never_sent[message.code] += 1
                continue
            new: dict[str, CancelTarget] = {}  # the same event twice is cancelled once
            for event in filters.chosen_events(message):
                if event.identifier and event.event_name and event.identifier not in skipped:
                    new.setdefault(
                        event.identifier,
                        CancelTarget(
                            event.identifier, event.event_name, message.first_seen, event.customer
                        ),
                    )
            if not new:
                continue
            if filters.max_count is not None and taken >= filters.max_count:
                found.complete = False  # more match than `max` took
                return found
            taken += 1
            skipped.update(new)
            targets.extend(new.values())
    found.complete = reader.stats.shortfall(reader.max_held) is None
    return found


def cancel(
    api: AdjustmentsApi | None,
    targets: list[CancelTarget],
    *,
    rate: RateLimit | None = None,
    remaining: Callable[[], float] | None = None,
    progress: Callable[[AuditLine], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Jitter = random.uniform,
) -> tuple[list[AuditLine], bool]:
    """Cancel each target (`api` None: a dry run, nothing is sent); (audit, complete).

    409, 429, 5xx and timeouts are retried (Retry-After, else backoff) before a cancel is
    reported as failed; with `remaining`, no cancel starts that could not finish in time."""
    audit: list[AuditLine] = []
    now = datetime.now(UTC)
    limit = rate or RateLimit(None)
    run = uuid.uuid4().hex  # each cancel's attempts share its Idempotency-Key, not other runs
    for target in targets:
        wait = 0.0 if api is None else limit.delay()  # a dry run sends nothing to pace
        if remaining is not None and remaining() - wait < 2 * TOOLS_RETRY.request_timeout:
            return audit, False
        late = target.first_seen is not None and now - target.first_seen > CANCEL_WINDOW
        if api is None:
            status = AuditStatus.PAST_CANCEL_WINDOW if late else AuditStatus.WOULD_CANCEL
            line = AuditLine(target.identifier, target.event_name, status)
        else:
            limit.wait()
            call = functools.partial(
                api.cancel_meter_event,
                target.event_name,
                target.identifier,
                idempotency_key=cancel_key(run, target.event_name, target.identifier),
            )
            answer = with_retries(call, sleep=sleep, jitter=jitter, remaining=remaining)
            if answer is None:  # out of time before an answer: this one is not done
                return audit, False
            line = _audit(target, answer, late)
        audit.append(line)
        if progress:
            progress(line)
    return audit, True


def _audit(target: CancelTarget, answer: StripeAnswer, late: bool) -> AuditLine:
    if answer.kind is Kind.OK:
        body = answer.body or {}
        try:
            status = AuditStatus(str(body.get("status", "pending")))
        except ValueError:
            status = AuditStatus.PENDING
        return AuditLine(target.identifier, target.event_name, status, str(body.get("id")))
    if answer.code == "invalid_cancel_configuration" and late:
        status = AuditStatus.PAST_CANCEL_WINDOW
    elif answer.kind is Kind.REJECTED:
        status = AuditStatus.REFUSED
    else:
        status = AuditStatus.FAILED
    return AuditLine(target.identifier, target.event_name, status, error=answer.error)


def record(ledger: LedgerBucket | None, audit: list[AuditLine], run: str) -> str | None:
    """The adjustments Stripe took in this run (`run`: the CLI's id, an invocation's request
    id) recorded in the delivery ledger, for trace and reconcile; what went wrong, if it could
    not be written (the cancels themselves stand: Stripe has them)."""
    lines = [
        CancellationLine(
            line.identifier, line.event_name, line.adjustment_id or "", line.status, line.at
        )
        for line in audit
        if line.status in (AuditStatus.PENDING, AuditStatus.COMPLETE)
    ]
    if ledger is None or not lines:
        return None
    try:
        record_cancellations(ledger, run, lines)
    except LedgerUnavailable as error:
        return f"{len(lines)} cancellations are not in the delivery ledger: {error}"
    return None
