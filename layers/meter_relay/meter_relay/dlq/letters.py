"""What of a DLQ message stays in the DLQ when the rest of it leaves: letters written as the
forwarder writes its own (dead_letter.DeadLetter), so every tool reads them back alike."""

from __future__ import annotations

import json

from meter_relay.dead_letter import DeadLetter
from meter_relay.dlq.reading import DlqEvent, DlqMessage
from meter_relay.events import ParsedEvent, Rejection, format_timestamp


def event_letter(message: DlqMessage, event: ParsedEvent, rejection: Rejection) -> DeadLetter:
    """One event of a DLQ message as its own letter, exactly as the forwarder writes one."""
    first_seen = format_timestamp(message.first_seen)
    return DeadLetter.for_event(event, rejection, message.source_message_id, first_seen)


def rest_letter(message: DlqMessage, events: list[ParsedEvent], reason: Rejection) -> DeadLetter:
    """Events of a message kept together (not sent yet), with `reason`: one event is a letter
    of its own; several are an envelope, each event with its identity written in."""
    if len(events) == 1:
        return event_letter(message, events[0], reason)
    body = {"events": [json.loads(e.dead_letter_body()) for e in events]}
    return DeadLetter(
        json.dumps(body),
        reason.code,
        reason.message,
        message.source_message_id,
        format_timestamp(message.first_seen),
    )


def own_reason(message: DlqMessage) -> Rejection:
    """The message's own reason, for what of it stays as it was."""
    return Rejection(message.code, message.error_message)


def remainder_letter(message: DlqMessage, rest: list[DlqEvent]) -> DeadLetter:
    """The events of a message an operation leaves (not chosen), with the message's reason."""
    return rest_letter(message, [e.parsed for e in rest], own_reason(message))
