"""Replays and redrives consult the delivery ledger: an event Stripe already has (delivered,
and not reported rejected since) is not sent again, whatever its age. Stripe forgets an
identifier after 24 hours and would count it again; the ledger does not forget."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from meter_relay.dlq.reading import DlqMessage
from meter_relay.events import parse_rfc3339
from meter_relay.ledger_queries import DeliveredLookup
from meter_relay.ledger_sql import STRIPE_DEDUP

LEDGER_UNREADABLE = "aws_error"  # the code of a message kept because the ledger could not be read
ALREADY_DELIVERED = "already delivered (the ledger has it): not sent again"


def delivered_among(
    lookup: DeliveredLookup | None, chosen: Sequence[tuple[DlqMessage, list[str]]]
) -> dict[str, set[str]]:
    """Which of each DLQ message's identifiers Stripe has, by the ledger (message id -> those
    identifiers); none without a ledger. A letter of Stripe's error report counts only a
    delivery after the report's window (DlqMessage.rejected_until): its letter is the proof
    of the rejection even when the ledger missed it. LedgerUnavailable when the ledger could
    not be read."""
    if lookup is None:
        return {}
    identifiers: list[str] = []
    since: datetime | None = None
    for message, ids in chosen:
        if ids:
            identifiers.extend(ids)
            asked = asked_from(message, ids)
            since = asked if since is None else min(since, asked)
    if since is None:
        return {}
    found = lookup.delivered(identifiers, since)
    among: dict[str, set[str]] = {}
    for message, ids in chosen:
        cutoff = message.rejected_until
        among[message.message_id] = {
            i for i in ids if i in found and (cutoff is None or found[i] > cutoff)
        }
    return among


def asked_from(message: DlqMessage, ids: Collection[str]) -> datetime:
    """From when the ledger is asked about a message's events: when the message was first
    seen, or, for an event stamped earlier (a producer's resend, in another message, of what
    it sent before), from its timestamp (the lookup reads from an hour before, which covers
    Stripe's 5 minutes ahead): Stripe has the event if that delivery came within its 24 hours
    before. Never further back: a delivery before those 24 hours Stripe would have counted
    again, had the resend gone through."""
    seen = message.earliest
    stamps = (
        parse_rfc3339(e.parsed.event.timestamp)
        for e in message.events
        if e.parsed.event is not None and e.identifier in ids
    )
    oldest = min((stamp for stamp in stamps if stamp is not None), default=seen)
    return max(seen - STRIPE_DEDUP, min(seen, oldest))
