"""Discard: delete from the DLQ what should never be billed, after writing it down.

Every message is written to the operator's file (one JSON line: body, attributes, SQS
attributes, the identifiers discarded), flushed to disk, before SQS is asked to delete it: a
discard can always be undone by hand from that file. When the filters choose only some events
of a message (an envelope of many customers), exactly those are discarded: the others go back
into the DLQ as a letter, with the message's own reason, before the message is deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, TextIO

from meter_relay.dead_letter import DeadLetter
from meter_relay.dlq.letters import remainder_letters
from meter_relay.dlq.reading import DlqEvent, DlqMessage
from meter_relay.dlq.runs import Action, Outcome, Pass, Progress, RunSummary
from meter_relay.dlq.scan import DeadLetterReader
from meter_relay.dlq.selection import Filters
from meter_relay.events import format_timestamp


def discard_record(message: DlqMessage, discarded: list[DlqEvent]) -> dict[str, Any]:
    """The line the discard file gets for a message (before it is deleted)."""
    taken = {e.index for e in discarded}
    return {
        "discarded_at": format_timestamp(datetime.now(UTC)),
        "message_id": message.message_id,
        "source_message_id": message.source_message_id,
        "code": message.code,
        "error_message": message.error_message,
        "whole": len(discarded) == len(message.events),
        "discarded_identifiers": [e.identifier for e in discarded],
        "kept_identifiers": [e.identifier for e in message.events if e.index not in taken],
        "body": message.body,
        "attributes": message.attributes,
        "sqs_attributes": message.sqs_attributes,
    }


class Discarder:
    """Deletes the DLQ messages (or events) a selection chooses, each written down first."""

    def __init__(
        self, reader: DeadLetterReader, record: TextIO | None, *, dry_run: bool = False
    ) -> None:
        if record is None and not dry_run:
            raise ValueError("a discard writes what it deletes to a file first: give one")
        self.reader = reader
        self.record = record
        self.dry_run = dry_run

    def discard(
        self,
        filters: Filters,
        *,
        remaining: Callable[[], float] | None = None,
        progress: Progress | None = None,
    ) -> RunSummary:
        work = Pass(self.reader, filters, remaining)
        return work.run(lambda window: (self._window(window, filters), False), progress=progress)

    def _window(self, messages: list[DlqMessage], filters: Filters) -> list[Outcome]:
        chosen: dict[str, list[DlqEvent]] = {}
        outcomes: dict[str, Outcome] = {}
        for message in messages:
            events = filters.chosen_events(message) if filters.chooses_events else message.events
            chosen[message.message_id] = events
            outcome = Outcome(message.message_id, Action.WOULD_DISCARD)
            outcome.identifiers = [e.identifier for e in events if e.identifier]
            outcome.detail = _what(message, events)
            outcomes[message.message_id] = outcome
        if self.dry_run:
            return list(outcomes.values())
        remainders: dict[str, list[DeadLetter]] = {
            m.message_id: remainder_letters(m, _rest(m, chosen[m.message_id]))
            for m in messages
            if len(chosen[m.message_id]) < len(m.events)
        }
        unsent = set(self.reader.put_letters([x for kept in remainders.values() for x in kept]))
        deletable = []
        for message in messages:
            if any(letter in unsent for letter in remainders.get(message.message_id, ())):
                outcomes[message.message_id].stays_whole(
                    "aws_error", "LettersNotSent: the events it keeps could not be put in"
                )
            else:
                deletable.append(message)
        self._write([discard_record(m, chosen[m.message_id]) for m in deletable])
        refused = self.reader.delete(deletable)
        undone = []
        for message in deletable:
            outcome = outcomes[message.message_id]
            why = refused.get(message.message_id)
            if why is not None:
                outcome.stays_whole("aws_error", f"NotDeleted: {why}")
                undone.append({"message_id": message.message_id, "not_deleted": why})
            elif message.message_id in remainders:
                outcome.action = Action.PARTLY_DISCARDED
            else:
                outcome.action = Action.DISCARDED
        self._write(undone)
        return list(outcomes.values())

    def _write(self, lines: list[dict[str, Any]]) -> None:
        """Lines on disk (flushed, fsynced) before anything they record is deleted."""
        if not lines or self.record is None:
            return
        self.record.write("".join(json.dumps(line) + "\n" for line in lines))
        self.record.flush()
        with suppress(OSError, ValueError):  # not a real file (a test's buffer): flushed is all
            os.fsync(self.record.fileno())


def _rest(message: DlqMessage, chosen: list[DlqEvent]) -> list[DlqEvent]:
    taken = {e.index for e in chosen}
    return [e for e in message.events if e.index not in taken]


def _what(message: DlqMessage, events: list[DlqEvent]) -> str:
    if not message.events:
        return f"the whole message ({message.code}; no event in it)"
    if len(events) == len(message.events):
        return f"{len(events)} events (the whole message, {message.code})"
    return f"{len(events)} of its {len(message.events)} events; the rest stay"
