"""What of a DLQ message stays in the DLQ when the rest of it leaves: letters written as the
forwarder writes its own (dead_letter.DeadLetter), so every tool reads them back alike."""

from __future__ import annotations

from dataclasses import replace

from meter_relay.dead_letter import (
    ATTR_OUTCOME_UNKNOWN,
    ATTR_REPORTED_BY,
    ATTR_VALIDATION_END,
    DeadLetter,
)
from meter_relay.dlq.reading import DlqEvent, DlqMessage
from meter_relay.events import ParsedEvent, Rejection, format_timestamp
from meter_relay.sqs_batches import MAX_MESSAGE_BYTES, envelopes

# a Stripe report's letter stays one: replays count only deliveries after its window. Only
# what they read is kept: with the one-event letter's own attributes (EventIndex, ErrorParam)
# the report's five would pass SQS's limit of 10 attributes a message. With these two and
# ATTR_OUTCOME_UNKNOWN, a tool's letter carries 10 at the most (test_replay.py pins it).
REPORT_ATTRIBUTES = (ATTR_VALIDATION_END, ATTR_REPORTED_BY)


def _first_seen(message: DlqMessage) -> str:
    """The earliest its events can have reached Stripe (not the DLQ's first receive of a
    message SQS moved): a later replay asks the ledger from there."""
    return format_timestamp(message.earliest)


def _kept(message: DlqMessage) -> tuple[tuple[str, str], ...]:
    """What a letter written for a message's events keeps of it: a Stripe report's marks, and
    that Stripe may have counted them (whatever reason the new letter gives)."""
    kept = [(n, message.attributes[n]) for n in REPORT_ATTRIBUTES if n in message.attributes]
    if message.may_be_counted:
        kept.append((ATTR_OUTCOME_UNKNOWN, "true"))
    return tuple(kept)


def event_letter(message: DlqMessage, event: ParsedEvent, rejection: Rejection) -> DeadLetter:
    """One event of a DLQ message as its own letter, exactly as the forwarder writes one (and
    a Stripe report's letter still marked as one)."""
    letter = DeadLetter.for_event(event, rejection, _source(message), _first_seen(message))
    return replace(letter, more=_kept(message))


def _source(message: DlqMessage) -> str:
    """The usage-queue message it came from; none for a report's letter (its identifier is
    Stripe's sample's, written in its body; the DLQ message id would only take an attribute)."""
    return "" if ATTR_REPORTED_BY in message.attributes else message.source_message_id


def rest_letters(
    message: DlqMessage, events: list[ParsedEvent], reason: Rejection
) -> list[DeadLetter]:
    """Events of a message kept together (not sent yet), with `reason`: one event is a letter
    of its own; several are an envelope, each event with its identity written in, split into
    as many letters as SQS needs (written in, a message's events can outgrow its limit)."""
    if len(events) == 1:
        return [event_letter(message, events[0], reason)]
    frame = DeadLetter(
        "", reason.code, reason.message, _source(message), _first_seen(message), more=_kept(message)
    )
    room = MAX_MESSAGE_BYTES - frame.size()
    return [
        event_letter(message, run[0], reason) if len(run) == 1 else replace(frame, body=body)
        for run, body in envelopes(events, ParsedEvent.dead_letter_body, room)
    ]


def own_reason(message: DlqMessage) -> Rejection:
    """The message's own reason, for what of it stays as it was."""
    return Rejection(message.code, message.error_message)


def remainder_letters(message: DlqMessage, rest: list[DlqEvent]) -> list[DeadLetter]:
    """The events of a message an operation leaves (not chosen), with the message's reason."""
    return rest_letters(message, [e.parsed for e in rest], own_reason(message))
