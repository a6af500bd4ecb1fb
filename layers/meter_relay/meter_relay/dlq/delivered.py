"""Replays and redrives consult the delivery ledger: an event Stripe already has (delivered,
and not reported rejected since) is not sent again, whatever its age. Stripe forgets an
identifier after 24 hours and would count it again; the ledger does not forget."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from meter_relay.dlq.reading import DlqMessage
from meter_relay.ledger_queries import DeliveredLookup

LEDGER_UNREADABLE = "aws_error"  # the code of a message kept because the ledger could not be read
ALREADY_DELIVERED = "already delivered (the ledger has it): not sent again"


def delivered_among(
    lookup: DeliveredLookup | None, chosen: Iterable[tuple[DlqMessage, list[str]]]
) -> set[str]:
    """Which of the identifiers (each with its DLQ message) Stripe has, by the ledger; none
    without a ledger. LedgerUnavailable when the ledger could not be read."""
    if lookup is None:
        return set()
    identifiers: list[str] = []
    since: datetime | None = None
    for message, ids in chosen:
        if ids:
            identifiers.extend(ids)
            since = message.earliest if since is None else min(since, message.earliest)
    if since is None:
        return set()
    return lookup.delivered(identifiers, since)
