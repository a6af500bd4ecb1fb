"""Redrive: whole DLQ messages back to the usage queue, as the SQS console's "Start DLQ
redrive" would move them, without its flaw.

The console's move gives every message a new messageId; an event without a producer
identifier takes its identifier from the messageId (`<messageId>-<index>`), and its default
timestamp from the message's SentTimestamp, so the delivered events of a partly delivered
envelope would be counted again. A redrive writes each event's identifier (the producer's, or
the one derived from the original messageId, as the forwarder derived it) and its default
timestamp (when its producer sent it) into the body, keeps envelopes whole, and deletes a
message from the DLQ only once SQS confirmed its copy on the usage queue.

By default it takes the messages whose reason passes (moved after maxReceiveCount, Stripe's
load, no answer): sending those again delivers them as they are. Letters the forwarder
refused for what they hold stay unless chosen (`--code`, or all): the forwarder would refuse
them again; they want a replay with a fix, or a discard.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

from meter_relay.dlq.delivered import ALREADY_DELIVERED, LEDGER_UNREADABLE, delivered_among
from meter_relay.dlq.reading import DlqMessage
from meter_relay.dlq.resend import UsageQueue
from meter_relay.dlq.runs import (
    Action,
    Outcome,
    Pass,
    Progress,
    RunSummary,
    past_dedup_warning,
)
from meter_relay.dlq.scan import DeadLetterReader
from meter_relay.dlq.selection import Filters
from meter_relay.ledger_queries import DeliveredLookup
from meter_relay.ledger_store import LedgerUnavailable
from meter_relay.retry import RateLimit


def redrive_body(message: DlqMessage, leave_out: Collection[str] = ()) -> str | None:
    """The message as it goes back: each event with its identity written in (but those whose
    identifier is in `leave_out`), an envelope kept an envelope. None when it holds no event
    (not JSON, not the contract: nothing to send)."""
    kept = [event for event in message.events if event.identifier not in leave_out]
    if not kept:
        return None
    events = [event.with_identity() for event in kept]
    return json.dumps({"events": events} if message.envelope else events[0])


class Redriver:
    """Moves the DLQ messages a selection chooses back to the usage queue, in parallel; with a
    `ledger`, without the events it says Stripe has (a message of nothing else is deleted)."""

    def __init__(
        self,
        reader: DeadLetterReader,
        queue: UsageQueue,
        *,
        dry_run: bool = False,
        rate: RateLimit | None = None,
        ledger: DeliveredLookup | None = None,
    ) -> None:
        self.reader = reader
        self.queue = queue
        self.dry_run = dry_run
        self.rate = rate or RateLimit(None)
        self.ledger = ledger

    def redrive(
        self,
        filters: Filters,
        *,
        remaining: Callable[[], float] | None = None,
        progress: Progress | None = None,
    ) -> RunSummary:
        work = Pass(self.reader, filters, remaining)
        return work.run(
            lambda window: (self._move(window), False), rate=self.rate, progress=progress
        )

    def _move(self, messages: list[DlqMessage]) -> list[Outcome]:
        """Copies of a window's messages to the usage queue, then the originals deleted (only
        those whose copy SQS confirmed)."""
        outcomes = {m.message_id: Outcome(m.message_id, Action.KEPT) for m in messages}
        try:
            delivered_of = delivered_among(
                self.ledger,
                [(m, [e.identifier for e in m.events if e.identifier]) for m in messages],
            )
        except LedgerUnavailable as unreadable:  # nothing goes that Stripe may have already
            for message in messages:
                outcomes[message.message_id].stays_whole(
                    LEDGER_UNREADABLE, f"the ledger: {unreadable}"
                )
            return list(outcomes.values())
        movable: list[tuple[DlqMessage, str]] = []
        settled: list[DlqMessage] = []  # every event of it is at Stripe: deleted, not sent
        for message in messages:
            outcome = outcomes[message.message_id]
            delivered = delivered_of.get(message.message_id, set())
            outcome.already_delivered = [
                e.identifier for e in message.events if e.identifier and e.identifier in delivered
            ]
            body = redrive_body(message, delivered)
            if body is None and outcome.already_delivered:
                settled.append(message)
                continue
            if body is None:
                outcome.action, outcome.code = Action.SKIPPED, message.code
                outcome.detail = "the body is not an event (nothing to redrive; inspect it by hand)"
                continue
            outcome.identifiers = [
                e.identifier
                for e in message.events
                if e.identifier and e.identifier not in delivered
            ]
            warning = past_dedup_warning(message, has_ledger=self.ledger is not None)
            if warning:
                outcome.warnings.append(warning)
            movable.append((message, body))
        if self.dry_run:
            for message, _ in movable:
                outcomes[message.message_id].action = Action.WOULD_REDRIVE
            for message in settled:
                outcomes[message.message_id].action = Action.WOULD_SETTLE
            for outcome in outcomes.values():
                _describe(outcome)
            return list(outcomes.values())
        errors = self.queue.send([body for _, body in movable])
        copied = []
        for (message, _), error in zip(movable, errors, strict=True):
            if error is not None:
                outcomes[message.message_id].stays_whole("aws_error", error)
            else:
                copied.append(message)
        refused = self.reader.delete(copied + settled)
        for message in copied + settled:
            outcome = outcomes[message.message_id]
            why = refused.get(message.message_id)
            if why is None:
                outcome.action = (
                    Action.REDRIVEN if outcome.identifiers else Action.ALREADY_DELIVERED
                )
                _describe(outcome)
            elif outcome.identifiers:  # on the usage queue and still here: a later redrive
                # sends it again, unharmed
                outcome.stays_whole("aws_error", f"NotDeleted: {why}", "copied to the usage queue")
            else:
                outcome.stays_whole("aws_error", f"NotDeleted: {why}")
        return list(outcomes.values())


def _describe(outcome: Outcome) -> None:
    """What a redrive did (or would do) with a message's events."""
    parts = [f"{len(outcome.identifiers)} events to the usage queue"] if outcome.identifiers else []
    if outcome.already_delivered:
        parts.append(f"{len(outcome.already_delivered)} {ALREADY_DELIVERED}")
    outcome.detail = "; ".join(parts)
